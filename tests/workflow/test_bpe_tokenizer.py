"""The whole workflow on a GPT-2 with a BPE tokenizer whose tokens hold several residues
(ProtGPT2's kind): a 3-checkpoint study in `prompt.format: plain`, from intake to the report.

The tokenizer is trained on the shipped family (vocabulary 200); every stage that maps tokens to
residues (sampling's decoding, extraction's spans and pooling, the SAE's splice, feature
statistics' windows, KL) runs on it, and the token tables are checked to tile every sequence.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from plmdiff.activations.readers import iter_token_batches
from plmdiff.config import paths
from plmdiff.core.fasta import read_fasta
from plmdiff.testing.checkpoints import make_tiny_bpe_checkpoint
from tests.conftest import LOCAL_CORES, run_snakemake, tiny_config, write_config
from tests.workflow.test_architectures import MODELS, N_LAYERS, OVERRIDES, SAE_LAYER

pytestmark = [pytest.mark.workflow, pytest.mark.slow]


@pytest.fixture(scope="module")
def study(tmp_path_factory) -> Path:
    """The BPE study run end to end; the rounds are trained longer than the base."""
    root = tmp_path_factory.mktemp("bpe")
    checkpoints = {
        model: make_tiny_bpe_checkpoint(
            root / "checkpoints" / f"output_iteration{i}",
            n_layer=N_LAYERS,
            seed=i,
            train_steps=40 + 5 * i,
            crop=40,
        )
        for i, model in enumerate(MODELS)
    }
    configfile = write_config(root / "config.yaml", tiny_config(checkpoints, **OVERRIDES))
    run_snakemake(root, configfile, *LOCAL_CORES, timeout=1800)
    return root


def test_samples_are_residue_strings(study):
    for model in MODELS:
        entries = list(read_fasta(study / paths.fasta(model)))
        assert len(entries) >= OVERRIDES["filter"]["min_sequences"]
        assert all(e.sequence.isalpha() and e.sequence.isupper() for e in entries)
        # The length filter counts residues, not BPE tokens.
        assert min(len(e.sequence) for e in entries) >= OVERRIDES["filter"]["min_length"]


def test_token_spans_cover_each_sequence_once_in_order(study):
    layer = paths.layer_id(SAE_LAYER)
    widths = []
    for model in MODELS:
        fasta = {e.seq_id: e.sequence for e in read_fasta(study / paths.fasta(model))}
        rows: dict[str, list[tuple[int, int, str]]] = {}
        directory = study / paths.token_layer_dir(MODELS[0], model, layer)
        for batch in iter_token_batches([directory], batch_rows=1 << 16):
            for seq_id, a, b, res in zip(
                batch.seq_id, batch.pos, batch.pos_end, batch.residue, strict=True
            ):
                rows.setdefault(str(seq_id), []).append((int(a), int(b), str(res)))
        assert set(rows) == set(fasta)
        for seq_id, spans in rows.items():
            starts = [a for a, _, _ in spans]
            ends = [b for _, b, _ in spans]
            assert starts == [0, *ends[:-1]] and ends[-1] == len(fasta[seq_id]), seq_id
            assert all(len(res) == b - a for a, b, res in spans)
            assert "".join(res for _, _, res in spans) == fasta[seq_id]
            widths += [b - a for a, b, _ in spans]
        pooled = pq.read_table(study / paths.pooled(MODELS[0], model), columns=["seq_id", "length"])
        assert dict(zip(*pooled.to_pydict().values(), strict=True)) == {
            k: len(v) for k, v in fasta.items()
        }
    assert np.mean(np.asarray(widths) > 1) > 0.3  # BPE tokens: many hold several residues


def test_saes_diff_kl_and_report(study):
    layer = paths.layer_id(SAE_LAYER)
    metrics = json.loads(
        (study / paths.sae_metrics(MODELS[0], layer, paths.BASE_SCHEME, 0)).read_text()
    )
    assert metrics["ce_loss_spliced"] is not None and metrics["ce_sequences"] > 0
    for family in (paths.BASE_FAMILY, paths.PER_MODEL_FAMILY, paths.POOLED_FAMILY):
        assert (study / paths.diff_file(MODELS[0], layer, family, "features.tsv")).is_file()
    examples = pd.read_parquet(
        study / paths.diff_file(MODELS[0], layer, paths.BASE_FAMILY, "examples.parquet")
    )
    if len(examples):
        assert (examples["pos_end"] > examples["pos"]).all()
        # the window's centre is the first residue of the most active token
        for row in examples.itertuples():
            centre = row.pos - row.window_start
            assert row.window_acts[centre] == pytest.approx(row.value, rel=1e-5)
    summary = pd.read_csv(study / paths.kl_summary(), sep="\t")
    assert (summary[summary["round"] == 0]["max"] == 0).all()
    assert (summary[summary["round"] > 0]["mean"] > 0).all()
    assert (study / paths.report_index()).is_file()
