"""The tables people read: the top features of each analysis, the columns that decide a call."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd


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
        "log2_fold_change",
        "spearman_rho",
        *[f"freq_{m}" for m in models],
        "direction_change",
        "norm_ratio",
        "n_firing_sequences",
        "stability",
        "change_replication",
        "folds_present",
        "folds_changed",
    ]
    top = out[out["rank"] <= top_n]
    return top[[c for c in cols if c in top.columns]].reset_index(drop=True)
