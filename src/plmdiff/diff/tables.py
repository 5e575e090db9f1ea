"""The tables people read: the top features of each analysis, the columns that decide a call."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd


def readable_features(features: pd.DataFrame, models: Sequence[str], top_n: int) -> pd.DataFrame:
    """The top_n ranked features of each analysis, with the columns a person reads first."""
    mark = np.where(
        features["changed"] & features["stable"].astype("boolean").eq(False).fillna(False),
        "UNSTABLE",
        np.where(features["changed"] & features["stable"].isna(), "single replica", ""),
    )
    out = features.assign(mark=mark)
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
