"""The features a diff leads with: its stable changed features, else its called ones, marked.

The diff's lead figure (`figures.lead_trends`) and the report's diff section show the same
features, so the choice is made here once.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import pandas as pd

from plmdiff.diff.evidence import clopper_pearson
from plmdiff.diff.tables import change_marks

# Enough to read one by one on a page; the full ranking stays in features.parquet.
LEAD_FEATURES = 5
STABLE = "stable"


def lead_features(features: pd.DataFrame, n: int = LEAD_FEATURES) -> pd.DataFrame:
    """Per analysis, up to `n` features in rank order with a `lead` column.

    The stable changed features (called, and the change replicates across fold replicas) when
    there are any (`lead` = 'stable'); otherwise the best-ranked called features with their mark
    ('UNSTABLE', or 'single replica' when there was no replica to check them on). An analysis
    with no called feature contributes no row.
    """
    picks = []
    for _, d in features.groupby("analysis", sort=False):
        d = d.sort_values("rank", kind="stable")
        called = d[d["changed"].to_numpy(dtype=bool)]
        marks = change_marks(called)
        stable = called[marks == ""]
        if len(stable):
            picks.append(stable.head(n).assign(lead=STABLE))
        elif len(called):
            picks.append(called.head(n).assign(lead=marks.head(n).to_numpy()))
    if not picks:
        return features.head(0).assign(lead=pd.Series(dtype=object))
    return pd.concat(picks, ignore_index=True)


def sequence_share_interval(
    share: Iterable[float], n_sequences: Iterable[int], confidence: float = 0.95
) -> tuple[np.ndarray, np.ndarray]:
    """Clopper-Pearson interval of each round's share of sequences in which a feature fires.

    The share is what feature_stats measured on n held-out sequences, so share x n is a count.
    """
    lower, upper = [], []
    for s, n in zip(share, n_sequences, strict=True):
        n = int(n)
        k = round(float(s) * n)
        lo, hi = clopper_pearson(k, n, confidence) if n > 0 else (np.nan, np.nan)
        lower.append(lo)
        upper.append(hi)
    return np.asarray(lower), np.asarray(upper)
