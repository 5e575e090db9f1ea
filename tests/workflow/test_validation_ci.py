"""The CI-sized validation suite (validation/, `make validate-ci`) run for real: a planted-motif
study and a null study through the whole workflow, scored.

The issue's targets (VALIDATION.md): the null study calls no stable changed feature; the
planted motif is carried by >= 30% of the last round's kept samples, and in at least one
analysis a feature with coverage >= 0.5 and enrichment >= 5 ranks in the top 5, called changed
and stable. The fold-change cut of the diff before the evidence call (plmdiff.diff.evidence)
misses it (VALIDATION.md, "Results").
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import scipy.stats as sps

from plmdiff.models.checkpoints import inspect_checkpoint
from plmdiff.models.lm_training import LMTrainingConfig
from plmdiff.models.text import PromptFormat
from validation.checkpoints import ModelShape, build_base, build_rounds
from validation.run import main as run_validation
from validation.scoring import (
    TokenSet,
    match_features,
    planted_occurrences,
    score_analysis,
    target_for,
)
from validation.studies import enrich_class, plant_motif, shorten
from validation.verdicts import length_effect, null_fdp, study_verdict


def test_planted_occurrences_of_a_motif_and_a_class():
    occ, n = planted_occurrences(["AWCYMWA", "WCYMW", "GGG"], "WCYMW", "motif")
    assert n == 2 and occ.tolist() == [-1, 0, 0, 0, 0, 0, -1, 1, 1, 1, 1, 1, -1, -1, -1]
    occ, n = planted_occurrences(["AKR", "RA"], "KR", "composition")
    assert n == 3 and occ.tolist() == [-1, 0, 1, 2, -1]


def test_match_features_coverage_and_enrichment():
    """Feature 0 fires on one residue of each occurrence only; feature 1 everywhere."""
    occ = np.array([-1, 0, 0, -1, -1, 1, 1, -1, -1, -1])
    codes = np.zeros((10, 2))
    codes[[1, 5], 0] = 1.0
    codes[:, 1] = 1.0
    m = match_features(codes, TokenSet(act=np.zeros((10, 1)), occurrence=occ, n_occurrences=2))
    assert m.coverage.tolist() == [1.0, 1.0]
    assert m.precision.tolist() == [1.0, 0.4]
    assert m.enrichment.tolist() == pytest.approx([2.5, 1.0])


def test_study_transforms_plant_what_they_say():
    seqs = ["A" * 40] * 400
    planted = plant_motif(seqs, "WCYMW", 0.5, seed=0)
    share = np.mean(["WCYMW" in s for s in planted])
    assert 0.4 < share < 0.6 and all(len(s) == 40 for s in planted)
    enriched = "".join(enrich_class(seqs, "KR", 0.1, seed=0))
    assert 0.08 < (enriched.count("K") + enriched.count("R")) / len(enriched) < 0.12
    assert shorten(["ABCDEFG"], 3) == ["ABC"]


def test_plain_llama_rounds_pass_intake(tmp_path):
    """The suite's plain-format decoder: a LLaMA with grouped-query attention, a base and a
    fine-tuned round, both accepted by checkpoint intake in the plain format."""
    shape = ModelShape(n_layer=1, n_embd=16, n_head=4, n_positions=64)
    cfg = LMTrainingConfig(lr=1e-3, batch_size=4, max_steps=2)
    base = build_base(tmp_path / "base", "llama", shape, ["MKTAYIAK", "MSLLV"], cfg)
    rounds = build_rounds(tmp_path / "study", base, "llama", [["MKTAYIAK"]], cfg)
    for path in rounds:
        record = inspect_checkpoint(path, path.name, PromptFormat("plain", ""))
        assert record.n_layers == 1
    assert (rounds[0] / "model.safetensors").read_bytes() == (
        base / "model.safetensors"
    ).read_bytes()


def _analysis(n_stable: int, hit: bool = False) -> dict:
    return {
        "embedder": "base",
        "analysis": "base",
        "n_stable_changed": n_stable,
        "first_changed_rank_in_target": hit,
    }


def test_null_fdp_is_the_share_of_null_seeds_that_call_anything():
    nulls = {
        f"null{i}": {"kind": "null", "analyses": [_analysis(0), _analysis(0)]} for i in range(10)
    }
    nulls["null3"]["analyses"][1] = _analysis(4)
    planted = {"motif": {"kind": "motif", "analyses": [_analysis(7, hit=True)]}}
    f = null_fdp({**nulls, **planted})
    assert (f["seeds"], f["seeds_with_stable_call"], f["stable_calls"]) == (10, 1, 4)
    assert f["fdp"] == pytest.approx(0.1) and not f["met"]
    # Clopper-Pearson: the exact binomial interval (scipy's beta quantiles).
    assert f["ci_low"] == pytest.approx(sps.beta.ppf(0.025, 1, 10))
    assert f["ci_high"] == pytest.approx(sps.beta.ppf(0.975, 2, 9))
    nulls["null3"]["analyses"][1] = _analysis(0)
    assert null_fdp(nulls)["met"]
    del nulls["null3"]
    assert not null_fdp(nulls)["met"], "9 seeds are fewer than the issue's 10"


def _probe(length_ci_low: float, min_margin_p: float) -> dict:
    return {
        "chance": 1 / 3,
        "length_ci_low": length_ci_low,
        "min_baseline_margin_p_fwer": min_margin_p,
    }


@pytest.mark.parametrize(
    ("probes", "n_stable", "met"),
    [
        ([_probe(0.6, 0.4), _probe(0.3, 0.2)], 0, True),
        ([_probe(0.6, 0.4), _probe(0.3, 0.01)], 0, False),  # a layer beats the baselines
        ([_probe(0.3, 0.4)], 0, False),  # length does not separate the rounds
        ([_probe(0.6, 0.4)], 2, False),  # reported as features
        ([], 0, False),
    ],
)
def test_length_effect_needs_length_baselines_and_no_features(probes, n_stable, met):
    assert length_effect(probes, n_stable)["met"] is met


def test_study_verdicts_by_kind():
    motif = {"kind": "motif", "analyses": [_analysis(3), _analysis(2, hit=True)]}
    assert study_verdict(motif) == {
        "met": True,
        "analyses": ["base/base"],
        "stable_changed_features": 5,
    }
    assert not study_verdict({"kind": "null", "analyses": [_analysis(1)]})["met"]


def test_class_target_reads_precision_not_enrichment():
    """A feature firing only on K/R where they are 20% of residues is 5x enriched at most: the
    class target asks for >= 80% of its firings on the class instead."""
    occ = np.full(10, -1)
    occ[[0, 1]] = [0, 1]  # 2 of 10 residues planted
    codes = np.zeros((10, 2))
    codes[[0, 1, 2], 0] = 1.0  # 2 of 3 firings on the class: precision 0.67
    codes[[0], 1] = 1.0  # precision 1.0, coverage 0.5
    match = match_features(codes, TokenSet(np.zeros((10, 1)), occ, 2))
    table = pd.DataFrame(
        {
            "feature": [0, 1],
            "analysis": "base",
            "rank": [1, 2],
            "changed": True,
            "change": "up",
            "stable": True,
            "stability": 1.0,
            "change_replication": 1.0,
            "log2_fold_change": 1.0,
            "q_value": 0.01,
        }
    )
    score = score_analysis("s", "base", "base", table, match, target_for("composition"))
    assert score.qualifying == 1 and score.qualifying_best_rank == 2
    assert score.first_changed_rank_in_target
    assert target_for("length") is None


@pytest.fixture(scope="module")
def ci_scores(tmp_path_factory) -> dict:
    # VALIDATION_CI_WORK: a work directory of `make validate-ci` whose finished checkpoints and
    # workflow outputs are reused (the suite re-runs only what changed).
    work = Path(os.environ.get("VALIDATION_CI_WORK") or tmp_path_factory.mktemp("validation"))
    assert run_validation(["--suite", "ci", "--work", str(work)]) == 0
    return json.loads((work / "ci" / "scores.json").read_text())["studies"]


@pytest.mark.workflow
@pytest.mark.slow
def test_null_study_calls_no_stable_feature(ci_scores):
    null = ci_scores["ci_null_gpt2"]
    assert null["analyses"], "the null study was scored on no analysis"
    called = {a["analysis"]: a["n_stable_changed"] for a in null["analyses"]}
    assert all(n == 0 for n in called.values()), f"stable changes called in the null: {called}"
    assert null["verdict"]["met"]
    assert all(p["margin"] < 0.25 for p in null["probes"]), null["probes"]


@pytest.mark.workflow
@pytest.mark.slow
def test_planted_motif_is_learned_and_its_feature_scored(ci_scores):
    """The rounds carry the motif at the issue's rates (>= 30% of the last round's kept
    samples), and the SAE has a feature for it."""
    motif = ci_scores["ci_motif_gpt2"]
    shares = [motif["samples"][m]["motif_share"] for m in ("r0", "r1", "r2")]
    assert shares[0] < 0.05 and shares[0] < shares[1] < shares[2], f"motif share: {shares}"
    assert shares[2] >= 0.3, f"the last round carries the motif in {shares[2]:.0%} only"
    for a in motif["analyses"]:
        assert a["best_feature"] >= 0 and a["best_rank"] >= 1
        assert 0 <= a["best_coverage"] <= 1 and not math.isnan(a["best_enrichment"])
    assert any(a["qualifying"] for a in motif["analyses"]), motif["analyses"]


@pytest.mark.workflow
@pytest.mark.slow
def test_planted_motif_meets_the_issue_target(ci_scores):
    """The issue's target: in at least one analysis a feature that fires in >= 50% of the
    motif's occurrences, >= 5x enriched on motif positions, ranks in the top 5, called changed
    and stable (validation.scoring.MOTIF_TARGET)."""
    motif = ci_scores["ci_motif_gpt2"]
    rows = [
        {k: a[k] for k in ("analysis", "qualifying", "qualifying_best_rank", "best_rank")}
        | {"called": a["best_changed"], "stable": a["best_stable"]}
        for a in motif["analyses"]
    ]
    assert motif["verdict"]["met"], f"no analysis meets the target: {rows}"
