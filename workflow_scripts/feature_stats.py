"""Rule feature_stats: encode every model's held-out tokens with each SAE replica of one
(embedder, scheme), every SAE layer and fold, and summarise each feature."""

from plmdiff.core.runtime import setup_logging
from plmdiff.diff.feature_stats import run_feature_stats

setup_logging(snakemake.log[0])
wildcards, params, output = snakemake.wildcards, snakemake.params, snakemake.output
base_saes = list(snakemake.input.base_saes) or [None] * len(params.replicas)
# One replica after the other (outputs are in params.replicas order): one GPU job per family.
for i, replica in enumerate(params.replicas):
    run_feature_stats(
        snakemake.input.saes[i],
        base_saes[i],
        dict(replica["token_dirs"]),
        {k: output[k][i] for k in ("stats", "sequences", "fires", "top")},
        dict(params.diff),
        kfold=params.kfold,
        fold_seed=params.fold_seed,
        fold=replica["fold"],
        device=snakemake.config["device"],
        metadata={
            "embedder": wildcards.embedder,
            "layer": replica["layer"],
            "scheme": wildcards.scheme,
        },
    )
