"""Verdicts name an analysis with its SAE's layer, so a study of several layers says which."""

from __future__ import annotations

from validation.verdicts import analysis_label


def test_an_analysis_is_named_with_its_layer_when_the_score_has_one():
    assert analysis_label({"analysis": "pooled", "layer": 1}) == "layer 1/pooled"
    # Scores written before `layer` existed, or without one, keep the bare name.
    assert analysis_label({"analysis": "pooled"}) == "pooled"
    assert analysis_label({"analysis": "base", "layer": -1}) == "base"
