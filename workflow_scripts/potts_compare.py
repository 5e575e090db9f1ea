"""Rule potts_compare: one round's field shifts and coupling changes against the base."""

from plmdiff.core.runtime import setup_logging
from plmdiff.potts.job import run_potts_compare

setup_logging(snakemake.log[0])
run_potts_compare(
    snakemake.wildcards.model,
    snakemake.input.base,
    snakemake.input.other,
    potts_section={**snakemake.config["potts"], **snakemake.params.potts},
    sites_path=snakemake.output.sites,
    pairs_path=snakemake.output.pairs,
    figure_paths=[snakemake.output.png, snakemake.output.svg],
)
