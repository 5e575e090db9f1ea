"""The sampling rules run for real on the tiny config: reproducible FASTA, shard-count invariance."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from plmdiff.core.fasta import read_fasta, sequence_id
from plmdiff.sampling.filtering import OUTCOMES
from plmdiff.sampling.io import shard_indices
from tests.conftest import run_snakemake, tiny_config, write_config

pytestmark = [pytest.mark.workflow, pytest.mark.slow]

MODELS = ("r0", "r2")
N = 16  # sequences per model: each of the three runs samples every model again
SUMMARY = "results/sampling/summary.tsv"


def targets(models=MODELS) -> list[str]:
    return [f"results/fasta/{m}.fasta" for m in models] + [SUMMARY]


@pytest.fixture(scope="module")
def runs(tiny_checkpoints, tmp_path_factory):
    """One directory, three runs: 2 shards, 3 shards, 2 shards again (params trigger reruns)."""
    workdir = tmp_path_factory.mktemp("sampling_run")
    config = tiny_config(
        {m: tiny_checkpoints[m] for m in MODELS},
        sampling={"n_sequences": N},
        filter={
            "min_sequences": 3,
            "relative_to_base": {"lower_quantile": 0.0, "upper_quantile": 1.0},
        },
    )
    outputs = {}
    for label, shards in [("two", 2), ("three", 3), ("two_again", 2)]:
        config["sampling"]["shards"] = shards
        configfile = write_config(workdir / f"{label}.yaml", config)
        # One thread per sampling job: two jobs side by side beat one with two threads on tiny models.
        run_snakemake(workdir, configfile, "--cores", "2", *targets(), "--set-threads", "sample=1")
        outputs[label] = {
            m: {
                "fasta": (workdir / f"results/fasta/{m}.fasta").read_bytes(),
                "entries": list(read_fasta(workdir / f"results/fasta/{m}.fasta")),
                "stats": json.loads((workdir / f"results/fasta/{m}.stats.json").read_text()),
            }
            for m in MODELS
        }
    return workdir, outputs


def test_same_config_gives_byte_identical_fasta(runs):
    _, out = runs
    for m in MODELS:
        assert out["two"][m]["fasta"] == out["two_again"][m]["fasta"]
        assert out["two"][m]["stats"] == out["two_again"][m]["stats"]
        assert out["two"][m]["entries"], f"{m} kept nothing"


def test_shard_count_does_not_change_the_sequences(runs):
    _, out = runs
    for m in MODELS:
        two, three = out["two"][m]["entries"], out["three"][m]["entries"]
        assert [(e.sequence, e.fields) for e in two] == [(e.sequence, e.fields) for e in three]
        # same global index, another shard number in the ID
        assert [e.seq_id[-5:] for e in two] == [e.seq_id[-5:] for e in three]
        for entries, shards in ((two, 2), (three, 3)):
            owner = {i: s for s in range(shards) for i in shard_indices(N, shards, s)}
            assert all(
                e.seq_id == sequence_id(m, owner[int(e.seq_id[-5:])], int(e.seq_id[-5:]))
                for e in entries
            )


def test_outputs_are_complete_and_consistent(runs):
    import duckdb
    import polars as pl

    workdir, out = runs
    for m in MODELS:
        stats = out["two_again"][m]["stats"]
        counts = stats["counts"]
        assert counts["sampled"] == N == sum(counts[o] for o in OUTCOMES)
        assert counts["kept"] == len(out["two_again"][m]["entries"])
        for e in out["two_again"][m]["entries"]:
            assert e.fields["model"] == m and int(e.fields["len"]) == len(e.sequence)
            assert stats["window"]["low"] <= len(e.sequence) <= stats["window"]["high"]
        shards = sorted(
            str(p) for p in (workdir / "results/samples" / m).glob("shard_00[01].parquet")
        )
        n = duckdb.sql(f"select count(*), sum(ended::int) from read_parquet({shards})").fetchall()
        assert n == [(N, N - counts["truncated"])]
        frame = pl.read_parquet(shards)
        assert frame["index"].sort().to_list() == list(range(N))
    # the base model's window comes from its own valid samples (quantiles 0 and 1: its range)
    base = out["two_again"]["r0"]["stats"]
    assert base["counts"]["too_short"] == base["counts"]["too_long"] == 0
    assert base["window"]["base_model"] == "r0"

    table = pd.read_csv(workdir / SUMMARY, sep="\t")
    assert list(table["model"]) == list(MODELS)
    assert list(table["kept"]) == [out["two_again"][m]["stats"]["counts"]["kept"] for m in MODELS]
    for suffix in ("png", "svg"):
        assert (workdir / f"results/sampling/summary.{suffix}").stat().st_size > 1000
    log = (workdir / "logs/sample/r0/shard_000.log").read_text()
    assert "tokens/s" in log and "device: cpu" in log
    assert not list(Path(workdir, "results").rglob(".*.tmp-*"))  # atomic writes left no debris
