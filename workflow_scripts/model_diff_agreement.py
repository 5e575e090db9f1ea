"""Rule model_diff_agreement: crosscoder vs difference SAE vs SAE diff, by decoder cosine."""

from plmdiff.core.runtime import setup_logging
from plmdiff.model_diff.job import run_agreement

setup_logging(snakemake.log[0])
inputs = snakemake.input
rounds = snakemake.params.rounds
run_agreement(
    layer=int(snakemake.wildcards.layer),
    crosscoder=inputs.crosscoder,
    latents=inputs.latents,
    diff_saes=dict(zip(rounds, inputs.diff_saes, strict=True)),
    diff_sae_metrics=dict(zip(rounds, inputs.diff_sae_metrics, strict=True)),
    sae_diff_features=inputs.get("sae_diff_features"),
    sae_diff_sae=inputs.get("sae_diff_sae"),
    section=snakemake.params.model_diff,
    table_path=snakemake.output.table,
    matches_path=snakemake.output.matches,
)
