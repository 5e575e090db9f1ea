"""Rule report: the standalone HTML report (results/report/index.html), figures embedded."""

from plmdiff.core.runtime import setup_logging
from plmdiff.report.job import run_report

setup_logging(snakemake.log[0])
run_report(snakemake.params.report_items, snakemake.config, snakemake.output[0])
