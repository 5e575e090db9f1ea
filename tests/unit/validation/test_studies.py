"""Studies of the validation suite: a base of a study's own, and the fine-tuned null."""

from __future__ import annotations

from dataclasses import replace

import pytest

from plmdiff.config.schema import validate_config
from plmdiff.models.lm_training import LMTrainingConfig
from validation.checkpoints import ModelShape, build_base, build_rounds
from validation.run import MODELS, base_sample_data, study_config, targets, training_configs
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
    tuned = replace(copy, on_base_samples=True)
    assert tuned.round_data(family, ["MKV", "MKL"]) == [["MKV", "MKL"], ["MKV", "MKL"]]
    with pytest.raises(ValueError, match="needs the base's samples"):
        tuned.round_data(family)
    with pytest.raises(ValueError, match="null and length studies only"):
        Study("m", "motif", "gpt2", (0.5,), motif="WCYMW", on_base_samples=True)
    # A length shift on the base's samples shortens them, not the family.
    length = Study("l", "length", "gpt2", (3, 2), on_base_samples=True)
    assert length.round_data(family, ["MKVLA", "MKLAT"]) == [["MKV", "MKL"], ["MK", "MK"]]
    assert Study("l", "length", "gpt2", (3,)).round_data(family) == [["MKT"] * 3]


def test_the_full_suite_has_one_fine_tuned_null_that_runs_model_diffing():
    nulls = [s for s in full_suite().studies if s.kind == "null"]
    assert len(nulls) >= 10
    tuned = [s for s in nulls if s.on_base_samples]
    assert [s.name for s in tuned] == ["null_gpt2_s0"] and tuned[0].model_diff is not None


def test_a_fine_tuned_null_trains_on_what_the_base_samples(tmp_path):
    """The data are the base's kept samples (workflow sampling and filter, its own stream), and
    each round is a fine-tune of the base, not a copy."""
    suite = replace(ci_suite(), shape=ModelShape(n_layer=1, n_embd=16, n_head=4, n_positions=64))
    study = Study("null_ft", "null", "gpt2", (0, 0), seed=3, crop=20, on_base_samples=True)
    cfg = LMTrainingConfig(lr=1e-2, batch_size=4, max_steps=20)
    base = build_base(tmp_path / "base", "gpt2", suite.shape, ["MKTAYIAKQRQISFVKSHFS"] * 8, cfg)
    data = base_sample_data(study, suite, base, 12)
    assert data and all(isinstance(s, str) and s for s in data)
    assert data == base_sample_data(study, suite, base, 12)  # seeded: the cache key is stable
    assert base_sample_data(replace(study, on_base_samples=False), suite, base, 12) == []
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


def test_a_study_of_several_layers_extracts_trains_and_scores_each(tmp_path):
    """The composition study diffs the first layer too; its config asks for both layers'
    tokens and SAEs, validates against the schema, and carries the suite's SAE learning rate."""
    suite = full_suite()
    study = next(s for s in suite.studies if s.kind == "composition")
    assert study.sae_layers(suite.layer) == (1, 2)
    assert suite.studies[0].sae_layers(suite.layer) == (suite.layer,)
    config = validate_config(study_config(study, suite, [tmp_path / m for m in MODELS]))
    assert config["activations"]["token_layers"] == [1, 2]
    assert config["sae"]["layers"] == [1, 2]
    assert config["sae"]["lr"] == suite.sae_lr
    wanted = targets(study, suite)
    for layer in ("layer_01", "layer_02"):
        assert any(f"/{layer}/base/features.parquet" in t for t in wanted)
    # A one-layer study asks for its one layer's diffs only.
    plain = targets(suite.studies[0], suite)
    assert not any("/layer_01/" in t for t in plain)
