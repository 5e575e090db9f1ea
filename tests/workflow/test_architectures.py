"""The whole workflow on decoders other than GPT-2: a LLaMA-style model with grouped-query
attention and a GPT-NeoX model, each a 3-checkpoint study (base + 2 rounds that differ in
training) in `prompt.format: plain`, from intake to the report.

Every stage that reaches inside a model (sampling's KV cache, extraction's hooks, the SAE's
spliced loss, KL) goes through plmdiff.models.anatomy; this run is what shows that it does.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest

from plmdiff.config import paths
from plmdiff.core.fasta import read_fasta
from plmdiff.testing.checkpoints import make_tiny_plain_checkpoint
from tests.conftest import LOCAL_CORES, run_snakemake, tiny_config, write_config

pytestmark = [pytest.mark.workflow, pytest.mark.slow]

MODELS = ("r0", "r1", "r2")
N_LAYERS = 2
SAE_LAYER = 1
# The tiny study cut down to what proves each stage runs on the architecture (2 CPU cores).
OVERRIDES = {
    "prompt": {"format": "plain", "label": ""},
    "sampling": {"n_sequences": 24, "shards": 1, "batch_size": 24, "max_length": 64},
    "filter": {"min_length": 5, "min_sequences": 8},
    "activations": {"token_layers": [SAE_LAYER], "shards": 1},
    "probes": {"folds": 2, "permutations": 1, "C": 1.0},
    "sanity": {"tsne_max_points": 30, "permutations": 9},
    "sae": {
        "layers": [SAE_LAYER],
        "training_tokens": 4000,
        "finetune_tokens": 1000,
        "batch_size": 128,
        "kfold": 1,  # one replica per SAE: half the train_sae and feature_stats jobs
        "dead_window": 1000,
        "eval_sequences": 4,
    },
    "kl": {"max_sequences": 8},
    # Potts reads residue strings only, never the model: tests/workflow/test_potts_workflow.py
    # covers it, and here it would cost a minute per architecture.
    "potts": {"enabled": False},
}


@pytest.fixture(scope="module", params=["llama", "gpt_neox"])
def study(request, tmp_path_factory) -> tuple[str, Path]:
    """One architecture's study run end to end; the rounds are trained longer than the base."""
    family = request.param
    root = tmp_path_factory.mktemp(f"arch_{family}")
    checkpoints = {
        model: make_tiny_plain_checkpoint(
            root / "checkpoints" / f"output_iteration{i}",
            family,
            n_layer=N_LAYERS,
            seed=i,
            train_steps=40 + 5 * i,
            crop=40,
        )
        for i, model in enumerate(MODELS)
    }
    configfile = write_config(root / "config.yaml", tiny_config(checkpoints, **OVERRIDES))
    # 3 minutes on 2 idle cores; the timeout leaves room for a busy CI machine.
    run_snakemake(root, configfile, *LOCAL_CORES, timeout=1800)
    return family, root


def test_intake_records_the_architecture(study):
    family, root = study
    expected = {"llama": "LlamaForCausalLM", "gpt_neox": "GPTNeoXForCausalLM"}[family]
    for model in MODELS:
        record = json.loads((root / paths.checkpoint_record(model)).read_text())
        assert (record["architecture"], record["n_layers"]) == (expected, N_LAYERS)


def test_sampling_writes_ended_sequences(study):
    _, root = study
    for model in MODELS:
        entries = list(read_fasta(root / paths.fasta(model)))
        assert len(entries) >= OVERRIDES["filter"]["min_sequences"]
        assert all(e.sequence.isalpha() and e.sequence.isupper() for e in entries)


def test_pooled_activations_hold_every_layer(study):
    _, root = study
    for model in MODELS:
        table = pq.read_table(root / paths.pooled("r0", model))
        n_fasta = len(list(read_fasta(root / paths.fasta(model))))
        assert table.num_rows == n_fasta
        for pooling in ("last", "mean"):
            layers = {c for c in table.column_names if c.startswith(f"{pooling}_")}
            assert len(layers) == N_LAYERS + 1, table.column_names


def test_saes_open_with_sae_lens(study):
    from sae_lens import SAE

    _, root = study
    layer = paths.layer_id(SAE_LAYER)
    for scheme in (paths.BASE_SCHEME, paths.finetune_scheme("r1"), paths.pooled_scheme()):
        sae = SAE.load_from_disk(str(root / paths.sae_dir("r0", layer, scheme, 0)), device="cpu")
        assert sae.cfg.d_in == 32
        metrics = json.loads((root / paths.sae_metrics("r0", layer, scheme, 0)).read_text())
        # the SAE was spliced into this architecture's stream: the loss is finite
        assert metrics["ce_loss_spliced"] is not None and metrics["ce_sequences"] > 0


def test_diff_and_kl(study):
    _, root = study
    layer = paths.layer_id(SAE_LAYER)
    for family in (paths.BASE_FAMILY, paths.PER_MODEL_FAMILY, paths.POOLED_FAMILY):
        assert (root / paths.diff_file("r0", layer, family, "features.tsv")).is_file()
    summary = pd.read_csv(root / paths.kl_summary(), sep="\t")
    assert (summary[summary["round"] == 0]["max"] == 0).all()
    assert (summary[summary["round"] > 0]["mean"] > 0).all()
    assert (root / paths.report_index()).is_file()
