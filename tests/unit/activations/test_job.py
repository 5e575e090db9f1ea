"""plmdiff.activations.job: the `extract` and `gather_pooled` entry functions."""

from __future__ import annotations

import pytest

from plmdiff.activations.extraction import ExtractionSettings
from plmdiff.activations.job import extract, gather_pooled
from plmdiff.activations.readers import load_pooled, read_metadata, token_files
from plmdiff.config.sections import section_defaults
from plmdiff.core.errors import DataError
from plmdiff.core.fasta import SequenceEntry, write_fasta
from plmdiff.core.runtime import write_json
from plmdiff.models.checkpoints import inspect_checkpoint
from plmdiff.testing.checkpoints import ZYMCTRL_FORMAT, family_sequences

PROMPT = {"format": "zymctrl", "label": "4.2.1.1"}


@pytest.fixture(scope="module")
def inputs(tiny_checkpoints, tmp_path_factory):
    root = tmp_path_factory.mktemp("activations_job")
    fasta = root / "r1.fasta"
    seqs = [s[: 20 + 3 * i] for i, s in enumerate(family_sequences(limit=9))]
    write_fasta(fasta, [SequenceEntry(f"r1_000_{i:05d}", s) for i, s in enumerate(seqs)])
    record = root / "r0.json"
    write_json(record, inspect_checkpoint(tiny_checkpoints["r0"], "r0", ZYMCTRL_FORMAT).to_json())
    return root, fasta, record, tiny_checkpoints["r0"], len(seqs)


def run(inputs, out, part, token_layers=(1,), **section):
    """The pooled job and one token job per layer of one part, as the rules run them."""
    _, fasta, record, checkpoint, _ = inputs
    common = dict(
        fasta_path=fasta,
        record_path=record,
        checkpoint_dir=checkpoint,
        embedder="base",
        model="r1",
        part=part,
        prompt_section=PROMPT,
        settings=ExtractionSettings.from_section(
            {
                **section_defaults("activations"),
                "token_layers": list(token_layers),
                "shards": 2,
                **section,
            }
        ),
        device="cpu",
        allow_pickle=False,
        threads=1,
    )
    summary = extract(**common, pooled_path=out / f"pooled.part-{part}.parquet")
    for layer in token_layers:
        tokens = extract(
            **common,
            token_paths={layer: out / f"layer_{layer:02d}" / f"part-{part:05d}.parquet"},
        )
        assert tokens.n_sequences == summary.n_sequences
    return summary


def test_two_parts_gathered_hold_every_sequence_once(inputs, tmp_path):
    n_sequences = inputs[4]
    summaries = [run(inputs, tmp_path, part) for part in (0, 1)]
    assert sum(s.n_sequences for s in summaries) == n_sequences
    assert len(token_files([tmp_path / "layer_01"])) == 2
    parts = [tmp_path / f"pooled.part-{part}.parquet" for part in (0, 1)]
    assert gather_pooled(parts, tmp_path / "pooled.parquet") == n_sequences
    matrix = load_pooled([tmp_path / "pooled.parquet"], 1, "mean")
    assert sorted(matrix.seq_id) == [f"r1_000_{i:05d}" for i in range(n_sequences)]
    meta = read_metadata(tmp_path / "pooled.parquet")
    assert (meta["embedder"], meta["n_parts"], meta["n_sequences"]) == ("base", 2, n_sequences)


def test_pooled_job_writes_no_token_files(inputs, tmp_path):
    run(inputs, tmp_path, 0, token_layers=())
    assert [p.name for p in tmp_path.iterdir()] == ["pooled.part-0.parquet"]


def test_token_layer_beyond_the_embedder_is_refused(inputs, tmp_path):
    with pytest.raises(DataError, match=r"activations\.token_layers: layer 7 does not exist"):
        extract(
            fasta_path=inputs[1],
            record_path=inputs[2],
            checkpoint_dir=inputs[3],
            embedder="base",
            model="r1",
            part=0,
            prompt_section=PROMPT,
            settings=ExtractionSettings.from_section(section_defaults("activations")),
            token_paths={7: tmp_path / "layer_07" / "part-00000.parquet"},
            device="cpu",
            allow_pickle=False,
            threads=None,
        )
    assert not list(tmp_path.iterdir())
