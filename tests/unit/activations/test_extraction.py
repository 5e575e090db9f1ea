"""Extraction: pooled and token activations equal a direct forward pass, residues only."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from plmdiff.activations.extraction import (
    ExtractionSettings,
    ResidualExtractor,
    extract_part,
    iter_batch_activations,
    length_batches,
    prepare_sequences,
    shard_sequences,
)
from plmdiff.activations.readers import (
    iter_token_batches,
    load_pooled,
    pooled_layers,
    read_metadata,
)
from plmdiff.config.sections import section_defaults
from plmdiff.core.errors import ConfigError, DataError
from plmdiff.core.fasta import SequenceEntry, write_fasta
from plmdiff.models.checkpoints import (
    CheckpointRecord,
    inspect_checkpoint,
    load_model,
    load_tokenizer,
)
from plmdiff.models.text import PromptFormat, encode_sequences
from plmdiff.testing.checkpoints import (
    FAMILIES,
    PLAIN_FORMAT,
    ZYMCTRL_FORMAT,
    ZYMCTRL_IDS,
    family_sequences,
    make_tiny_checkpoint,
    make_tiny_plain_checkpoint,
)
from tests.unit.activations.files import extract_files, extraction_settings

N_LAYER = 4
LAYERS = (0, 2, N_LAYER)  # embeddings, middle, last (before ln_f)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    # Untrained weights are enough to compare against a forward pass; n_positions is small so
    # that the context limit is reachable with the family's sequences.
    return make_tiny_checkpoint(
        tmp_path_factory.mktemp("ckpt") / "output_iteration0",
        n_layer=N_LAYER,
        n_embd=32,
        n_head=2,
        n_positions=128,
        train_steps=0,
    )


@pytest.fixture(scope="module")
def record(checkpoint) -> CheckpointRecord:
    return inspect_checkpoint(checkpoint, "r0", ZYMCTRL_FORMAT)


@pytest.fixture(scope="module")
def sequences() -> list[SequenceEntry]:
    seqs = family_sequences(limit=14)
    rng = np.random.default_rng(0)
    # Varied lengths (one residue up to ~110) so that batches are padded.
    cut = [max(1, int(n)) for n in rng.integers(1, 110, size=len(seqs))]
    return [
        SequenceEntry(f"r1_000_{i:05d}", s[: cut[i]], {"model": "r1"}) for i, s in enumerate(seqs)
    ]


def test_settings_from_config():
    s = extraction_settings(layers=[3, 0], token_layers=[2, 1], pooling=["mean", "last"])
    assert (s.layers, s.token_layers, s.poolings) == ((0, 3), (1, 2), ("last", "mean"))
    assert extraction_settings(pooling=["mean"]).poolings == ("mean",)
    defaults = extraction_settings()
    assert defaults.layers is None and defaults.pooled_layers(2) == [0, 1, 2]
    assert (defaults.token_layers, defaults.dtype, defaults.shards) == ((), "float16", 1)
    with pytest.raises(ConfigError, match=r"activations\.pooling is missing"):
        ExtractionSettings.from_section(
            {k: v for k, v in section_defaults("activations").items() if k != "pooling"}
        )
    with pytest.raises(DataError, match=r"activations\.token_layers: layer 5 does not exist"):
        extraction_settings(token_layers=[5]).checked_token_layers(4)


def run_extract(tmp, checkpoint, record, entries, *, fmt=ZYMCTRL_FORMAT, part=0, **settings):
    s = extraction_settings(**{"token_layers": (1, N_LAYER), "batch_tokens": 300, **settings})
    return extract_files(
        tmp, checkpoint, record, entries, fmt=fmt, model="r1", settings=s, part=part
    )


def reference(checkpoint, entries, fmt=ZYMCTRL_FORMAT, ids=ZYMCTRL_IDS, suffix=True):
    """Per sequence, the FULL scoring text (with <end><|endoftext|> unless suffix=False) through
    the plain model, one at a time; layer L from a forward hook on the last block's output."""
    model = load_model(checkpoint)
    tokenizer = load_tokenizer(checkpoint)
    out = {}
    for entry, enc in zip(
        entries, encode_sequences(tokenizer, fmt, ids, [e.sequence for e in entries]), strict=True
    ):
        captured: dict[str, torch.Tensor] = {}

        def keep_output(module, args, output, captured=captured):
            captured["L"] = output[0] if isinstance(output, tuple) else output

        handle = model.transformer.h[-1].register_forward_hook(keep_output)
        text = enc.ids if suffix else enc.ids[: enc.stop]
        with torch.no_grad():
            hs = model(torch.tensor([text]), output_hidden_states=True).hidden_states
        handle.remove()
        layers = [h[0] for h in hs[:-1]] + [captured["L"][0]]
        # Hugging Face's last hidden state is ln_f(layer L): the one we must NOT store.
        torch.testing.assert_close(model.transformer.ln_f(layers[-1]), hs[-1][0])
        span = slice(enc.start, enc.stop)
        out[entry.seq_id] = {
            "layers": [h[span].numpy() for h in layers],
            "post_ln_f": hs[-1][0][span].numpy(),
        }
    return out


