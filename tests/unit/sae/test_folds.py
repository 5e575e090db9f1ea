"""Sequence folds: disjoint, covering, whole clusters per fold, read back from one table."""

from __future__ import annotations

from collections import Counter

import pytest

from plmdiff.config.paths import BASE_SCHEME, NULL_SCHEME, finetune_scheme
from plmdiff.core.errors import DataError
from plmdiff.sae.folds import (
    cluster_folds,
    fold_split,
    read_fold_table,
    scheme_split,
    sequence_fold,
    write_fold_table,
    write_model_fold_table,
)

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


def _clusters() -> dict[str, str]:
    """Near-duplicate families of very different sizes (a DPO round collapsing onto a few)."""
    sizes = [300, 120, 60, *[5] * 40, *[1] * 300]
    out = {}
    for c, n in enumerate(sizes):
        for i in range(n):
            out[f"seq_{c}_{i}"] = f"cluster_{c}"
    return out


@pytest.mark.parametrize("k", [2, 3, 5])
def test_no_cluster_is_split_across_folds_and_folds_are_balanced(k):
    cluster_of = _clusters()
    fold_of = cluster_folds(cluster_of, k, seed=1)
    by_cluster: dict[str, set[int]] = {}
    for seq_id, cluster in cluster_of.items():
        by_cluster.setdefault(cluster, set()).add(fold_of[seq_id])
    assert all(len(f) == 1 for f in by_cluster.values())
    sizes = Counter(fold_of.values())
    assert set(sizes) == set(range(k))
    # Largest first, then to the emptiest fold: with 300 singletons left to even out, every
    # fold that no oversized cluster fills alone ends within one sequence of the others.
    ideal = len(cluster_of) / k
    big = {fold_of[f"seq_{c}_0"] for c, n in enumerate([300, 120, 60]) if n > ideal}
    rest = [n for f, n in sizes.items() if f not in big]
    assert max(rest) - min(rest) <= 1
    held = [set(fold_split(list(cluster_of), k, 1, f, fold_of)[1]) for f in range(k)]
    for f, h in enumerate(held):
        assert {cluster_of[s] for s in h}.isdisjoint(
            {cluster_of[s] for g, other in enumerate(held) if g != f for s in other}
        )


def test_fold_table_round_trip_and_sequences_outside_it(tmp_path):
    cluster_of = _clusters()
    table = write_fold_table(cluster_of, tmp_path / "folds.tsv", 3, 0)
    assert list(table.columns) == ["seq_id", "cluster", "fold"]
    fold_of = read_fold_table(tmp_path / "folds.tsv", 3)
    assert fold_of == cluster_folds(cluster_of, 3, 0)
    # An ID the table lacks is its own cluster, hashed as before.
    extra = "natural_001"
    train, held = fold_split([extra], 3, 0, sequence_fold(extra, 3, 0), fold_of)
    assert held == [extra] and train == []
    with pytest.raises(DataError, match=r"folds outside 0\.\.1"):
        read_fold_table(tmp_path / "folds.tsv", 2)
    with pytest.raises(DataError, match="does not exist"):
        read_fold_table(tmp_path / "none.tsv", 3)


def test_the_null_fine_tune_trains_on_the_held_out_fold():
    fold_of = cluster_folds(_clusters(), 3, 0)
    ids = list(fold_of)
    train, held = fold_split(ids, 3, 0, 1, fold_of)
    assert scheme_split(BASE_SCHEME, ids, 3, 0, 1, fold_of) == (train, held)
    assert scheme_split(finetune_scheme("r1"), ids, 3, 0, 1, fold_of) == (train, held)
    assert scheme_split(NULL_SCHEME, ids, 3, 0, 1, fold_of) == (held, train)
    assert scheme_split(NULL_SCHEME, ids, 1, 0, 0) == (ids, [])


def test_a_model_fold_table_clusters_its_fasta_and_tables_merge(tmp_path):
    """sae_folds clusters one model's FASTA (near-duplicates in one fold); a job reads the
    tables of several models as one mapping."""
    fasta = tmp_path / "r0.fasta"
    base = "MKTAYIAKQRQISFVKSHFSRQLEERLGLIEVQAPILSRVGDGTQDNLSGAEK"
    records = {f"r0_{i:03d}": base[i % 7 :] + base[: i % 7] for i in range(12)}
    records["r0_dup"] = records["r0_000"]
    fasta.write_text("".join(f">{k}\n{v}\n" for k, v in records.items()))
    section = {"cluster_method": "exact", "cluster_identity": 0.9, "cluster_coverage": 0.8}
    table = write_model_fold_table(fasta, tmp_path / "r0.tsv", section, 3, 0)
    assert set(table["seq_id"]) == set(records)
    fold_of = read_fold_table(tmp_path / "r0.tsv", 3)
    assert fold_of["r0_dup"] == fold_of["r0_000"]
    write_fold_table({"r1_000": "r1_000"}, tmp_path / "r1.tsv", 3, 0)
    both = read_fold_table([tmp_path / "r0.tsv", tmp_path / "r1.tsv"], 3)
    assert set(both) == set(records) | {"r1_000"}
