"""Extraction with a BPE tokenizer: one token row per residue-bearing token with its residue
span, pooling over residues, and truncation in tokens."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from plmdiff.activations.readers import iter_token_batches, load_pooled
from plmdiff.core.fasta import SequenceEntry
from plmdiff.models.checkpoints import (
    CheckpointRecord,
    inspect_checkpoint,
    load_model,
    load_tokenizer,
)
from plmdiff.models.text import encode_sequences
from plmdiff.testing.checkpoints import PLAIN_FORMAT, family_sequences, make_tiny_bpe_checkpoint
from tests.unit.activations.files import extract_files, extraction_settings

N_LAYER = 2
N_POSITIONS = 64


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    return make_tiny_bpe_checkpoint(
        tmp_path_factory.mktemp("bpe") / "ckpt",
        n_layer=N_LAYER,
        n_positions=N_POSITIONS,
        train_steps=0,
    )


@pytest.fixture(scope="module")
def record(checkpoint) -> CheckpointRecord:
    return inspect_checkpoint(checkpoint, "r0", PLAIN_FORMAT)


@pytest.fixture(scope="module")
def entries() -> list[SequenceEntry]:
    # Short enough for the context in tokens, some longer than it in residues.
    return [
        SequenceEntry(f"r0_000_{i:05d}", s[: 20 + 7 * i])
        for i, s in enumerate(family_sequences(limit=6))
    ]


def run_extract(tmp: Path, checkpoint: Path, record, entries, **settings) -> tuple[Path, Path]:
    s = extraction_settings(
        **{"token_layers": [1], "dtype": "float32", "batch_tokens": 120, "shards": 1, **settings}
    )
    pooled_path, token_paths, _ = extract_files(
        tmp, checkpoint, record, entries, fmt=PLAIN_FORMAT, model="r0", settings=s
    )
    return pooled_path, token_paths[1]


def reference(checkpoint: Path, record, entries) -> dict[str, tuple[list[np.ndarray], np.ndarray]]:
    """Per sequence: each layer's vectors at its residue tokens, and the tokens' spans."""
    model = load_model(checkpoint)
    encoded = encode_sequences(
        load_tokenizer(checkpoint), PLAIN_FORMAT, record.special_ids, [e.sequence for e in entries]
    )
    out = {}
    for entry, enc in zip(entries, encoded, strict=True):
        with torch.no_grad():
            hs = model(torch.tensor([enc.ids[: enc.stop]]), output_hidden_states=True).hidden_states
        out[entry.seq_id] = ([h[0, enc.start : enc.stop].numpy() for h in hs], enc.spans)
    return out


def test_token_rows_carry_residue_spans_and_activations(tmp_path, checkpoint, record, entries):
    _, token_path = run_extract(tmp_path, checkpoint, record, entries)
    ref = reference(checkpoint, record, entries)
    (batch,) = iter_token_batches([token_path.parent], batch_rows=100_000)
    multi = 0
    for entry in entries:
        mine = batch.seq_id == entry.seq_id
        layers, spans = ref[entry.seq_id]
        assert mine.sum() == len(spans) < len(entry.sequence)
        assert np.array_equal(np.stack([batch.pos[mine], batch.pos_end[mine]], 1), spans)
        assert [len(r) for r in batch.residue[mine]] == list(spans[:, 1] - spans[:, 0])
        assert "".join(batch.residue[mine]) == entry.sequence
        np.testing.assert_allclose(batch.act[mine], layers[1], rtol=1e-4, atol=1e-5)
        multi += int((spans[:, 1] - spans[:, 0] > 1).sum())
    assert multi > 0
    schema = pq.read_schema(token_path)
    assert schema.names == ["seq_id", "pos", "pos_end", "residue", "act"]


def test_mean_pools_over_residues_last_is_the_last_token(tmp_path, checkpoint, record, entries):
    pooled_path, _ = run_extract(tmp_path, checkpoint, record, entries)
    ref = reference(checkpoint, record, entries)
    for layer in range(N_LAYER):  # layer L is taken before the final norm, not hidden_states
        mean = load_pooled([pooled_path], layer, "mean")
        last = load_pooled([pooled_path], layer, "last")
        for seq_id, x_mean, x_last in zip(mean.seq_id, mean.X, last.X, strict=True):
            vectors, spans = ref[seq_id]
            widths = (spans[:, 1] - spans[:, 0]).astype(np.float64)
            expected = (widths[:, None] * vectors[layer]).sum(0) / widths.sum()
            np.testing.assert_allclose(x_mean, expected, rtol=1e-4, atol=1e-5)
            np.testing.assert_allclose(x_last, vectors[layer][-1], rtol=1e-4, atol=1e-5)


def test_truncation_counts_tokens_and_ends_on_a_token_boundary(tmp_path, checkpoint, record):
    seq = "".join(family_sequences(limit=3))[:400]
    entries = [SequenceEntry("r0_000_00000", seq)]
    pooled_path, token_path = run_extract(tmp_path, checkpoint, record, entries, truncate=True)
    (batch,) = iter_token_batches([token_path.parent], batch_rows=100_000)
    assert len(batch) == N_POSITIONS - 1  # the context after BOS, in tokens
    embedded = int(batch.pos_end[-1])
    assert "".join(batch.residue) == seq[:embedded] and embedded > N_POSITIONS
    table = pq.read_table(pooled_path, columns=["length", "embedded_length"])
    assert table.to_pylist() == [{"length": 400, "embedded_length": embedded}]
