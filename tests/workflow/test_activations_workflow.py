"""The extract, extract_tokens and gather_pooled rules in a real Snakemake run on the tiny config."""

from __future__ import annotations

import json
from pathlib import Path

import duckdb
import numpy as np
import polars as pl
import pytest

from plmdiff.activations.loader import count_tokens
from plmdiff.activations.readers import load_pooled, read_metadata, token_seq_ids
from plmdiff.core.fasta import SequenceEntry, read_fasta, write_fasta
from plmdiff.testing.checkpoints import family_sequences, make_tiny_checkpoint
from tests.conftest import LOCAL_CORES, dry_run_jobs, run_snakemake, tiny_config, write_config

pytestmark = [pytest.mark.workflow, pytest.mark.slow]

RULES = ("check_checkpoint", "extract", "extract_tokens", "gather_pooled")


def write_study_fasta(workdir: Path, models: list[str]) -> dict[str, list[SequenceEntry]]:
    """FASTA files as the filter rule writes them (the extraction stage's input)."""
    seqs = family_sequences(limit=60)
    rng = np.random.default_rng(0)
    out = {}
    for k, model in enumerate(models):
        entries = [
            SequenceEntry(
                f"{model}_000_{i:05d}",
                seqs[(7 * k + i) % len(seqs)][: int(rng.integers(8, 80))],
                {"model": model},
            )
            for i in range(9 + 2 * k)
        ]
        write_fasta(workdir / "results" / "fasta" / f"{model}.fasta", entries)
        out[model] = entries
    return out


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory) -> dict[str, Path]:
    """Three untrained tiny checkpoints (different seeds): extraction needs no trained model,
    and building them takes a second instead of the shared fixture's training."""
    root = tmp_path_factory.mktemp("untrained")
    return {
        f"r{i}": make_tiny_checkpoint(root / f"output_iteration{i}", seed=i, train_steps=0)
        for i in range(3)
    }


@pytest.fixture(scope="module")
def extraction_run(checkpoints, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("activations_run")
    config = tiny_config(checkpoints, activations={"embedders": ["base", "self"], "shards": 2})
    configfile = write_config(workdir / "config.yaml", config)
    fastas = write_study_fasta(workdir, list(checkpoints))
    # The base embeds every model; 'self' is exercised on one model (each job costs a process).
    targets = [f"results/activations/r0/{m}.pooled.parquet" for m in checkpoints]
    targets.append("results/activations/self/r1.pooled.parquet")
    # The base's token parts of every model (extract_tokens: one job per layer and part).
    targets += [
        f"results/activations/r0/{m}/layer_{layer:02d}/part-{part:05d}.parquet"
        for m in checkpoints
        for layer in config["activations"]["token_layers"]
        for part in range(2)
    ]
    # Other stages' rules are left out: this test starts from FASTA files it wrote itself.
    run_snakemake(workdir, configfile, *LOCAL_CORES, "--allowed-rules", *RULES, "--", *targets)
    return workdir, configfile, fastas, targets


def test_pooled_tables_hold_every_sequence_once(extraction_run):
    workdir, _, fastas, _ = extraction_run
    records = {
        m: json.loads((workdir / "results" / "checkpoints" / f"{m}.json").read_text())
        for m in ("r0", "r1")  # the embedders: the base, and r1 embedding itself
    }
    for embedder, model in [("r0", m) for m in fastas] + [("self", "r1")]:
        entries = fastas[model]
        path = workdir / "results" / "activations" / embedder / f"{model}.pooled.parquet"
        m = load_pooled([path], 2, "mean")
        assert sorted(m.seq_id) == sorted(e.seq_id for e in entries)
        assert set(m.model) == {model}
        assert m.X.shape == (len(entries), 32) and np.isfinite(m.X).all()
        meta = read_metadata(path)
        owner = model if embedder == "self" else "r0"
        assert meta["embedder"] == embedder and meta["embedder_model"] == owner
        assert meta["embedder_fingerprint"] == records[owner]["fingerprint"]
        assert meta["n_sequences"] == len(entries) and meta["n_parts"] == 2
        assert meta["layers"] == [0, 1, 2] and "part" not in meta


def test_self_embedding_differs_from_base_embedding(extraction_run):
    workdir = extraction_run[0]
    acts = workdir / "results" / "activations"
    base = load_pooled([acts / "r0" / "r1.pooled.parquet"], 2, "mean")
    own = load_pooled([acts / "self" / "r1.pooled.parquet"], 2, "mean")
    assert list(base.seq_id) == list(own.seq_id)  # same FASTA, same deterministic order
    assert not np.allclose(base.X, own.X, atol=1e-2)
    # Layer 0 of both checkpoints differs too (other seeds), but the lengths agree.
    np.testing.assert_array_equal(base.length, own.length)


def test_token_parts_hold_every_residue(extraction_run):
    workdir, _, fastas, _ = extraction_run
    for model, entries in fastas.items():
        for layer in ("01", "02"):
            layer_dir = workdir / "results" / "activations" / "r0" / model / f"layer_{layer}"
            parts = sorted(p.name for p in layer_dir.iterdir())
            assert parts == ["part-00000.parquet", "part-00001.parquet"]
            assert count_tokens([layer_dir]) == sum(len(e.sequence) for e in entries)
            assert token_seq_ids([layer_dir]) == sorted(e.seq_id for e in entries)
            glob = str(layer_dir / "part-*.parquet")
            per_seq = dict(
                duckdb.sql(f"SELECT seq_id, count(*) FROM '{glob}' GROUP BY ALL").fetchall()
            )
            assert per_seq == {e.seq_id: len(e.sequence) for e in entries}
            frame = pl.read_parquet(glob)
            assert frame.schema["act"] == pl.Array(pl.Float16, 32)


def test_rerun_has_nothing_to_do_and_a_changed_fasta_reruns_its_model(extraction_run):
    workdir, configfile, _, targets = extraction_run
    dry = run_snakemake(workdir, configfile, "-n", "--allowed-rules", *RULES, "--", *targets)
    assert "Nothing to be done" in dry.stdout + dry.stderr, dry.stdout + dry.stderr
    fasta = workdir / "results" / "fasta" / "r1.fasta"
    entries = list(read_fasta(fasta))
    write_fasta(fasta, entries[:-1])
    dry = run_snakemake(workdir, configfile, "-n", "--allowed-rules", *RULES, "--", *targets)
    out = dry.stdout + dry.stderr
    jobs = [(rule, wc["model"]) for rule, wc in dry_run_jobs(out) if rule in RULES]
    # Only r1's jobs are stale: two embedders x (2 parts + 1 gather), and the base's token
    # parts of r1 (2 layers x 2 parts).
    expected = [("extract", "r1")] * 4 + [("gather_pooled", "r1")] * 2
    expected += [("extract_tokens", "r1")] * 4
    assert sorted(jobs) == sorted(expected), out
    write_fasta(fasta, entries)  # restore for any later test
