"""The diff of a family on the planted study: the change is found, ranked first and replicated."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from plmdiff.diff.analyses import family_analyses
from plmdiff.diff.family import diff_family
from plmdiff.diff.feature_stats import compute_feature_stats, held_out_sequences
from plmdiff.diff.stability import STABILITY_COLUMNS
from tests.unit.diff.synthetic_features import (
    PLANT,
    SEED,
    K,
    dictionary_sae,
    diff_config,
    stats_config,
)


def test_planted_change_ranks_first_small_q_and_stable(planted):
    models = list(PLANT.models)
    analyses = family_analyses("base", ["base"], models)
    cfg = diff_config(top_n=5, stability_cosine=0.7, min_firing_sequences=5)
    result = diff_family(analyses, models, [0, 1], planted["stats"], planted["decoders"], cfg)
    table = result.features
    first = table.iloc[0]
    assert first["feature"] == PLANT.planted and first["rank"] == 1
    assert first["changed"] and first["change"] == "up"
    assert first["q_value"] < 1e-3 and first["log2_fold_change"] > 1
    assert first["stability"] == 1.0 and first["change_replication"] == 1.0 and first["stable"]
    unchanged = table.set_index("feature").loc[5]
    assert not unchanged["changed"] and unchanged["stability"] == 1.0
    assert table["changed"].sum() == 1
    # the fold-1 replica is a permutation of the dictionary: recovered exactly
    match = result.matchings[("base", 1)]
    assert np.array_equal(match.partner, np.argsort(planted["perm"]))
    fold = result.stability[result.stability.comparison == "fold_replica"].iloc[0]
    assert fold["matched_a"] == 1.0 and fold["changed_reappearing"] == 1.0


def test_fine_tuned_direction_change_and_pooled_union(planted, tmp_path):
    """An ft SAE whose atom 7 is rotated: a direction change; pooled covers the union."""
    models = list(PLANT.models)
    atoms = planted["atoms"]
    moved = atoms.copy()
    moved[7] = (atoms[7] + 1.5 * atoms[8]) / np.linalg.norm(atoms[7] + 1.5 * atoms[8])
    cfg = stats_config(batch_tokens=100, top_examples=2, example_window=3)
    stats, decoders = {("base", 0): planted["stats"][("base", 0)]}, {("base", 0): atoms}
    for scheme, dic in (("ft_r1", atoms), ("ft_r2", moved), ("pooled", moved)):
        seq_ids = {m: held_out_sequences(d, K, SEED, 0, True) for m, d in planted["dirs"].items()}
        stats[(scheme, 0)] = compute_feature_stats(
            dictionary_sae(dic), planted["dirs"], cfg, base_decoder=atoms, seq_ids=seq_ids
        )
        decoders[(scheme, 0)] = dic
    assert stats[("ft_r2", 0)].stats.query("feature == 7")["dec_cos_to_base"].iloc[0] < 0.6
    (pm,) = family_analyses("per_model", ["base", "ft_r1", "ft_r2"], models)
    result = diff_family([pm], models, [0], stats, decoders, diff_config())
    row = result.features.set_index("feature").loc[7]
    assert row["changed"] and row["direction_change"] > 0.4
    assert pd.isna(row["stable"])  # one replica: stability unknown, never invented
    (pooled,) = family_analyses("pooled", ["base", "pooled"], models)
    result = diff_family(
        [pooled], models, [0], stats, decoders, diff_config(), union_decoders={0: [atoms, moved]}
    )
    union = result.stability.set_index("comparison")
    assert union.loc["pooled_vs_union", "matched_b"] == 1.0
    assert union.loc["pooled_vs_union", "matched_a"] == pytest.approx(47 / 48)
    assert union.loc["pooled_vs_union_moved", "n_a"] == 1
    assert union.loc["pooled_vs_union_moved", "matched_a"] == 1.0
    align = union.loc["scheme_alignment"]
    assert align["identity_fraction"] == 1.0
    assert list(result.stability.columns) == STABILITY_COLUMNS


def test_null_fine_tune_sets_the_direction_cut(planted):
    """A null fine-tune that moves atom 7 as far as the round's fine-tune did: not a change."""
    models = list(PLANT.models)
    atoms = planted["atoms"]
    moved = atoms.copy()
    moved[7] = (atoms[7] + 1.5 * atoms[8]) / np.linalg.norm(atoms[7] + 1.5 * atoms[8])
    cfg = stats_config(batch_tokens=100, top_examples=2, example_window=3)
    stats, decoders = {("base", 0): planted["stats"][("base", 0)]}, {("base", 0): atoms}
    seq_ids = {m: held_out_sequences(d, K, SEED, 0, True) for m, d in planted["dirs"].items()}
    for scheme in ("ft_r1", "ft_r2"):
        stats[(scheme, 0)] = compute_feature_stats(
            dictionary_sae(moved), planted["dirs"], cfg, base_decoder=atoms, seq_ids=seq_ids
        )
        decoders[(scheme, 0)] = moved
    (pm,) = family_analyses("per_model", ["base", "ft_r1", "ft_r2"], models)
    floor = diff_config(min_direction_change=0.0)
    without = diff_family([pm], models, [0], stats, decoders, floor).features.set_index("feature")
    assert without.loc[7, "change"] == "direction" and without.loc[7, "direction_cut"] == 0.0
    result = diff_family([pm], models, [0], stats, decoders, floor, null_decoders={0: moved})
    row = result.features.set_index("feature").loc[7]
    assert row["direction_cut"] == pytest.approx(row["direction_change"], rel=1e-6)
    assert not row["changed"]
    still = diff_family(
        [pm], models, [0], stats, decoders, floor, null_decoders={0: atoms}
    ).features.set_index("feature")
    assert still.loc[7, "change"] == "direction" and still.loc[7, "direction_cut"] < 1e-6
    assert set(result.fit["model"]) == set(models) and (result.fit["scheme"] == "ft_r2").all()
