"""Alignment to one profile: match columns only, insertions dropped, family formats."""

from __future__ import annotations

import numpy as np
import pytest

from plmdiff.core.errors import DataError
from plmdiff.potts import align

AMINO = "ACDEFGHIKLMNPQRSTVWY"


def family(n: int, length: int, seed: int) -> list[str]:
    """Point mutants (10% of positions) of one random ancestor."""
    rng = np.random.default_rng(seed)
    ancestor = rng.choice(list(AMINO), size=length)
    out = []
    for _ in range(n):
        seq = ancestor.copy()
        mutate = rng.random(length) < 0.1
        seq[mutate] = rng.choice(list(AMINO), size=int(mutate.sum()))
        out.append("".join(seq))
    return out


def test_insertions_keep_match_columns_aligned():
    seqs = family(40, 60, seed=0)
    ids = [f"s{i}" for i in range(len(seqs))]
    hmm = align.profile_from_sequences(ids, seqs, iterations=2, max_sequences=100, seed=1)
    assert 55 <= hmm.M <= 62
    # The same sequences with an insertion of 6 residues in the middle (and one at the start)
    inserted = [s[:30] + "GGPPGG" + s[30:] for s in seqs[:10]] + ["KKK" + seqs[10]]
    plain = align.align_to_profile(hmm, ids[:11], seqs[:11])
    with_ins = align.align_to_profile(hmm, [f"i{k}" for k in range(11)], inserted)
    assert all(len(r) == hmm.M for r in plain + with_ins)
    assert with_ins == plain
    np.testing.assert_allclose(align.coverage(plain), 1.0, atol=0.05)


def test_fragments_have_low_coverage_and_are_dropped():
    seqs = family(30, 60, seed=2)
    ids = [f"s{i}" for i in range(30)]
    hmm = align.profile_from_sequences(ids, seqs, iterations=1, max_sequences=100, seed=1)
    rows = align.align_to_profile(hmm, ["full", "half"], [seqs[0], seqs[1][:30]])
    table = align.aligned_table("r1", ["full", "half"], rows, min_coverage=0.8)
    assert table["kept"].tolist() == [True, False]
    assert 0.4 < table["coverage"][1] < 0.6


def test_family_formats(tmp_path):
    rows = ["AC-DE", "ACWDE", "A--DE"]
    sto = tmp_path / "f.sto"
    sto.write_text(
        "# STOCKHOLM 1.0\n" + "".join(f"s{i} {r}\n" for i, r in enumerate(rows)) + "//\n"
    )
    afa = tmp_path / "f.afa"
    afa.write_text("".join(f">s{i}\n{r}\n" for i, r in enumerate(rows)))
    plain = tmp_path / "f.fasta"
    plain.write_text(">a desc\nMKV\nLL\n>b\nMKVL\n")
    for path in (sto, afa):
        fam = align.read_family(path)
        assert fam.aligned == rows and fam.sequences == ["ACDE", "ACWDE", "ADE"]
    fam = align.read_family(plain)
    assert fam.aligned is None and fam.ids == ["a", "b"] and fam.sequences == ["MKVLL", "MKVL"]
    with pytest.raises(DataError, match="does not exist"):
        align.read_family(tmp_path / "missing.fasta")


def test_column_window():
    assert align.column_window(["ABCDEF"], (2, 4), 6) == ["BCD"]
    assert align.column_window(["ABCDEF"], None, 6) == ["ABCDEF"]
    with pytest.raises(DataError, match=r"potts.columns = \[3, 9\]"):
        align.column_window(["ABCDEF"], (3, 9), 6)