def assert_f16_close(actual, expected):
    scale = np.abs(expected).max() + 1e-6
    np.testing.assert_allclose(actual, expected, rtol=2e-3, atol=2e-3 * scale)


def test_pooled_vectors_equal_a_direct_forward_pass(tmp_path, checkpoint, record, sequences):
    pooled_path, _, summary = run_extract(tmp_path, checkpoint, record, sequences)
    assert summary.n_sequences == len(sequences) and summary.n_batches > 2
    ref = reference(checkpoint, sequences)
    assert pooled_layers(pooled_path) == list(range(N_LAYER + 1))
    for layer in LAYERS:
        for pooling in ("last", "mean"):
            m = load_pooled([pooled_path], layer, pooling)
            for seq_id, x in zip(m.seq_id, m.X, strict=True):
                res = ref[seq_id]["layers"][layer]  # residue positions only
                assert_f16_close(x, res[-1] if pooling == "last" else res.mean(0))
    # Layer L is the pre-norm residual stream, not Hugging Face's normed last hidden state.
    m = load_pooled([pooled_path], N_LAYER, "mean")
    post = np.stack([ref[s]["post_ln_f"].mean(0) for s in m.seq_id])
    assert np.abs(m.X - post).max() > 0.1
    lengths = {e.seq_id: len(e.sequence) for e in sequences}
    assert [lengths[s] for s in m.seq_id] == list(m.length)


def test_token_shards_hold_every_residue_once_with_its_activation(
    tmp_path, checkpoint, record, sequences
):
    _, token_paths, summary = run_extract(tmp_path, checkpoint, record, sequences)
    ref = reference(checkpoint, sequences)
    by_id = {e.seq_id: e.sequence for e in sequences}
    for layer, path in token_paths.items():
        rows = list(iter_token_batches([path.parent], batch_rows=10_000))
        assert len(rows) == 1
        batch = rows[0]
        assert len(batch) == sum(map(len, by_id.values())) == summary.n_tokens
        for seq_id, seq in by_id.items():
            mine = batch.seq_id == seq_id
            assert mine.sum() == len(seq)
            assert list(batch.pos[mine]) == list(range(len(seq)))
            assert "".join(batch.residue[mine]) == seq
            assert_f16_close(batch.act[mine], ref[seq_id]["layers"][layer])
        meta = read_metadata(path)
        assert meta["layer"] == layer and meta["embedder_fingerprint"] == record.fingerprint


