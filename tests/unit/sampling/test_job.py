"""plmdiff.sampling.job: the rule entry functions, on disk, from a checkpoint record."""

from __future__ import annotations

import json
import logging

import pandas as pd
import pyarrow.parquet as pq
import pytest

from plmdiff.config.sections import section_defaults
from plmdiff.core.errors import DataError
from plmdiff.core.fasta import read_fasta
from plmdiff.core.runtime import write_json
from plmdiff.models.checkpoints import CheckpointRecord, inspect_checkpoint
from plmdiff.models.zymctrl import save_checkpoint
from plmdiff.sampling.job import filter_samples, sample, sample_shard, sampling_summary
from plmdiff.testing.checkpoints import ZYMCTRL_FORMAT
from tests.unit.sampling.drawing import never_ending

PROMPT = {"format": "zymctrl", "label": "4.2.1.1"}


def sampling_section(**changes):
    return {**section_defaults("sampling"), **changes}


def filter_section(**changes):
    return {**section_defaults("filter"), **changes}


@pytest.fixture(scope="module")
def record_path(tiny_checkpoints, tmp_path_factory):
    path = tmp_path_factory.mktemp("record") / "r0.json"
    write_json(path, inspect_checkpoint(tiny_checkpoints["r0"], "r0", ZYMCTRL_FORMAT).to_json())
    return str(path)


def test_record_driven_shard(tiny_checkpoints, record_path):
    """sample_shard reads the checkpoint from the record and seeds by (seed, model, index)."""
    assert CheckpointRecord.read(record_path).path == str(tiny_checkpoints["r0"].resolve())
    section = sampling_section(n_sequences=6, shards=2, seed=3, max_length=64, batch_size=4)
    one = sample_shard(record_path, "r0", 1, section, PROMPT, device="cpu")
    assert one.column("index").to_pylist() == [3, 4, 5]
    three = sample_shard(record_path, "r0", 1, {**section, "shards": 3}, PROMPT, device="cpu")
    assert three.column("index").to_pylist() == [2, 3]
    assert one.column("sequence").to_pylist()[:1] == three.column("sequence").to_pylist()[1:]
    other = sample_shard(record_path, "r1", 1, section, PROMPT, device="cpu")
    assert other.column("sequence").to_pylist() != one.column("sequence").to_pylist()


def test_the_three_rules_write_their_outputs(record_path, tmp_path):
    """sample -> filter_samples -> sampling_summary, as the rules call them."""
    section = sampling_section(n_sequences=8, shards=1, seed=5, max_length=80, batch_size=4)
    shard = str(tmp_path / "shard_000.parquet")
    sample(
        record_path, "r0", 0, section, PROMPT, shard, device="cpu", allow_pickle=False, threads=1
    )
    table = pq.read_table(shard)
    assert table.column("index").to_pylist() == list(range(8))
    assert json.loads(table.schema.metadata[b"plmdiff"])["settings"]["max_length"] == 80

    fasta, stats = str(tmp_path / "r0.fasta"), str(tmp_path / "r0.stats.json")
    result = filter_samples(
        "r0", [shard], filter_section(min_sequences=1), "r0", [shard], fasta, stats
    )
    assert [e.seq_id for e in read_fasta(fasta)] == [s.seq_id for s in result.kept]
    counts = json.loads((tmp_path / "r0.stats.json").read_text())["counts"]
    assert counts["sampled"] == 8 and counts["kept"] == len(result.kept) >= 1

    tsv = str(tmp_path / "summary.tsv")
    sampling_summary(["r0"], [stats], [fasta], {"r0": [shard]}, tsv, [str(tmp_path / "s.png")])
    summary = pd.read_csv(tsv, sep="\t")
    assert summary["model"].tolist() == ["r0"] and summary["kept"].tolist() == [counts["kept"]]
    assert (tmp_path / "s.png").stat().st_size > 0


def test_never_ending_checkpoint_fails_its_filter_with_the_counts(r0, tmp_path, caplog):
    """On disk, through the rule's functions: every sample truncated, one clear failure, logged."""
    model, tok = r0
    directory = save_checkpoint(never_ending(model), tok, tmp_path / "never")
    record = inspect_checkpoint(directory, "stuck", ZYMCTRL_FORMAT)
    write_json(tmp_path / "stuck.json", record.to_json())
    section = sampling_section(n_sequences=5, shards=1, seed=1, max_length=30)
    shard = str(tmp_path / "shard_000.parquet")
    sample(
        str(tmp_path / "stuck.json"),
        "stuck",
        0,
        section,
        PROMPT,
        shard,
        device="cpu",
        allow_pickle=False,
        threads=None,
    )
    fasta = tmp_path / "stuck.fasta"
    with (
        caplog.at_level(logging.ERROR),
        pytest.raises(
            DataError,
            match=r"model 'stuck': 0 sequences kept.*truncated 5.*no sample emitted the end token",
        ),
    ):
        filter_samples(
            "stuck", [shard], filter_section(min_sequences=2), "stuck", [shard], str(fasta), "x"
        )
    assert "model 'stuck': 0 sequences kept" in caplog.text
    assert not fasta.exists()
