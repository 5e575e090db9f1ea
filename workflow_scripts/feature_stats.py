"""Rule feature_stats: encode every model's held-out tokens with one SAE, summarise each feature."""

from plmdiff.core.runtime import setup_logging
from plmdiff.diff.feature_stats import run_feature_stats

setup_logging(snakemake.log[0])
wildcards, params = snakemake.wildcards, snakemake.params
run_feature_stats(
    snakemake.input.sae,
    snakemake.input.base_sae[0] if snakemake.input.base_sae else None,
    dict(params.token_dirs),
    {k: snakemake.output[k] for k in ("stats", "sequences", "fires", "top")},
    dict(params.diff),
    kfold=params.kfold,
    fold_seed=params.fold_seed,
    fold=int(wildcards.fold),
    device=snakemake.config["device"],
    metadata={
        "embedder": wildcards.embedder,
        "layer": int(wildcards.layer),
        "scheme": wildcards.scheme,
    },
)
