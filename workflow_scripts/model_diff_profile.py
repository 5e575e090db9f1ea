"""Rule model_diff_profile: ||h_round - h_base|| per token by layer and position."""

from plmdiff.core.runtime import setup_logging
from plmdiff.model_diff.job import model_diff_profile

setup_logging(snakemake.log[0])
model_diff_profile(
    snakemake.params.layer_dirs,
    dict(zip(snakemake.params.rounds, snakemake.input.kl, strict=True)),
    snakemake.params.model_diff,
    snakemake.output.tsv,
    [snakemake.output.png, snakemake.output.svg],
)
