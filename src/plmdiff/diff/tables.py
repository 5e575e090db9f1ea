"""The tables people read: the top features of each analysis, the columns that decide a call."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Protocol

import numpy as np
import pandas as pd

from plmdiff.core.errors import DataError


def change_marks(features: pd.DataFrame) -> pd.Series:
    """'UNSTABLE' for a changed feature that does not replicate, 'single replica' for a changed
    feature with no replica to check it on, '' otherwise."""
    changed = features["changed"].to_numpy(dtype=bool)
    stable = features["stable"].astype("boolean")
    mark = np.where(
        changed & stable.eq(False).fillna(False).to_numpy(dtype=bool),
        "UNSTABLE",
        np.where(changed & stable.isna().to_numpy(dtype=bool), "single replica", ""),
    )
    return pd.Series(mark, index=features.index, dtype=object)


def readable_features(features: pd.DataFrame, models: Sequence[str], top_n: int) -> pd.DataFrame:
    """The top_n ranked features of each analysis, with the columns a person reads first."""
    out = features.assign(mark=change_marks(features))
    cols = [
        "rank",
        "analysis",
        "feature",
        "change",
        "mark",
        "q_value",
        "p_value",
        "posterior_log2_fold_change",
        "posterior_log2_fold_change_sd",
        "posterior_abs_log2_fold_change_lower",
        "log2_fold_change",
        "matched_log2_fold_change",
        "length_effect",
        "spearman_rho",
        *[f"freq_{m}" for m in models],
        "direction_change",
        "direction_cut",
        "norm_ratio",
        "n_firing_sequences",
        "stability",
        "change_replication",
        "folds_present",
        "folds_changed",
    ]
    top = out[out["rank"] <= top_n]
    return top[[c for c in cols if c in top.columns]].reset_index(drop=True)


class HasMetadata(Protocol):
    metadata: dict[str, Any]


# fit.tsv: how well the SAE that encodes each model fits that model's held-out tokens.
FIT_COLUMNS = ["analysis", "fold", "model", "scheme", "n_tokens", "fvu", "l0", "dead_fraction"]
FIT_METRICS = ["n_tokens", "fvu", "l0", "dead_fraction"]


def fit_rows(
    analysis: str, fold: int, evaluators: Mapping[str, tuple[str, HasMetadata]]
) -> list[list[Any]]:
    """One row per model: its evaluating SAE (scheme) and that SAE's FVU, L0 and dead fraction on
    the model's held-out tokens, as feature_stats recorded them (metadata `fit`)."""
    rows = []
    for model, (scheme, fs) in evaluators.items():
        fit = fs.metadata.get("fit", {}).get(model)
        if fit is None or any(k not in fit for k in FIT_METRICS):
            raise DataError(
                f"feature stats of scheme '{scheme}' fold {fold} record no fit of model '{model}'"
                " (written before fit was recorded); rerun feature_stats"
            )
        rows.append([analysis, fold, model, scheme, *(fit[k] for k in FIT_METRICS)])
    return rows
