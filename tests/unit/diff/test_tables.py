"""features.tsv: the top features of each analysis, unstable changes marked, never hidden."""

from __future__ import annotations

import pandas as pd

from plmdiff.diff.tables import readable_features


def test_readable_features_mark_unstable_and_single_replica_changes():
    features = pd.DataFrame(
        {
            "rank": [1, 2, 3, 4],
            "analysis": "base",
            "feature": [7, 3, 5, 1],
            "changed": [True, True, False, True],
            "stable": pd.array([False, pd.NA, True, True], dtype="boolean"),
            "q_value": 0.01,
            "freq_r0": 0.1,
            "freq_r1": 0.2,
            "internal": 0,
        }
    )
    out = readable_features(features, ["r0", "r1"], top_n=3)
    assert out["mark"].tolist() == ["UNSTABLE", "single replica", ""]
    assert list(out.columns) == [
        "rank",
        "analysis",
        "feature",
        "mark",
        "q_value",
        "freq_r0",
        "freq_r1",
    ]
