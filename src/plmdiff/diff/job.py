"""The rules of the diff stage (rules/diff.smk): feature_stats and diff.

Each function unpacks what its rule hands over, calls the stage's typed functions and writes
the rule's outputs; workflow_scripts/feature_stats.py and workflow_scripts/diff.py only call
these.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import pandas as pd

from plmdiff.config.paths import BASE_SCHEME, FEATURE_STATS_SUFFIXES
from plmdiff.core.runtime import resolve_device
from plmdiff.core.tables import write_parquet, write_table
from plmdiff.diff import figures
from plmdiff.diff.analyses import family_analyses
from plmdiff.diff.examples import examples_tsv, select_examples
from plmdiff.diff.family import FamilyResult, diff_family
from plmdiff.diff.feature_stats import (
    FeatureStats,
    FeatureStatsPaths,
    compute_feature_stats,
    held_out_sequences,
    sae_decoder,
)
from plmdiff.diff.lead import lead_features
from plmdiff.diff.settings import DiffConfig, FeatureStatsConfig
from plmdiff.diff.tables import readable_features
from plmdiff.sae.folds import read_fold_table
from plmdiff.sae.training import load_sae

log = logging.getLogger(__name__)

# ----------------------------------------------------------------------------- feature_stats


def run_feature_stats(
    sae_path: str | os.PathLike,
    base_sae_path: str | os.PathLike | None,
    token_dirs: Mapping[str, str | os.PathLike],
    outputs: Mapping[str, str],
    diff_section: Mapping[str, Any],
    *,
    kfold: int,
    fold_seed: int,
    fold: int,
    device: Any,
    metadata: Mapping[str, Any],
    fold_of: Mapping[str, int] | None = None,
) -> FeatureStats:
    """The feature_stats rule: encode every model's (held-out) tokens with one SAE, write all."""
    expected = {k: str(v) for k, v in FeatureStatsPaths.of(outputs["stats"]).files().items()}
    for name, path in expected.items():
        if str(outputs[name]) != path:
            raise ValueError(f"feature_stats output {name} is {outputs[name]}; must be {path}")
    cfg = FeatureStatsConfig.from_section(diff_section)
    dev = resolve_device(device)
    held_out = cfg.held_out and kfold > 1
    dirs = {m: [d] for m, d in token_dirs.items()}
    seq_ids = {
        m: held_out_sequences(d, kfold, fold_seed, fold, held_out, fold_of) for m, d in dirs.items()
    }
    base = sae_decoder(load_sae(base_sae_path)) if base_sae_path else None
    fs = compute_feature_stats(
        load_sae(sae_path, dev),
        dirs,
        cfg,
        device=dev,
        base_decoder=base,
        seq_ids=seq_ids,
        metadata={
            **metadata,
            "held_out": held_out,
            "kfold": kfold,
            "fold": fold,
            "sae": str(sae_path),
        },
    )
    fs.write(outputs["stats"])
    return fs


# ----------------------------------------------------------------------------- diff


@dataclass(frozen=True)
class DiffOutputs:
    features_tsv: str
    features_parquet: str
    examples_parquet: str
    examples_tsv: str
    stability_tsv: str
    volcano_png: str
    volcano_svg: str
    trajectories_png: str
    lead_png: str
    stability_png: str
    fit_tsv: str

    @classmethod
    def from_rule(cls, output: Any) -> DiffOutputs:
        """The diff rule's named outputs (rules/diff.smk), read by name."""
        return cls(**{field: str(getattr(output, name)) for field, name in RULE_OUTPUTS.items()})


# DiffOutputs field -> the diff rule's output name.
RULE_OUTPUTS = {
    "features_tsv": "features",
    "features_parquet": "parquet",
    "examples_parquet": "examples",
    "examples_tsv": "examples_tsv",
    "stability_tsv": "stability",
    "volcano_png": "volcano",
    "volcano_svg": "volcano_svg",
    "trajectories_png": "trajectories",
    "lead_png": "lead",
    "stability_png": "stability_png",
    "fit_tsv": "fit",
}


def keyed_paths(keys: Sequence[Sequence[Any]], paths: Sequence[str]) -> dict[tuple[str, int], str]:
    """(scheme, fold) -> path, from the rule's parallel lists of keys and input files."""
    return {(str(s), int(f)): str(p) for (s, f), p in zip(keys, paths, strict=True)}


def null_by_fold(folds: Sequence[int], paths: Sequence[str]) -> dict[int, str] | None:
    """fold -> the null fine-tune of that fold (None: the family has no fine-tuned SAEs)."""
    if not paths:
        return None
    return {int(f): str(p) for f, p in zip(folds, paths, strict=True)}


def union_by_fold(
    keys: Sequence[Sequence[Any]], paths: Sequence[str]
) -> dict[int, list[str]] | None:
    """fold -> the fine-tuned SAEs whose union the pooled SAE is compared with (None: none)."""
    union: dict[int, list[str]] = {}
    for (_scheme, fold), path in keyed_paths(keys, paths).items():
        union.setdefault(fold, []).append(path)
    return union or None


def _write_tsv(frame: pd.DataFrame, path: str | os.PathLike) -> None:
    # The diff's tables print 4 significant digits and say NA (untested features) in words.
    write_table(frame, path, float_format="%.4g", na_rep="NA")


