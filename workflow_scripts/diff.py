"""Rule diff: which features of a family's SAEs changed across rounds, and are they stable."""

from plmdiff.core.runtime import setup_logging
from plmdiff.diff.diff import DiffConfig, DiffOutputs, run_diff

setup_logging(snakemake.log[0])
params, out = snakemake.params, snakemake.output
keys = [tuple(k) for k in params.stats_keys]
union = {}
for (_scheme, fold), path in zip(params.union_keys, snakemake.input.union, strict=True):
    union.setdefault(fold, []).append(path)
run_diff(
    snakemake.wildcards.family,
    list(params.models),
    list(params.schemes),
    list(params.folds),
    dict(zip(keys, snakemake.input.stats, strict=True)),
    dict(zip(keys, snakemake.input.saes, strict=True)),
    DiffConfig.from_config(params.diff),
    DiffOutputs(
        features_tsv=out.features,
        features_parquet=out.parquet,
        examples_parquet=out.examples,
        examples_tsv=out.examples_tsv,
        stability_tsv=out.stability,
        volcano_png=out.volcano,
        volcano_svg=out.volcano_svg,
        trajectories_png=out.trajectories,
        stability_png=out.stability_png,
    ),
    union_paths=union or None,
)
