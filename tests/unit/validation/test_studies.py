"""Studies of the validation suite: a base of a study's own, and the fine-tuned null."""

from __future__ import annotations

from dataclasses import replace

import pytest

from plmdiff.models.lm_training import LMTrainingConfig
from validation.checkpoints import ModelShape, build_base, build_rounds
from validation.run import null_finetune_data, targets, training_configs
from validation.studies import MOTIF_SITE_STUDY, Study, ci_suite, full_suite


def test_a_study_may_train_its_own_base():
    suite = full_suite()
    assert training_configs(MOTIF_SITE_STUDY, suite)[0].max_steps == 1000
    plain = suite.studies[0]
    assert plain.base_steps is None
    assert training_configs(plain, suite)[0].max_steps == suite.base_steps
    # Rounds keep the suite's budget either way.
    assert training_configs(MOTIF_SITE_STUDY, suite)[1].max_steps == suite.round_steps


def test_null_rounds_copy_the_base_or_fine_tune_on_its_samples():
    family = ["MKTAYIAKQR" * 8] * 3
    copy = Study("n", "null", "gpt2", (0, 0))
    assert copy.round_data(family) == [None, None]
    tuned = replace(copy, null_finetune=True)
    assert tuned.round_data(family, ["MKV", "MKL"]) == [["MKV", "MKL"], ["MKV", "MKL"]]
    with pytest.raises(ValueError, match="needs the base's samples"):
        tuned.round_data(family)
    with pytest.raises(ValueError, match="null studies only"):
        Study("m", "motif", "gpt2", (0.5,), motif="WCYMW", null_finetune=True)


def test_the_full_suite_has_one_fine_tuned_null_that_runs_model_diffing():
    nulls = [s for s in full_suite().studies if s.kind == "null"]
    assert len(nulls) >= 10
    tuned = [s for s in nulls if s.null_finetune]
    assert [s.name for s in tuned] == ["null_gpt2_s0"] and tuned[0].model_diff is not None


def test_a_fine_tuned_null_trains_on_what_the_base_samples(tmp_path):
    """The data are the base's kept samples (workflow sampling and filter, its own stream), and
    each round is a fine-tune of the base, not a copy."""
    suite = replace(ci_suite(), shape=ModelShape(n_layer=1, n_embd=16, n_head=4, n_positions=64))
    study = Study("null_ft", "null", "gpt2", (0, 0), seed=3, crop=20, null_finetune=True)
    cfg = LMTrainingConfig(lr=1e-2, batch_size=4, max_steps=20)
    base = build_base(tmp_path / "base", "gpt2", suite.shape, ["MKTAYIAKQRQISFVKSHFS"] * 8, cfg)
    data = null_finetune_data(study, suite, base, 12)
    assert data and all(isinstance(s, str) and s for s in data)
    assert data == null_finetune_data(study, suite, base, 12)  # seeded: the cache key is stable
    assert null_finetune_data(replace(study, null_finetune=False), suite, base, 12) == []
    rounds = build_rounds(tmp_path / "study", base, "gpt2", study.round_data([], data), cfg, True)
    weights = [(p / "model.safetensors").read_bytes() for p in rounds]
    assert weights[0] == (base / "model.safetensors").read_bytes()
    assert weights[1] != weights[0] and weights[2] != weights[0] and weights[1] != weights[2]


def test_every_lens_is_scored_but_only_round_embedders_are_probed():
    """The self lens (each round embeds its own samples) has SAE diffs, no probes: the probes
    stage refuses it, and a suite that asked for them failed its whole study."""
    suite = full_suite()
    study = next(s for s in suite.studies if "self" in s.embedders)
    wanted = targets(study, suite)
    assert any(t.startswith("results/diff/self/") for t in wanted)
    assert not any(t.startswith("results/probes/self/") for t in wanted)
    assert any(t.startswith("results/probes/r0/") for t in wanted)
