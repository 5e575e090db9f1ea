"""models[].fasta: a model's own sequences replace its sampling, through the same filter."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from plmdiff.core.fasta import read_fasta
from tests.conftest import run_snakemake, tiny_config, write_config

pytestmark = pytest.mark.workflow


def given_config(tiny_checkpoints, tmp_path, spec: str) -> dict:
    config = tiny_config(
        {m: tiny_checkpoints[m] for m in ("r0", "r1")},
        filter={"min_sequences": 2, "min_length": 4},
    )
    config["models"][1]["fasta"] = spec
    return config


def test_own_fasta_replaces_sampling(tiny_checkpoints, tmp_path):
    loop = tmp_path / "dpo_loop"
    loop.mkdir()
    # The DPO loop's per-iteration files, with free-form headers, lower case, gaps and stops.
    (loop / "seq_gen_1.fasta").write_text(">a id=1 score=0.3\nmkvl-aaa*\n>b\nMKVLAAA\n")
    (loop / "seq_gen_2.fasta").write_text(">c\nMKXLAAA\n>d\nMK\n>e\nWWWWWW\n")
    config = given_config(tiny_checkpoints, tmp_path, "dpo_loop/seq_gen_*.fasta")
    configfile = write_config(tmp_path / "given.yaml", config)
    dry = run_snakemake(tmp_path, configfile, "-n", "results/fasta/r1.fasta")
    assert "import_fasta" in dry.stdout and "rule sample:" not in dry.stdout
    run_snakemake(tmp_path, configfile, "--cores", "1", "results/fasta/r1.fasta")
    entries = list(read_fasta(tmp_path / "results/fasta/r1.fasta"))
    assert [e.sequence for e in entries] == ["MKVLAAA", "WWWWWW"]
    assert [e.seq_id for e in entries] == ["r1_000_00000", "r1_000_00004"]
    stats = json.loads((tmp_path / "results/fasta/r1.stats.json").read_text())
    counts = stats["counts"]
    assert (counts["kept"], counts["duplicate"], counts["invalid"], counts["too_short"]) == (
        2,
        1,
        1,
        1,
    )
    shard = pd.read_parquet(tmp_path / "results/samples/r1/shard_000.parquet")
    assert shard["source_id"].tolist() == ["a", "b", "c", "d", "e"]


def test_a_glob_that_matches_nothing_stops_the_dag(tiny_checkpoints, tmp_path):
    config = given_config(tiny_checkpoints, tmp_path, "nowhere/*.fasta")
    configfile = write_config(tmp_path / "bad.yaml", config)
    proc = run_snakemake(tmp_path, configfile, "-n", check=False)
    assert proc.returncode != 0
    assert "models[1].fasta = 'nowhere/*.fasta' matches no file" in proc.stderr + proc.stdout
