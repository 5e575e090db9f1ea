"""Rule feature_stats: encode every model's held-out tokens with each fold replica of one
(embedder, layer, scheme), and summarise each feature."""

from plmdiff.core.runtime import setup_logging
from plmdiff.diff.job import run_feature_stats_replicas

setup_logging(snakemake.log[0])
run_feature_stats_replicas(
    list(snakemake.input.saes),
    list(snakemake.input.base_saes),
    list(snakemake.params.replicas),
    {key: list(files) for key, files in snakemake.output.items()},
    dict(snakemake.params.diff),
    embedder=snakemake.wildcards.embedder,
    scheme=snakemake.wildcards.scheme,
    kfold=snakemake.params.kfold,
    fold_seed=snakemake.params.fold_seed,
    device=snakemake.config["device"],
    fold_table=[str(p) for p in snakemake.input.folds],
)
