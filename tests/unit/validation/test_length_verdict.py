"""The length verdict counts stable changed features that are not length effects."""

from __future__ import annotations

import pandas as pd

from validation.scoring import score_analysis
from validation.verdicts import kind_verdict


def _table(length_effect: list[bool], changed: list[bool]) -> pd.DataFrame:
    n = len(changed)
    return pd.DataFrame(
        {
            "analysis": "base",
            "feature": range(n),
            "rank": range(1, n + 1),
            "changed": changed,
            "stable": pd.array([True] * n, dtype="boolean"),
            "length_effect": length_effect,
        }
    )


def test_length_effects_are_not_stable_changed_features():
    # A diff table whose `changed` would still include a length effect: the score leaves it out.
    table = _table([True, True, False, False], [True, False, False, True])
    score = score_analysis("length_gpt2", "gpt2", "base", table, None, None)
    assert score.n_stable_changed == 1 and score.n_length_effects == 2
    probes = [{"length_ci_low": 0.9, "chance": 0.5, "min_baseline_margin_p_fwer": 0.5}]
    study = {"kind": "length", "probes": probes, "analyses": [score.__dict__]}
    verdict = kind_verdict(study)
    assert verdict["stable_changed_features"] == 1 and verdict["length_effects"] == 2
    assert not verdict["met"]
    table = _table([True, True, False, False], [False, False, False, False])
    study["analyses"] = [score_analysis("l", "gpt2", "base", table, None, None).__dict__]
    assert kind_verdict(study)["met"]
