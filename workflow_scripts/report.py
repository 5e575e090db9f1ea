"""Rule report: the standalone HTML report (results/report/index.html), figures embedded."""

from plmdiff.core.runtime import setup_logging
from plmdiff.report.render import build_report, read_items

setup_logging(snakemake.log[0])
build_report(read_items(snakemake.params.report_items), snakemake.config, snakemake.output[0])
