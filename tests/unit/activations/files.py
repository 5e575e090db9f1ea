"""Activation files for the activations tests, written through the real writers."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from plmdiff.activations.extraction import ExtractionSettings, ExtractionSummary, extract_part
from plmdiff.activations.format import pooled_column
from plmdiff.activations.writers import PooledWriter, TokenWriter
from plmdiff.config.sections import section_defaults
from plmdiff.core.fasta import SequenceEntry, write_fasta
from plmdiff.models.checkpoints import CheckpointRecord
from plmdiff.models.text import PromptFormat

META = {"embedder": "r0", "embedder_fingerprint": "abc123", "model": "r1"}


RESIDUES = "ACDEFGHIKLMNPQRSTVWY"


def pooled_rows(rng, n, layers, d):
    vectors = {
        pooled_column(p, layer): rng.normal(size=(n, d)).astype(np.float32)
        for layer in layers
        for p in ("last", "mean")
    }
    ids = [f"r1_000_{i:05d}" for i in range(n)]
    return ids, rng.integers(5, 50, size=n), vectors


def write_pooled(path, rng, n=10, layers=(0, 1, 2), d=8, dtype="float16", row_group_rows=None):
    ids, lengths, vectors = pooled_rows(rng, n, layers, d)
    with PooledWriter(
        path,
        layers=layers,
        poolings=("last", "mean"),
        d_model=d,
        dtype=dtype,
        metadata=META,
        row_group_rows=row_group_rows,
    ) as writer:
        half = n // 2
        writer.write(ids[:half], "r1", lengths[:half], {k: v[:half] for k, v in vectors.items()})
        writer.write(ids[half:], "r1", lengths[half:], {k: v[half:] for k, v in vectors.items()})
    return ids, lengths, vectors


def write_tokens(path, seqs: dict[str, str], d=4, row_group_rows=7, dtype="float32", start=0):
    """Token rows whose act[:, 0] is a unique row number (start, start+1, ...)."""
    total = sum(map(len, seqs.values()))
    act = np.zeros((total, d), dtype=np.float32)
    act[:, 0] = np.arange(start, start + total)
    act[:, 1:] = np.random.default_rng(start).normal(size=(total, d - 1))
    with TokenWriter(
        path, layer=1, d_model=d, dtype=dtype, metadata=META, row_group_rows=row_group_rows
    ) as writer:
        writer.write(list(seqs), list(seqs.values()), act)
    return act


def random_seqs(rng, n, prefix="s", lo=3, hi=30):
    return {
        f"{prefix}{i:04d}": "".join(rng.choice(list(RESIDUES), size=rng.integers(lo, hi)))
        for i in range(n)
    }


def two_dirs(tmp_path, rng):
    a = random_seqs(rng, 40, prefix="a")
    b = random_seqs(rng, 30, prefix="b")
    n_a = sum(map(len, a.values()))
    write_tokens(tmp_path / "a" / "part-00000.parquet", dict(list(a.items())[:20]), start=0)
    first = sum(len(s) for s in list(a.values())[:20])
    write_tokens(tmp_path / "a" / "part-00001.parquet", dict(list(a.items())[20:]), start=first)
    write_tokens(tmp_path / "b" / "part-00000.parquet", b, start=n_a)
    return [tmp_path / "a", tmp_path / "b"], a, b, n_a + sum(map(len, b.values()))


def pooled_part(path, rng, n, fingerprint, part):
    ids, lengths, vectors = pooled_rows(rng, n, [0, 1], 8)
    ids = [f"{path.stem}_{i}" for i in ids]
    meta = {**META, "embedder_fingerprint": fingerprint, "part": part, "n_parts": 2}
    with PooledWriter(
        path,
        layers=[0, 1],
        poolings=["last", "mean"],
        d_model=8,
        dtype="float16",
        metadata=meta,
        row_group_rows=3,
    ) as w:
        w.write(ids, "r1", lengths, vectors)
        w.close({"n_sequences": n, "n_tokens": int(lengths.sum()), "n_truncated": 0})
    return ids, vectors


def extraction_settings(**section) -> ExtractionSettings:
    """Settings from the schema's `activations` defaults with `section`'s keys changed."""
    return ExtractionSettings.from_section({**section_defaults("activations"), **section})


def extract_files(
    tmp: Path,
    checkpoint: Path,
    record: CheckpointRecord,
    entries: list[SequenceEntry],
    *,
    fmt: PromptFormat,
    model: str,
    settings: ExtractionSettings,
    part: int = 0,
) -> tuple[Path, dict[int, Path], ExtractionSummary]:
    """`entries` through extract_part (embedder r0) as the rules lay out one part: the pooled
    part and one token part per layer of settings.token_layers."""
    fasta = tmp / "in.fasta"
    write_fasta(fasta, entries)
    pooled_path = tmp / "pooled" / f"part-{part:05d}.parquet"
    token_paths = {
        layer: tmp / f"layer_{layer:02d}" / f"part-{part:05d}.parquet"
        for layer in settings.token_layers
    }
    summary = extract_part(
        fasta_path=fasta,
        record=record,
        checkpoint_dir=checkpoint,
        embedder="r0",
        model=model,
        part=part,
        fmt=fmt,
        settings=settings,
        pooled_path=pooled_path,
        token_paths=token_paths,
    )
    return pooled_path, token_paths, summary
