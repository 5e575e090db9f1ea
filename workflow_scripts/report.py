"""Rule report: the standalone HTML report (results/report/index.html), figures embedded."""

from plmdiff.report import build_report, read_items
from plmdiff.runtime import setup_logging

setup_logging(snakemake.log[0])
build_report(read_items(snakemake.params.report_items), snakemake.config, snakemake.output[0])