def test_no_tag_or_special_position_enters_a_pool(tmp_path, checkpoint, record, sequences):
    """Layer-0 vectors of residue positions depend only on residue and position. Another tag
    of the same token length must leave every layer-0 pool unchanged; if a tag, <sep>,
    <start> or position-0 vector entered a mean (or `last` were a special token), it would
    change. A different <end>/<|endoftext|> embedding must change nothing at any layer."""
    base, _, _ = run_extract(tmp_path / "a", checkpoint, record, sequences, token_layers=())
    other_tag = PromptFormat(format="zymctrl", label="1.1.1.2")
    assert len(load_tokenizer(checkpoint).encode("1.1.1.2")) == len(
        load_tokenizer(checkpoint).encode(ZYMCTRL_FORMAT.label)
    )
    tagged, _, _ = run_extract(
        tmp_path / "b", checkpoint, record, sequences, fmt=other_tag, token_layers=()
    )
    for pooling in ("last", "mean"):
        a = load_pooled([base], 0, pooling).X
        b = load_pooled([tagged], 0, pooling).X
        np.testing.assert_array_equal(a, b)
        # Deeper layers attend to the tag, so there it must matter (the test can fail).
        assert not np.allclose(
            load_pooled([base], 2, pooling).X, load_pooled([tagged], 2, pooling).X
        )

    # Huge <end> and <|endoftext|> embeddings: identical pools at every layer.
    altered = tmp_path / "altered"
    model = load_model(checkpoint)
    with torch.no_grad():
        for token in (ZYMCTRL_IDS.end, ZYMCTRL_IDS.eos, ZYMCTRL_IDS.pad):
            model.transformer.wte.weight[token] += 50.0
    model.save_pretrained(altered)
    load_tokenizer(checkpoint).save_pretrained(altered)
    changed, _, _ = run_extract(tmp_path / "c", altered, record, sequences, token_layers=())
    for layer in LAYERS:
        for pooling in ("last", "mean"):
            np.testing.assert_allclose(
                load_pooled([base], layer, pooling).X,
                load_pooled([changed], layer, pooling).X,
                rtol=1e-3,
                atol=1e-3,
            )


def test_batch_composition_does_not_change_results(tmp_path, checkpoint, record, sequences):
    one, _, s1 = run_extract(tmp_path / "one", checkpoint, record, sequences, batch_tokens=1)
    big, _, s2 = run_extract(tmp_path / "big", checkpoint, record, sequences, batch_tokens=100_000)
    assert s1.n_batches == len(sequences) and s2.n_batches == 1
    for layer in LAYERS:
        a = load_pooled([one], layer, "mean")
        b = load_pooled([big], layer, "mean")
        order = {s: i for i, s in enumerate(b.seq_id)}
        assert_f16_close(a.X, b.X[[order[s] for s in a.seq_id]])


def test_layer_subset_stops_early_and_matches(tmp_path, checkpoint, record, sequences):
    full, _, _ = run_extract(tmp_path / "full", checkpoint, record, sequences, token_layers=())
    part, _, _ = run_extract(
        tmp_path / "sub", checkpoint, record, sequences, layers=(0, 1), token_layers=(1,)
    )
    assert pooled_layers(part) == [0, 1]
    np.testing.assert_array_equal(
        load_pooled([full], 1, "last").X, load_pooled([part], 1, "last").X
    )
    with pytest.raises(DataError, match=r"activations.layers: layer 9 does not exist.*0\.\.4"):
        run_extract(tmp_path / "bad", checkpoint, record, sequences, layers=(9,))


def test_plain_format_pools_after_bos(tmp_path, checkpoint, record, sequences):
    plain = PromptFormat(format="plain", label="")
    path, _, _ = run_extract(
        tmp_path, checkpoint, record, sequences[:4], fmt=plain, token_layers=()
    )
    ref = reference(checkpoint, sequences[:4], fmt=plain)
    m = load_pooled([path], 2, "mean")
    for seq_id, x in zip(m.seq_id, m.X, strict=True):
        assert_f16_close(x, ref[seq_id]["layers"][2].mean(0))


