"""sae.base.sequences: read, normalised and checked; bad input names the key and the file."""

from __future__ import annotations

import json

import pytest

from plmdiff.config.paths import SAE_BASE_SOURCE
from plmdiff.core.errors import DataError
from plmdiff.core.fasta import read_fasta
from plmdiff.sae.job import prepare_base_sequences
from plmdiff.sae.sequences import read_base_sequences


def _fasta(path, text):
    path.write_text(text)
    return path


def test_sequences_are_normalised_numbered_and_non_canonical_ones_dropped(tmp_path):
    a = _fasta(tmp_path / "a.fasta", ">P1 family\nmkv-LA.*\n>P2\nMKXLA\n>P3\nMSTQ\n")
    b = _fasta(tmp_path / "b.fasta", ">Q1\nWYRE\n>Q2\n\n")
    base = read_base_sequences([a, b])
    assert [(e.seq_id, e.sequence, e.fields["source"]) for e in base.entries] == [
        (f"{SAE_BASE_SOURCE}_000_00000", "MKVLA", "P1"),
        (f"{SAE_BASE_SOURCE}_000_00001", "MSTQ", "P3"),
        (f"{SAE_BASE_SOURCE}_000_00002", "WYRE", "Q1"),
    ]
    assert (base.n_records, base.n_non_canonical, base.n_empty) == (5, 1, 1)


def test_the_rule_writes_the_fasta_and_its_counts(tmp_path):
    src = _fasta(tmp_path / "family.fasta", ">P1\nMKVLA\n>P2\nMKBLA\n")
    n = prepare_base_sequences([str(src)], tmp_path / "out.fasta", tmp_path / "out.stats.json")
    assert n == 1
    assert [e.sequence for e in read_fasta(tmp_path / "out.fasta")] == ["MKVLA"]
    stats = json.loads((tmp_path / "out.stats.json").read_text())
    assert stats["kept"] == 1 and stats["dropped_non_canonical"] == 1
    assert stats["key"] == "sae.base.sequences" and stats["files"] == [str(src)]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "holds no FASTA record"),
        ("just some text\n", "holds no FASTA record"),
        (">n1\nACGTACGTTGCA\n>n2\nACGUUN\n", "holds nucleotide sequences"),
        (">p1\nMKV1LA\n", "record p1 holds '1', which is no amino-acid letter"),
        (">p1\nXXXX\n>p2\nBZ\n", "no protein sequence left"),
    ],
    ids=["empty", "no header", "nucleotides", "digit", "nothing canonical"],
)
def test_bad_input_names_the_key_and_the_file(tmp_path, text, message):
    path = _fasta(tmp_path / "family.fasta", text)
    with pytest.raises(DataError) as error:
        read_base_sequences([path])
    assert str(error.value).startswith("sae.base.sequences: ")
    assert str(path) in str(error.value) and message in str(error.value)
