"""Paired token shards: every checkpoint embeds the shared sequences into parts that align token
by token; the paired readers keep each token's rows together."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from plmdiff.activations.readers import iter_token_batches
from plmdiff.config.sections import section_defaults
from plmdiff.core.errors import DataError
from plmdiff.core.fasta import SequenceEntry, read_fasta, write_fasta
from plmdiff.core.runtime import write_json
from plmdiff.model_diff.job import model_diff_extract, model_diff_sequences, open_layer
from plmdiff.model_diff.paired import GIVEN_PREFIX, iter_paired, iter_paired_rows, split_ids
from plmdiff.models.checkpoints import inspect_checkpoint
from plmdiff.testing.checkpoints import ZYMCTRL_FORMAT, family_sequences

PROMPT = {"format": "zymctrl", "label": "4.2.1.1"}
LAYERS = [1, 2]


def extract(root, checkpoints, model, fasta, part, shards=2):
    record = root / f"{model}.json"
    write_json(record, inspect_checkpoint(checkpoints[model], model, ZYMCTRL_FORMAT).to_json())
    out = root / model
    return model_diff_extract(
        fasta_path=fasta,
        record_path=record,
        checkpoint_dir=checkpoints[model],
        model=model,
        part=part,
        prompt_section=PROMPT,
        activations_section={**section_defaults("activations"), "rows_per_file": 16},
        model_diff_section={**section_defaults("model_diff"), "shards": shards},
        layers=LAYERS,
        pooled_path=out / f"pooled/part-{part:05d}.parquet",
        token_paths=[out / f"layer_{layer:02d}/part-{part:05d}.parquet" for layer in LAYERS],
        device="cpu",
        allow_pickle=False,
        threads=1,
    )


@pytest.fixture(scope="module")
def shared(tiny_checkpoints, tmp_path_factory):
    root = tmp_path_factory.mktemp("paired")
    seqs = [s[: 12 + 2 * i] for i, s in enumerate(family_sequences(limit=8))]
    base = root / "base.fasta"
    write_fasta(base, [SequenceEntry(f"r0_000_{i:05d}", s) for i, s in enumerate(seqs[:6])])
    extra = root / "family.fasta"
    write_fasta(extra, [SequenceEntry(f"fam{i}", s.lower()) for i, s in enumerate(seqs[6:])])
    fasta = root / "shared.fasta"
    section = {**section_defaults("model_diff"), "max_sequences": 5}
    assert model_diff_sequences(base, extra, section, fasta) == 7
    for model in ("r0", "r1"):
        for part in (0, 1):
            extract(root, tiny_checkpoints, model, fasta, part)
    return root, fasta


def test_shared_set_takes_the_first_base_samples_and_the_given_family(shared):
    _, fasta = shared
    entries = list(read_fasta(fasta))
    ids = [e.seq_id for e in entries]
    assert ids[:5] == [f"r0_000_{i:05d}" for i in range(5)]
    assert ids[5:] == [f"{GIVEN_PREFIX}fam0", f"{GIVEN_PREFIX}fam1"]
    assert all(e.sequence.isupper() for e in entries)


def test_shards_align_token_by_token_across_models(shared):
    root, fasta = shared
    for layer in LAYERS:
        dirs = {m: root / m / f"layer_{layer:02d}" for m in ("r0", "r1")}
        paired = open_layer(dirs)
        base_rows = list(iter_token_batches([dirs["r0"]], batch_rows=10_000))
        round_rows = list(iter_token_batches([dirs["r1"]], batch_rows=10_000))
        rows = list(iter_paired_rows(paired))
        seq = np.concatenate([r.seq_id for r in rows])
        pos = np.concatenate([r.pos for r in rows])
        act = np.concatenate([r.act for r in rows])
        assert (seq == base_rows[0].seq_id).all() and (seq == round_rows[0].seq_id).all()
        assert (pos == base_rows[0].pos).all() and (pos == round_rows[0].pos).all()
        np.testing.assert_array_equal(act[:, 0], base_rows[0].act)
        np.testing.assert_array_equal(act[:, 1], round_rows[0].act)
        # Every residue of every shared sequence, once.
        lengths = {e.seq_id: len(e.sequence) for e in read_fasta(fasta)}
        assert len(seq) == sum(lengths.values())
        # Different checkpoints: the activations differ, the tokens do not.
        assert not np.allclose(act[:, 0], act[:, 1])


def test_shuffled_paired_batches_keep_each_tokens_rows_together(shared):
    root, fasta = shared
    dirs = {m: root / m / "layer_02" for m in ("r0", "r1")}
    paired = open_layer(dirs)
    rows = list(iter_paired_rows(paired))
    act = torch.from_numpy(np.concatenate([r.act for r in rows]))
    ids = [e.seq_id for e in read_fasta(fasta)]
    train, held = split_ids(ids, 0, 0.3)
    assert train and held and not set(train) & set(held)
    batches = list(iter_paired(paired, 8, shuffle_buffer=20, seed=1, read_threads=1))
    got = torch.cat(batches)
    assert got.shape == act.shape
    # The same multiset of paired rows: each base row still sits next to its own round row.
    key = lambda t: sorted(map(tuple, t.reshape(len(t), -1)[:, ::7].tolist()))  # noqa: E731
    assert key(got) == key(act)
    seq = np.concatenate([r.seq_id for r in rows])
    kept = list(iter_paired(paired, 8, shuffle_buffer=20, seed=1, seq_ids=held, read_threads=1))
    assert sum(len(b) for b in kept) == int(np.isin(seq, held).sum())


def test_a_model_that_embedded_other_tokens_does_not_align(shared, tiny_checkpoints, tmp_path):
    root, fasta = shared
    other = tmp_path / "other.fasta"
    entries = list(read_fasta(fasta))
    write_fasta(other, [SequenceEntry(e.seq_id, e.sequence[:-1]) for e in entries])
    for part in (0, 1):
        extract(tmp_path, tiny_checkpoints, "r2", other, part)
    dirs = {"r0": root / "r0" / "layer_01", "r2": tmp_path / "r2" / "layer_01"}
    with pytest.raises(DataError, match="r2"):
        open_layer(dirs)
