"""Rule potts_align: one set's match-column alignment to the profile, and its coverage."""

from plmdiff.core.runtime import setup_logging
from plmdiff.potts.job import run_potts_align

setup_logging(snakemake.log[0])
run_potts_align(
    snakemake.wildcards.potts_set,
    snakemake.input.profile,
    snakemake.input.source,
    potts_section={**snakemake.config["potts"], **snakemake.params.potts},
    table_path=snakemake.output.table,
    coverage_path=snakemake.output.coverage,
)
