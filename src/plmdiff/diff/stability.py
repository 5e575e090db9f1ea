"""Do the features and their changes replicate: across fold replicas, schemes, pooled data.

Fold replicas of one SAE learn the same dictionary in another order; Hungarian matching of
their decoders (`plmdiff.diff.alignment`) says which fold-0 feature reappears where, and whether
its change reappears with it. Each comparison also becomes a row of the stability table.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from plmdiff.config.paths import BASE_SCHEME
from plmdiff.diff.alignment import (
    Coverage,
    Matching,
    coverage,
    hungarian_match,
    rowwise_cosine,
    union_rows,
)
from plmdiff.diff.analyses import Analysis
from plmdiff.diff.settings import DiffConfig
from plmdiff.diff.statistics import change_kind


def add_replication(
    ref: pd.DataFrame,
    others: Sequence[pd.DataFrame],
    matchings: Sequence[Matching],
    cfg: DiffConfig,
) -> pd.DataFrame:
    """Per fold-0 feature: in how many folds it reappears, and in how many its change does.

    A feature reappears in fold j when its Hungarian partner there has decoder cosine >=
    `stability_cosine`; its change reappears when, in addition, the partner is called changed
    in the same direction (sign of the posterior log2 fold change; any call for a
    decoder-direction change).
    """
    out = ref.copy()
    k = 1 + len(others)
    out["n_folds"] = k
    if not others:
        for col in ("folds_present", "folds_changed"):
            out[col] = pd.array([pd.NA] * len(out), dtype="Int64")
        for col in ("mean_fold_cosine", "stability", "change_replication"):
            out[col] = np.nan
        out["stable"] = pd.array([pd.NA] * len(out), dtype="boolean")
        return out
    changed0 = ref["changed"].to_numpy()
    lfc0 = ref["posterior_log2_fold_change"].to_numpy()
    # A change called on the decoder direction alone has no sign to agree on.
    direction_only = change_kind(ref, cfg).to_numpy() == "direction"
    present = np.ones(len(ref), dtype=np.int64)
    changed = changed0.astype(np.int64)
    cosines = []
    for other, match in zip(others, matchings, strict=True):
        ok = match.matched(cfg.stability_cosine)
        partner = np.where(match.partner >= 0, match.partner, 0)
        other_changed = other["changed"].to_numpy()[partner]
        other_lfc = other["posterior_log2_fold_change"].to_numpy()[partner]
        same = (np.sign(other_lfc) == np.sign(lfc0)) | direction_only
        present += ok
        changed += ok & changed0 & other_changed & same
        cosines.append(np.where(match.partner >= 0, match.cosine, 0.0))
    out["folds_present"] = present
    out["folds_changed"] = changed
    out["mean_fold_cosine"] = np.mean(cosines, axis=0)
    out["stability"] = present / k
    out["change_replication"] = changed / k
    reappears = out["stability"].to_numpy() >= cfg.min_stable_fraction
    replicated = out["change_replication"].to_numpy() >= cfg.min_stable_fraction
    out["stable"] = pd.array(reappears & (replicated | ~changed0), dtype="boolean")
    return out


STABILITY_COLUMNS = [
    "analysis",
    "comparison",
    "a",
    "b",
    "n_a",
    "n_b",
    "cosine_threshold",
    "matched_a",
    "matched_b",
    "mean_cosine",
    "median_cosine",
    "identity_fraction",
    "n_changed_a",
    "changed_reappearing",
]


def fold_stability_rows(
    an: Analysis,
    folds: Sequence[int],
    tables: Mapping[tuple[str, int], pd.DataFrame],
    matchings: Mapping[tuple[str, int], Matching],
    cfg: DiffConfig,
) -> list[list[Any]]:
    rows = []
    ref = tables[(an.name, folds[0])]
    changed0 = ref["changed"].to_numpy()
    for fold in folds[1:]:
        match = matchings[(an.name, fold)]
        other = tables[(an.name, fold)]
        ok = match.matched(cfg.stability_cosine)
        partner = np.where(match.partner >= 0, match.partner, 0)
        again = ok & other["changed"].to_numpy()[partner]
        n_changed = int(changed0.sum())
        rows.append(
            [
                an.name,
                "fold_replica",
                f"{an.reference}/fold_{folds[0]}",
                f"{an.reference}/fold_{fold}",
                len(ref),
                len(other),
                cfg.stability_cosine,
                float(ok.mean()),
                float(np.isin(np.arange(len(other)), match.partner[ok]).mean()),
                float(np.nanmean(match.cosine)),
                float(np.nanmedian(match.cosine)),
                match.identity_fraction(),
                n_changed,
                float(again[changed0].mean()) if n_changed else np.nan,
            ]
        )
    return rows


def scheme_alignment_rows(
    an: Analysis, fold: int, decoders: Mapping[tuple[str, int], np.ndarray], cfg: DiffConfig
) -> list[list[Any]]:
    """Hungarian alignment of every other scheme of the analysis with the base SAE (one fold).

    Fine-tuned SAEs start from the base SAE, so a high identity fraction says fine-tuning kept
    the features where they were; matched_a says how many base features survive at all.
    """
    rows: list[list[Any]] = []
    if (BASE_SCHEME, fold) not in decoders:
        return rows
    base = decoders[(BASE_SCHEME, fold)]
    for scheme in an.schemes:
        if scheme == BASE_SCHEME or (scheme, fold) not in decoders:
            continue
        match = hungarian_match(base, decoders[(scheme, fold)])
        ok = match.matched(cfg.stability_cosine)
        rows.append(
            [
                an.name,
                "scheme_alignment",
                f"{BASE_SCHEME}/fold_{fold}",
                f"{scheme}/fold_{fold}",
                len(base),
                len(decoders[(scheme, fold)]),
                cfg.stability_cosine,
                float(ok.mean()),
                float(np.isin(np.arange(len(decoders[(scheme, fold)])), match.partner[ok]).mean()),
                float(np.nanmean(match.cosine)),
                float(np.nanmedian(match.cosine)),
                match.identity_fraction(),
                np.nan,
                np.nan,
            ]
        )
    return rows


def pooled_union_rows(
    an: Analysis,
    folds: Sequence[int],
    decoders: Mapping[tuple[str, int], np.ndarray],
    union_decoders: Mapping[int, Sequence[np.ndarray]],
    cfg: DiffConfig,
) -> list[list[Any]]:
    """ "If we mix the data, does the union of the expected features emerge?"

    The union stacks every per-round fine-tuned SAE's features of a fold. matched_a: fraction
    of union features that the pooled SAE has (max cosine >= threshold); matched_b: fraction of
    pooled features found in the union. A second row restricts the union to the features that
    fine-tuning moved away from the base SAE (1 - cos >= min_direction_change): the
    round-specific features one hopes pooling recovers.
    """
    rows = []
    for fold in folds:
        if fold not in union_decoders or (an.reference, fold) not in decoders:
            continue
        pooled = decoders[(an.reference, fold)]
        union = union_rows(union_decoders[fold])
        cov = coverage(union, pooled, cfg.stability_cosine)
        rows.append(_coverage_row(an, "pooled_vs_union", f"union_ft/fold_{fold}", fold, cov, cfg))
        base = decoders.get((BASE_SCHEME, fold))
        if base is None:
            continue
        moved = np.concatenate(
            [
                d[(1 - rowwise_cosine(d, base)) >= cfg.min_direction_change]
                for d in union_decoders[fold]
            ]
        )
        name = f"union_ft_moved/fold_{fold}"
        if len(moved):
            cov = coverage(moved, pooled, cfg.stability_cosine)
            rows.append(_coverage_row(an, "pooled_vs_union_moved", name, fold, cov, cfg))
        else:
            rows.append(
                [
                    an.name,
                    "pooled_vs_union_moved",
                    name,
                    f"{an.reference}/fold_{fold}",
                    0,
                    len(pooled),
                    cfg.stability_cosine,
                    *[np.nan] * 7,
                ]
            )
    return rows


def _coverage_row(
    an: Analysis, kind: str, a: str, fold: int, cov: Coverage, cfg: DiffConfig
) -> list[Any]:
    return [
        an.name,
        kind,
        a,
        f"{an.reference}/fold_{fold}",
        cov.n_a,
        cov.n_b,
        cfg.stability_cosine,
        cov.a_in_b,
        cov.b_in_a,
        cov.mean_best_cosine_a,
        np.nan,
        np.nan,
        np.nan,
        np.nan,
    ]