def test_too_long_sequences_fail_with_their_names(tmp_path, checkpoint, record):
    long = [
        SequenceEntry("r1_000_00000", "M" * 50),
        SequenceEntry("r1_000_00001", "A" * 200),
        SequenceEntry("r1_000_00002", "C" * 300),
    ]
    with pytest.raises(DataError) as err:
        run_extract(tmp_path, checkpoint, record, long)
    message = str(err.value)
    assert "\n" not in message
    assert "2 sequence(s)" in message and "r1_000_00001 (200)" in message
    assert "context of 128 tokens" in message and "activations.truncate" in message
    assert not list((tmp_path / "pooled").glob("*")) if (tmp_path / "pooled").exists() else True


def test_truncation_embeds_the_first_residues_and_records_it(tmp_path, checkpoint, record):
    seq = "".join(family_sequences(limit=40)[i] for i in range(3))[:300]
    entries = [SequenceEntry("r1_000_00000", seq), SequenceEntry("r1_000_00001", seq[:30])]
    pooled_path, token_paths, summary = run_extract(
        tmp_path, checkpoint, record, entries, truncate=True
    )
    meta = read_metadata(pooled_path)
    limit = meta["max_residues"]
    assert limit == 128 - 9  # 4.2.1.1<sep><start> is 9 tokens
    assert meta["n_truncated"] == summary.n_truncated == 1
    assert meta["truncated_seq_ids"] == ["r1_000_00000"] and meta["truncate"] is True
    table = pq.read_table(pooled_path, columns=["seq_id", "length", "embedded_length"])
    assert table.to_pylist() == [
        {"seq_id": "r1_000_00000", "length": 300, "embedded_length": limit},
        {"seq_id": "r1_000_00001", "length": 30, "embedded_length": 30},
    ]
    rows = next(iter_token_batches([token_paths[1].parent], batch_rows=1000))
    assert (rows.seq_id == "r1_000_00000").sum() == limit
    # The full text would not fit the context: the reference stops at the last residue too.
    ref = reference(checkpoint, [SequenceEntry("x", seq[:limit])], suffix=False)["x"]["layers"]
    assert_f16_close(load_pooled([pooled_path], 2, "last").X[0], ref[2][-1])


def test_parts_split_every_sequence_once(sequences):
    parts = [shard_sequences(sequences, k, 3) for k in range(3)]
    ids = [e.seq_id for p in parts for e in p]
    assert sorted(ids) == sorted(e.seq_id for e in sequences)
    residues = [sum(len(e.sequence) for e in p) for p in parts]
    assert max(residues) - min(residues) <= max(len(e.sequence) for e in sequences)
    assert [e.seq_id for e in shard_sequences(list(reversed(sequences)), 1, 3)] == [
        e.seq_id for e in parts[1]
    ]
    with pytest.raises(DataError, match=r"part 3 is outside 0\.\.2"):
        shard_sequences(sequences, 3, 3)


def test_length_batches_respect_the_token_budget(checkpoint, sequences):
    prepared = prepare_sequences(
        sequences,
        load_tokenizer(checkpoint),
        ZYMCTRL_FORMAT,
        ZYMCTRL_IDS,
        n_positions=128,
        truncate=False,
    )
    batches = length_batches(prepared, 300)
    assert sorted(i for b in batches for i in b) == list(range(len(prepared)))
    widths = [max(len(prepared[i].ids) for i in b) for b in batches]
    assert widths == sorted(widths, reverse=True)
    for batch, width in zip(batches, widths, strict=True):
        assert width * len(batch) <= 300 or len(batch) == 1


