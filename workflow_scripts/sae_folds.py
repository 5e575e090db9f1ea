"""Rule sae_folds: every sequence's SAE fold, whole sequence clusters per fold."""

from plmdiff.core.runtime import setup_logging
from plmdiff.sae.folds import write_fold_table

setup_logging(snakemake.log[0])
write_fold_table(
    snakemake.input[0],
    snakemake.output[0],
    int(snakemake.params.kfold),
    int(snakemake.params.seed),
)
