"""Rule diff_sae: a BatchTopK SAE on h_round - h_base for every round at one layer."""

from plmdiff.core.runtime import setup_logging
from plmdiff.model_diff.job import run_diff_saes

setup_logging(snakemake.log[0])
rounds = snakemake.params.rounds
run_diff_saes(
    layer=int(snakemake.wildcards.layer),
    layer_dirs=snakemake.params.layer_dirs,
    sequences=snakemake.input.sequences,
    section={**snakemake.config["model_diff"], **snakemake.params.model_diff},
    device=snakemake.config["device"],
    threads=snakemake.threads,
    weights=dict(zip(rounds, snakemake.output.weights, strict=True)),
    metrics=dict(zip(rounds, snakemake.output.metrics, strict=True)),
)
