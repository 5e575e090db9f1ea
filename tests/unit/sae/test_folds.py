"""Sequence folds: disjoint, covering, stable, independent of which other sequences exist."""

from __future__ import annotations

import pytest

from plmdiff.sae.folds import fold_split, sequence_fold

IDS = [f"r{m}_{s:03d}_{i:05d}" for m in range(3) for s in range(2) for i in range(200)]


def test_folds_are_disjoint_by_sequence_and_cover_all():
    k = 5
    held_out_sets = []
    for fold in range(k):
        train, held_out = fold_split(IDS, k, seed=3, fold=fold)
        assert set(train).isdisjoint(held_out)
        assert sorted(train + held_out) == sorted(IDS)
        held_out_sets.append(set(held_out))
    # Every sequence is held out by exactly one replica.
    union = set().union(*held_out_sets)
    assert union == set(IDS)
    assert sum(len(h) for h in held_out_sets) == len(IDS)
    # Hash assignment: folds are near, not exactly, equal (1200 ids, expected 240 each).
    assert all(150 < len(h) < 330 for h in held_out_sets)


def test_assignment_depends_only_on_the_id_k_and_seed():
    subset = IDS[::7]
    for seq_id in subset:
        assert sequence_fold(seq_id, 4, 11) == sequence_fold(seq_id, 4, 11)
    full = {s: sequence_fold(s, 4, 11) for s in IDS}
    _, held_subset = fold_split(list(reversed(subset)), 4, 11, 2)
    assert set(held_subset) == {s for s in subset if full[s] == 2}
    # Order is kept, so callers can rely on it.
    assert held_subset == [s for s in reversed(subset) if full[s] == 2]
    # Another seed moves sequences.
    other = {s: sequence_fold(s, 4, 12) for s in IDS}
    assert sum(full[s] != other[s] for s in IDS) > len(IDS) // 2


def test_k1_means_no_held_out_data():
    train, held_out = fold_split(IDS, 1, seed=0, fold=0)
    assert train == IDS and held_out == []


@pytest.mark.parametrize(("k", "fold"), [(0, 0), (3, 3), (3, -1)])
def test_bad_k_or_fold_is_refused(k, fold):
    with pytest.raises(ValueError, match=r"fold|k ="):
        fold_split(IDS, k, seed=0, fold=fold)
