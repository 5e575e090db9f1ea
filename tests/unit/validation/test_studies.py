"""Studies of the validation suite: a base of a study's own, the fine-tuned null, and a motif
planted at homologous profile columns."""

from __future__ import annotations

import random
from dataclasses import replace

import pytest

from plmdiff.config.schema import validate_config
from plmdiff.models.lm_training import LMTrainingConfig
from plmdiff.potts.align import align_to_profile, match_columns
from plmdiff.testing.checkpoints import family_sequences
from validation import potts_scoring
from validation.checkpoints import ModelShape, build_base, build_rounds
from validation.run import MODELS, base_sample_data, study_config, targets, training_configs
from validation.studies import (
    MOTIF_SITE_STUDY,
    Study,
    ci_suite,
    family_profile,
    family_profile_rows,
    full_suite,
    plant_at_column,
    site_start,
)


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
    assert config["sampling"]["n_sequences"] == suite.n_sequences
    site = validate_config(study_config(MOTIF_SITE_STUDY, suite, [tmp_path / m for m in MODELS]))
    assert site["sampling"]["n_sequences"] == MOTIF_SITE_STUDY.n_sequences != suite.n_sequences
    # A one-layer study asks for its one layer's diffs only.
    plain = targets(suite.studies[0], suite)
    assert not any("/layer_01/" in t for t in plain)


def test_a_site_is_the_run_of_residues_aligned_to_its_columns():
    """Row of 'MKABQDEFG' trimmed to its aligned part: match columns -, A, B, D, -, E, F with
    the insertion q after B. Columns are 1-based, residues 0-based."""
    row, seq = "-ABqD-EF", "MKABQDEFG"
    assert site_start(row, seq, 2, 2) == 2  # A, B
    assert site_start(row, seq, 6, 2) == 6  # E, F
    assert site_start(row, seq, 3, 2) is None  # the insertion Q lies between B and D
    assert site_start(row, seq, 4, 2) is None  # column 5 is a deletion
    assert site_start(row, seq, 7, 2) is None  # past the last column
    assert site_start("----", "MK", 1, 2) is None  # nothing aligned
    with pytest.raises(ValueError, match="not an alignment"):
        site_start("-WW", seq, 2, 2)


def test_too_few_eligible_sequences_for_the_share_is_one_clear_error():
    rows, seqs = ["AB-", "A-B", "ABD"], ["AB", "AB", "ABD"]
    assert plant_at_column(seqs, rows, "WC", 0.67, 0, 1, "tiny") == ["WC", "AB", "WCD"]
    with pytest.raises(ValueError, match=r"study tiny: motif column 2: 1 of 3 .* 2 needed"):
        plant_at_column(seqs, rows, "WC", 0.67, 0, 2, "tiny")
    with pytest.raises(ValueError, match=r"accepted: 1 \.\. 2"):
        plant_at_column(seqs, rows, "WC", 0.3, 0, 3, "tiny")


def test_column_planting_hits_one_homologous_residue_through_the_aligner():
    """A tiny family with a known answer: one core behind N-terminal tails of 0-6 residues
    (so no fixed residue is a fixed column), point mutations, and one sequence with 3 residues
    inserted in the core. Planted at a profile column, the motif overwrites the same core
    residues in every planted sequence, and never the one with the insertion inside the site."""
    rng = random.Random(0)
    core = "MSTLKELIERAGKVAEAFNSTDPRVLAELLHPDAVF"
    family, tails = [], []
    for i in range(40):
        tail = "".join(rng.choice("GSPQ") for _ in range(i % 7))
        body = "".join(rng.choice("ILV") if rng.random() < 0.05 else c for c in core)
        family.append(tail + body)
        tails.append(len(tail))
    family[0] = family[0][: tails[0] + 16] + "GGG" + family[0][tails[0] + 16 :]
    rows = family_profile_rows(family)
    width = len(match_columns(rows[0]))
    column = next(
        c for c in range(1, width) if site_start(rows[1], family[1], c, 4) == tails[1] + 14
    )
    planted = plant_at_column(family, rows, "WCYM", 0.7, 1, column, "tiny")
    changed = [i for i, (a, b) in enumerate(zip(family, planted, strict=True)) if a != b]
    assert len(changed) == 28 and 0 not in changed
    for i in changed:
        assert planted[i][tails[i] + 14 : tails[i] + 18] == "WCYM"
        assert planted[i][: tails[i] + 14] == family[i][: tails[i] + 14]


def test_the_site_study_plants_at_the_columns_the_workflow_reports():
    """motif_site_gpt2 on the family: each round plants round(rate x all) crops, and aligned
    back to the family profile (the workflow's, potts.family) nearly every occurrence of the
    motif sits at its columns."""
    study = MOTIF_SITE_STUDY
    assert study.potts_family and study.motif_column is not None
    crops = [s[: study.crop] for s in family_sequences()]
    rounds = study.round_data(family_sequences())
    for rate, data in zip(study.rates, rounds, strict=True):
        assert data is not None
        assert sum(a != b for a, b in zip(crops, data, strict=True)) == round(rate * len(crops))
    last = rounds[-1]
    assert last is not None
    ids = potts_scoring.family_ids(len(crops))
    aligned = align_to_profile(family_profile(crops), ids, last)
    columns, agree, total = potts_scoring.motif_columns(aligned, study.motif)
    want = tuple(range(study.motif_column, study.motif_column + len(study.motif)))
    assert columns == want and agree >= 0.95 * total and total >= 0.6 * len(crops)


def test_a_column_site_needs_the_family_profile():
    with pytest.raises(ValueError, match="motif_column needs potts_family"):
        Study("m", "motif", "gpt2", (0.5,), motif="WCYMW", motif_column=18)
    with pytest.raises(ValueError, match="motif_column needs potts_family"):
        replace(MOTIF_SITE_STUDY, motif_start=30)
