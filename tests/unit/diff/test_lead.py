"""The features a diff leads with, and the intervals of its lead figure."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from plmdiff.diff import figures
from plmdiff.diff.lead import STABLE, lead_features, sequence_share_interval


def _features(analysis: str, changed, stable) -> pd.DataFrame:
    n = len(changed)
    return pd.DataFrame(
        {
            "rank": np.arange(1, n + 1),
            "analysis": analysis,
            "feature": np.arange(10, 10 + n),
            "changed": changed,
            "stable": pd.array(stable, dtype="boolean"),
            "change": ["up" if c else "" for c in changed],
            "seqfrac_r0": 0.1,
            "seqfrac_r1": 0.3,
            "freq_r0": 0.01,
            "freq_r1": 0.02,
        }
    )


def test_stable_changed_features_lead_in_rank_order():
    features = _features("base", [True, True, True, False], [False, True, True, True])
    lead = lead_features(features.iloc[::-1])  # rank order, not row order
    assert lead["feature"].tolist() == [11, 12] and set(lead["lead"]) == {STABLE}
    assert lead_features(features, n=1)["feature"].tolist() == [11]


def test_without_stable_changes_the_called_ones_lead_marked():
    unstable = _features("a", [True, False, True], [False, True, pd.NA])
    nothing = _features("b", [False, False], [True, True])
    lead = lead_features(pd.concat([unstable, nothing], ignore_index=True))
    assert lead["feature"].tolist() == [10, 12]
    assert lead["lead"].tolist() == ["UNSTABLE", "single replica"]
    assert "b" not in set(lead["analysis"])
    assert lead_features(nothing).empty and "lead" in lead_features(nothing)


@pytest.mark.parametrize(("share", "n"), [(0.3, 10), (0.0, 25), (1.0, 8), (0.31, 100)])
def test_sequence_share_interval_is_the_exact_binomial_one(share, n):
    lower, upper = sequence_share_interval([share], [n])
    ci = stats.binomtest(round(share * n), n).proportion_ci(0.95, method="exact")
    assert lower[0] == pytest.approx(ci.low, abs=1e-9)
    assert upper[0] == pytest.approx(ci.high, abs=1e-9)


def test_lead_trends_draws_every_analysis(tmp_path):
    features = pd.concat(
        [_features("a", [True, True], [True, False]), _features("b", [False], [True])],
        ignore_index=True,
    )
    path = tmp_path / "lead.png"
    figures.lead_trends(
        lead_features(features), {"a": [40, 50], "b": [40, 50]}, ["a", "b"], ["r0", "r1"], path
    )
    assert path.stat().st_size > 2000
