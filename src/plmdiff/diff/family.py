"""One diff family: every analysis on every fold replica, ranked, with its stability rows."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from plmdiff.config.paths import BASE_SCHEME
from plmdiff.diff.alignment import Matching, hungarian_match, rowwise_cosine
from plmdiff.diff.analyses import Analysis
from plmdiff.diff.feature_stats import FeatureStats, StoredFeatureStats
from plmdiff.diff.settings import DiffConfig
from plmdiff.diff.stability import (
    STABILITY_COLUMNS,
    add_replication,
    fold_stability_rows,
    pooled_union_rows,
    scheme_alignment_rows,
)
from plmdiff.diff.statistics import RoundEvidence, analyse_rounds, change_kind, rank_features
from plmdiff.diff.tables import FIT_COLUMNS, fit_rows


@dataclass
class FamilyResult:
    features: pd.DataFrame  # every feature of fold 0 of every analysis, ranked, + replication
    fold_tables: dict[tuple[str, int], pd.DataFrame]
    matchings: dict[tuple[str, int], Matching]  # (analysis, fold): fold-0 features
    stability: pd.DataFrame
    fit: pd.DataFrame  # per analysis, fold and model: the evaluating SAE's FVU, L0, dead


def diff_family(
    analyses: Sequence[Analysis],
    models: Sequence[str],
    folds: Sequence[int],
    stats: Mapping[tuple[str, int], FeatureStats | StoredFeatureStats],
    decoders: Mapping[tuple[str, int], np.ndarray],
    cfg: DiffConfig,
    *,
    union_decoders: Mapping[int, Sequence[np.ndarray]] | None = None,
    null_decoders: Mapping[int, np.ndarray] | None = None,
) -> FamilyResult:
    """Diff every analysis of a family on every fold; fold 0 is the reference replica.

    `stats[(scheme, fold)]` are the feature stats of that SAE (loaded or stored);
    `decoders[(scheme, fold)]` its decoder [d_sae, d_in]. `union_decoders[fold]`, when given,
    are the per-round fine-tuned decoders the pooled SAE is compared with. `null_decoders[fold]`
    is the null fine-tune of fold `fold` (the base SAE fine-tuned on held-out base tokens):
    it calibrates the direction cut of every analysis with fine-tuned SAEs.
    """
    folds = list(folds)
    ref_fold = folds[0]
    features, stability, fit = [], [], []
    tables: dict[tuple[str, int], pd.DataFrame] = {}
    matchings: dict[tuple[str, int], Matching] = {}
    by_reference: dict[tuple[str, int], Matching] = {}
    for an in analyses:
        for fold in folds:
            evidence = []
            for model in models:
                fs = stats[(an.evaluator[model], fold)]
                evidence.append(
                    RoundEvidence(
                        model=model,
                        scheme=an.evaluator[model],
                        stats=fs.model_stats(model),
                        sequences=fs.model_sequences(model),
                        fires=fs.model_fires(model),
                        positions=fs.model_positions(model),
                    )
                )
            d_sae = stats[(an.reference, fold)].d_sae
            # Decoder stats are per SAE (the same rows for every model): any model's will do.
            direction = {
                label: stats[(scheme, fold)].model_stats(models[0])
                for label, scheme in an.direction.items()
            }
            null = None
            if direction and null_decoders and fold in null_decoders:
                null = null_direction_change(
                    null_decoders[fold],
                    decoders[(BASE_SCHEME, fold)],
                    stats[(BASE_SCHEME, fold)].model_stats(models[0]),
                    cfg.min_firing_sequences,
                )
            tables[(an.name, fold)] = analyse_rounds(
                evidence, d_sae, cfg, analysis=an.name, direction=direction, null_direction=null
            )
            fit += fit_rows(
                an.name,
                fold,
                {m: (an.evaluator[m], stats[(an.evaluator[m], fold)]) for m in models},
            )
        ref = tables[(an.name, ref_fold)]
        for fold in folds[1:]:
            # Analyses that share a reference dictionary share its (costly) matching.
            if (an.reference, fold) not in by_reference:
                by_reference[(an.reference, fold)] = hungarian_match(
                    decoders[(an.reference, ref_fold)], decoders[(an.reference, fold)]
                )
            matchings[(an.name, fold)] = by_reference[(an.reference, fold)]
        table = add_replication(
            ref,
            [tables[(an.name, f)] for f in folds[1:]],
            [matchings[(an.name, f)] for f in folds[1:]],
            cfg,
        )
        table["change"] = change_kind(table, cfg)
        features.append(rank_features(table))
        stability += fold_stability_rows(an, folds, tables, matchings, cfg)
        stability += scheme_alignment_rows(an, ref_fold, decoders, cfg)
        if union_decoders and an.is_pooled:
            stability += pooled_union_rows(an, folds, decoders, union_decoders, cfg)
    return FamilyResult(
        features=pd.concat(features, ignore_index=True),
        fold_tables=tables,
        matchings=matchings,
        stability=pd.DataFrame(stability, columns=STABILITY_COLUMNS),
        fit=pd.DataFrame(fit, columns=FIT_COLUMNS),
    )


def null_direction_change(
    null_decoder: np.ndarray,
    base_decoder: np.ndarray,
    base_stats: pd.DataFrame,
    min_firing_sequences: int,
) -> np.ndarray:
    """1 - cos(null fine-tune row, base row) of the base SAE's features that fire in at least
    `min_firing_sequences` of the base model's held-out sequences: a feature that never fires
    gets no gradient and keeps its row, and counting it would pull the null quantile to 0."""
    moved = 1.0 - rowwise_cosine(null_decoder, base_decoder)
    rows = base_stats.set_index("feature").sort_index()
    firing = rows["n_firing_sequences"].reindex(np.arange(len(moved)), fill_value=0).to_numpy()
    return moved[firing >= min_firing_sequences].astype(np.float64)