def run_diff(
    family: str,
    models: Sequence[str],
    schemes: Sequence[str],
    folds: Sequence[int],
    stats_paths: Mapping[tuple[str, int], str],
    sae_paths: Mapping[tuple[str, int], str],
    cfg: DiffConfig,
    outputs: DiffOutputs,
    *,
    union_paths: Mapping[int, Sequence[str]] | None = None,
    null_paths: Mapping[int, str] | None = None,
) -> FamilyResult:
    """The diff rule: read feature stats and SAE decoders, diff, write tables and figures.

    `null_paths[fold]`: the null fine-tune (scheme null_ft) of each fold, which calibrates the
    direction cut of fine-tuned SAEs (none: the floor min_direction_change alone)."""
    analyses = family_analyses(family, schemes, models)
    stats = {key: FeatureStats.open(path) for key, path in stats_paths.items()}
    ref_fold = next(iter(folds))
    # Decoders held in memory: every replica of each reference dictionary (fold matching),
    # and every scheme of the reference fold (scheme alignment); not all schemes x folds.
    wanted = {(an.reference, f) for an in analyses for f in folds}
    wanted |= {(s, ref_fold) for an in analyses for s in [*an.schemes, BASE_SCHEME]}
    if null_paths:
        # The null's direction change is measured against the base SAE of its own fold.
        wanted |= {(BASE_SCHEME, f) for f in folds}
    decoders = {
        key: sae_decoder(load_sae(path)) for key, path in sae_paths.items() if key in wanted
    }
    union = None
    if union_paths:
        union = {f: [sae_decoder(load_sae(p)) for p in ps] for f, ps in union_paths.items()}
    nulls = None
    if null_paths:
        nulls = {int(f): sae_decoder(load_sae(p)) for f, p in null_paths.items()}
    elif any(an.direction for an in analyses):
        log.warning(
            "no null fine-tune given: the direction cut is the floor min_direction_change = %g",
            cfg.min_direction_change,
        )
    result = diff_family(
        analyses,
        models,
        folds,
        stats,
        decoders,
        cfg,
        union_decoders=union,
        null_decoders=nulls,
    )
    features = result.features
    write_parquet(features, outputs.features_parquet)
    _write_tsv(readable_features(features, models, cfg.top_n), outputs.features_tsv)

    examples = []
    for an in analyses:
        ranked = features[(features["analysis"] == an.name) & (features["rank"] <= cfg.top_n)]
        by_scheme = {s: stats[(s, ref_fold)] for s in an.schemes}
        examples.append(select_examples(ranked, by_scheme, an.evaluator, models, cfg.top_examples))
    examples_frame = pd.concat(examples, ignore_index=True)
    write_parquet(examples_frame, outputs.examples_parquet)
    _write_tsv(examples_tsv(examples_frame), outputs.examples_tsv)
    _write_tsv(result.stability, outputs.stability_tsv)
    _write_tsv(result.fit, outputs.fit_tsv)

    figures.volcano(features, cfg, [outputs.volcano_png, outputs.volcano_svg])
    figures.trajectories(
        features,
        result.fold_tables,
        result.matchings,
        models,
        folds,
        cfg,
        outputs.trajectories_png,
    )
    # Per round, the held-out sequences each analysis's evaluating SAE saw (the lead's intervals).
    n_sequences = {
        an.name: [len(stats[(an.evaluator[m], ref_fold)].model_sequences(m)) for m in models]
        for an in analyses
    }
    figures.lead_trends(
        lead_features(features),
        n_sequences,
        [an.name for an in analyses],
        models,
        outputs.lead_png,
    )
    figures.stability(features, result.matchings, models, cfg, outputs.stability_png)
    return result


def run_feature_stats_replicas(
    sae_paths: Sequence[str],
    base_sae_paths: Sequence[str],
    replicas: Sequence[Mapping[str, Any]],
    outputs: Mapping[str, Sequence[str]],
    diff_section: Mapping[str, Any],
    *,
    embedder: str,
    scheme: str,
    kfold: int,
    fold_seed: int,
    device: Any,
    fold_table: Sequence[str | os.PathLike] | None = None,
) -> None:
    """The feature_stats rule: every fold replica of one (embedder, layer, scheme) in turn, in
    the order of `replicas` ({layer, fold, token_dirs}); `outputs` maps each file kind of
    plmdiff.config.paths.FEATURE_STATS_SUFFIXES to one path per replica. One job per layer keeps
    reruns exact (a new layer encodes only its replicas); on a cluster it shares the SLURM job of
    its SAE family's training (SAE_GROUP), which keeps submissions few."""
    bases: Sequence[str | None] = list(base_sae_paths) or [None] * len(replicas)
    # The fold table the SAE replicas were trained with (rule sae_folds).
    fold_of = read_fold_table(fold_table, kfold) if fold_table else None
    for i, replica in enumerate(replicas):
        run_feature_stats(
            sae_paths[i],
            bases[i],
            dict(replica["token_dirs"]),
            {key: outputs[key][i] for key in FEATURE_STATS_SUFFIXES},
            diff_section,
            kfold=kfold,
            fold_seed=fold_seed,
            fold=int(replica["fold"]),
            device=device,
            metadata={"embedder": embedder, "layer": int(replica["layer"]), "scheme": scheme},
            fold_of=fold_of,
        )
