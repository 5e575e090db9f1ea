"""Given FASTA in place of sampling: lenient headers, unique IDs, the residue rule, bad files."""

from __future__ import annotations

import pyarrow.parquet as pq
import pytest

from plmdiff.config.sections import section_defaults
from plmdiff.core.errors import DataError
from plmdiff.core.fasta import resolve_fasta_sources
from plmdiff.sampling.filtering import (
    FilterSettings,
    classify_samples,
    length_window,
    read_samples,
)
from plmdiff.sampling.given import given_samples_table, normalise_residues, read_given_sequences
from plmdiff.sampling.io import write_samples


def test_residue_rule():
    assert normalise_residues("mkv la\nAA*") == "MKVLAAA"
    assert normalise_residues("MK--V..L") == "MKVL"
    # Non-canonical letters stay, so the filter counts the sequence as invalid.
    assert normalise_residues("MKXB*Z") == "MKXB*Z"
    assert normalise_residues("**") == "*"
    assert normalise_residues("") == ""


def test_ids_are_unique_across_files_and_keep_the_source(tmp_path):
    a = tmp_path / "iteration1.fasta"
    b = tmp_path / "iteration10.fasta"
    c = tmp_path / "iteration2.fasta"
    a.write_text(">seq1 some description\nMKV\n>seq1 duplicate header\nmkl*\n")
    b.write_text(">x\nAAA\n")
    c.write_text(">only-an-id\nLL-L\n")
    files = resolve_fasta_sources(str(tmp_path / "iteration*.fasta"), "models[1].fasta")
    assert [f.name for f in files] == ["iteration1.fasta", "iteration2.fasta", "iteration10.fasta"]
    given = read_given_sequences("r1", files)
    assert [g.source_id for g in given] == ["seq1", "seq1", "only-an-id", "x"]
    assert [g.sequence for g in given] == ["MKV", "MKL", "LLL", "AAA"]
    assert [g.index for g in given] == [0, 1, 2, 3]


def test_relative_spec_is_resolved_against_the_base_dir(tmp_path):
    (tmp_path / "r.fasta").write_text(">a\nMK\n")
    assert resolve_fasta_sources("r.fasta", "k", tmp_path) == [tmp_path / "r.fasta"]


def test_bad_inputs_give_one_clear_line(tmp_path):
    with pytest.raises(DataError, match=r"models\[2\].fasta = 'nope/\*.fa' matches no file"):
        resolve_fasta_sources("nope/*.fa", "models[2].fasta", tmp_path)
    with pytest.raises(DataError, match=r"models\[2\].fasta = 'missing.fa' does not exist"):
        resolve_fasta_sources("missing.fa", "models[2].fasta", tmp_path)
    empty = tmp_path / "empty.fasta"
    empty.write_text("just text, no header\n")
    with pytest.raises(DataError, match=r"empty.fasta of model 'r1' holds no record"):
        read_given_sequences("r1", [empty])


def test_given_shard_is_read_by_the_filter_like_a_sampled_one(tmp_path):
    fasta = tmp_path / "own.fasta"
    fasta.write_text(">a\nMKVLA\n>b\nmkvla*\n>c\nMKXLA\n>d\nMK\n")
    given = read_given_sequences("r1", [fasta])
    shard = tmp_path / "shard_000.parquet"
    write_samples(shard, given_samples_table("r1", given, {"source": "given"}))
    samples = read_samples([str(shard)])
    assert [s.seq_id for s in samples] == [
        "r1_000_00000",
        "r1_000_00001",
        "r1_000_00002",
        "r1_000_00003",
    ]
    assert all(s.ended for s in samples)
    settings = FilterSettings.from_section({**section_defaults("filter"), "min_length": 3})
    window = length_window(settings, None, None)
    result = classify_samples(samples, window, dedupe=True)
    assert result.counts["kept"] == 1  # a; b duplicates it, c is invalid, d too short
    assert result.counts["duplicate"] == 1 and result.counts["invalid"] == 1
    assert result.counts["too_short"] == 1
    assert pq.read_table(shard, columns=["source_id"]).column(0).to_pylist() == ["a", "b", "c", "d"]
