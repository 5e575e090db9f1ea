"""Rule diff: which features of a family's SAEs changed across rounds, and are they stable."""

from plmdiff.core.runtime import setup_logging
from plmdiff.diff.job import DiffOutputs, keyed_paths, null_by_fold, run_diff, union_by_fold
from plmdiff.diff.settings import DiffConfig

setup_logging(snakemake.log[0])
params, inputs = snakemake.params, snakemake.input
run_diff(
    snakemake.wildcards.family,
    list(params.models),
    list(params.schemes),
    list(params.folds),
    keyed_paths(params.stats_keys, inputs.stats),
    keyed_paths(params.stats_keys, inputs.saes),
    DiffConfig.from_section(params.diff),
    DiffOutputs.from_rule(snakemake.output),
    union_paths=union_by_fold(params.union_keys, inputs.union),
    null_paths=null_by_fold(params.null_folds, inputs.null),
)