def test_oom_halves_the_batch_and_keeps_every_sequence(checkpoint, record, sequences):
    model = load_model(checkpoint)
    prepared = prepare_sequences(
        sequences,
        load_tokenizer(checkpoint),
        ZYMCTRL_FORMAT,
        ZYMCTRL_IDS,
        n_positions=128,
        truncate=False,
    )
    extractor = ResidualExtractor(
        model,
        pooled_layers=[0, 4],
        token_layers=[1],
        poolings=("last", "mean"),
        dtype="float16",
        pad_id=1,
    )

    def small_gpu(batch):
        if len(batch) > 2:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 1 GiB")
        return extractor(batch)

    out = list(iter_batch_activations(small_gpu, prepared, 100_000))
    assert all(len(b.sequences) <= 2 for b in out)
    assert sorted(s.seq_id for b in out for s in b.sequences) == sorted(e.seq_id for e in sequences)
    assert sum(len(b.tokens[1]) for b in out) == sum(len(e.sequence) for e in sequences)


def test_writer_failure_leaves_no_outputs(tmp_path, checkpoint, record, sequences, monkeypatch):
    from plmdiff.activations import writers

    calls = {"n": 0}
    original = writers.TokenWriter.write

    def failing(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise OSError("disk full")
        return original(self, *args, **kwargs)

    monkeypatch.setattr(writers.TokenWriter, "write", failing)
    with pytest.raises(OSError, match="disk full"):
        run_extract(tmp_path, checkpoint, record, sequences, batch_tokens=200)
    assert not [p for p in tmp_path.rglob("*.parquet")]
    assert not [p for p in tmp_path.rglob(".*tmp*")]


KILLED_EXTRACTION = textwrap.dedent(
    """
    import os, signal, sys
    from pathlib import Path
    from plmdiff.activations import extraction
    from plmdiff.models.checkpoints import CheckpointRecord
    from plmdiff.activations.extraction import ExtractionSettings, extract_part
    from plmdiff.config.sections import section_defaults
    from plmdiff.testing.checkpoints import ZYMCTRL_FORMAT

    original = extraction._write_token_rows
    def write_then_die(writer, layer, batch):
        original(writer, layer, batch)
        os.kill(os.getpid(), signal.SIGKILL)  # the job is killed after writing real rows
    extraction._write_token_rows = write_then_die
    out = Path(sys.argv[3])
    extract_part(
        fasta_path=sys.argv[1], record=CheckpointRecord.read(sys.argv[2]), checkpoint_dir=sys.argv[4],
        embedder="r0", model="r1", part=0, fmt=ZYMCTRL_FORMAT,
        settings=ExtractionSettings.from_section({**section_defaults("activations"),
            "token_layers": [1], "batch_tokens": 300, "rows_per_file": 10}),
        pooled_path=out / "pooled" / "part-00000.parquet",
        token_paths={1: out / "layer_01" / "part-00000.parquet"},
    )
    """
)


def test_killed_job_leaves_nothing_a_rerun_accepts(tmp_path, checkpoint, record, sequences):
    fasta = tmp_path / "in.fasta"
    write_fasta(fasta, sequences)
    rec = tmp_path / "record.json"
    rec.write_text(__import__("json").dumps(record.to_json()))
    out = tmp_path / "out"
    proc = subprocess.run(
        [sys.executable, "-c", KILLED_EXTRACTION, str(fasta), str(rec), str(out), str(checkpoint)],
        check=False,
        capture_output=True,
    )
    assert proc.returncode == -9, proc.stderr.decode()[-2000:]
    finals = [p for p in out.rglob("*.parquet") if not p.name.startswith(".")]
    assert finals == []
    assert [p for p in out.rglob(".*tmp*")]  # partial data existed, under hidden names
    pooled_path, token_paths, summary = run_extract(
        out, checkpoint, record, sequences, token_layers=(1,)
    )
    assert load_pooled([pooled_path], 0, "last").X.shape[0] == len(sequences)
    assert (
        sum(len(b) for b in iter_token_batches([token_paths[1].parent], batch_rows=50))
        == summary.n_tokens
    )


# ----------------------------------------------------------------------------- one token layer per job


def _one_pass_and_per_layer(tmp, checkpoint, fmt, entries, layers):
    """Token files of `layers` from one pass that also writes the pooled part (as the single
    extract job wrote them) and from one call per layer without a pooled part (extract_tokens)."""
    fasta = tmp / "in.fasta"
    write_fasta(fasta, entries)
    record = inspect_checkpoint(checkpoint, "r0", fmt)
    settings = extraction_settings(token_layers=layers, batch_tokens=300, rows_per_file=40)

    def run(out, pooled, token_layers):
        paths = {layer: out / f"layer_{layer:02d}.parquet" for layer in token_layers}
        extract_part(
            fasta_path=fasta,
            record=record,
            checkpoint_dir=checkpoint,
            embedder="r0",
            model="r1",
            part=0,
            fmt=fmt,
            settings=settings,
            pooled_path=out / "pooled.parquet" if pooled else None,
            token_paths=paths,
        )
        return paths

    together = run(tmp / "together", True, layers)
    alone = {layer: run(tmp / f"alone_{layer}", False, [layer])[layer] for layer in layers}
    assert not list(tmp.glob("alone_*/pooled.parquet"))
    return together, alone


@pytest.mark.parametrize("family", ["gpt2", *FAMILIES])
def test_a_token_layer_alone_writes_the_same_bytes(tmp_path, checkpoint, sequences, family):
    """A token job per layer (extract_tokens) writes byte for byte the file of a pass over every
    layer, for every supported decoder family."""
    if family == "gpt2":
        ckpt, fmt, n_layers = checkpoint, ZYMCTRL_FORMAT, N_LAYER
    else:
        n_layers = 3
        ckpt = make_tiny_plain_checkpoint(
            tmp_path / family, family, n_layer=n_layers, train_steps=0, n_positions=128
        )
        fmt = PLAIN_FORMAT
    layers = list(range(n_layers + 1))
    together, alone = _one_pass_and_per_layer(tmp_path, ckpt, fmt, sequences, layers)
    for layer in layers:
        assert alone[layer].read_bytes() == together[layer].read_bytes(), layer


def test_a_token_job_stops_the_forward_pass_at_its_layer(tmp_path, checkpoint, record, sequences):
    """Layer l needs blocks 0..l-1 only: the deeper blocks never run."""
    model = load_model(checkpoint)
    calls = {i: 0 for i in range(N_LAYER)}
    for i, block in enumerate(model.transformer.h):
        block.register_forward_hook(lambda *_, i=i: calls.__setitem__(i, calls[i] + 1))
    extractor = ResidualExtractor(
        model, pooled_layers=[], token_layers=[2], poolings=["last"], dtype="float32", pad_id=0
    )
    tokenizer = load_tokenizer(checkpoint)
    prepared = prepare_sequences(
        sequences[:3], tokenizer, ZYMCTRL_FORMAT, record.special_ids, n_positions=128, truncate=True
    )
    batch = extractor(prepared)
    assert set(batch.tokens) == {2} and batch.pooled == {}
    assert calls == {0: 1, 1: 1, 2: 0, 3: 0}


def test_an_extraction_without_outputs_or_beyond_the_depth_is_refused(
    tmp_path, checkpoint, record, sequences
):
    fasta = tmp_path / "in.fasta"
    write_fasta(fasta, sequences)
    common = dict(
        fasta_path=fasta,
        record=record,
        checkpoint_dir=checkpoint,
        embedder="r0",
        model="r1",
        part=0,
        fmt=ZYMCTRL_FORMAT,
        settings=extraction_settings(),
        pooled_path=None,
    )
    with pytest.raises(DataError, match="neither a pooled nor a token output"):
        extract_part(**common, token_paths={})
    with pytest.raises(DataError, match=r"activations\.token_layers: layer 9 does not exist"):
        extract_part(**common, token_paths={9: tmp_path / "layer_09.parquet"})
    assert not list(tmp_path.glob("*.parquet"))
