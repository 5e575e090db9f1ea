"""Rule sae_folds: one model's SAE folds, whole sequence clusters per fold."""

from plmdiff.core.runtime import setup_logging
from plmdiff.sae.folds import write_model_fold_table

setup_logging(snakemake.log[0])
write_model_fold_table(
    snakemake.input[0],
    snakemake.output[0],
    snakemake.params.probes,
    int(snakemake.params.kfold),
    int(snakemake.params.seed),
    threads=snakemake.threads,
)
