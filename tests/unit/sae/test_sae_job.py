"""The train_sae job end to end on real token shards of tiny checkpoints: train, fine-tune, import."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import torch

from plmdiff.config.paths import NULL_SCHEME
from plmdiff.core.fasta import read_fasta
from plmdiff.probes.clustering import read_clusters
from plmdiff.sae.folds import write_fold_table
from plmdiff.sae.job import SAEJob, SAEOutputs, eval_sample, hook_name, run_train_sae
from plmdiff.sae.training import load_sae
from plmdiff.testing.checkpoints import ZYMCTRL_FORMAT, family_sequences
from plmdiff.testing.settings import sae_settings

LAYER = 1
MODELS = ("r0", "r1")
SETTINGS = sae_settings(
    architecture="batchtopk",
    d_sae=64,
    k=4,
    lr=1e-3,
    finetune_lr=1e-4,
    batch_size=128,
    training_tokens=128 * 40,
    finetune_tokens=128 * 15,
    shuffle_buffer=512,
    kfold=2,
    dead_window=2000,
    eval_sequences=6,
    seed=3,
)


@pytest.fixture(scope="module")
def study(tiny_checkpoints, tmp_path_factory) -> dict:
    """FASTA, checkpoint records and token shards (2 parts, layer 1) as the upstream rules
    write them, for models r0 (base) and r1."""
    from plmdiff.activations.extraction import ExtractionSettings, extract_part
    from plmdiff.config.sections import section_defaults
    from plmdiff.core.fasta import SequenceEntry, write_fasta
    from plmdiff.core.runtime import write_json
    from plmdiff.models.checkpoints import inspect_checkpoint

    root = tmp_path_factory.mktemp("sae_job")
    seqs = [s[:50] for s in family_sequences(limit=80)]
    settings = ExtractionSettings.from_section(
        {
            **section_defaults("activations"),
            "layers": [LAYER],
            "token_layers": [LAYER],
            "shards": 2,
            "rows_per_file": 500,
        }
    )
    out = {"root": root, "fasta": {}, "records": {}, "tokens": {}}
    record = inspect_checkpoint(tiny_checkpoints["r0"], "r0", ZYMCTRL_FORMAT)
    record_path = root / "checkpoints" / "r0.json"
    write_json(record_path, record.to_json())
    for i, model in enumerate(MODELS):
        fasta = root / "fasta" / f"{model}.fasta"
        entries = [
            SequenceEntry(f"{model}_000_{j:05d}", s, {"model": model})
            for j, s in enumerate(seqs[40 * i : 40 * (i + 1)])
        ]
        write_fasta(fasta, entries)
        parts = []
        for part in range(2):
            token = root / "act" / "r0" / model / f"layer_{LAYER:02d}" / f"part-{part:05d}.parquet"
            extract_part(
                fasta_path=fasta,
                record=record,
                checkpoint_dir=tiny_checkpoints["r0"],
                embedder="r0",
                model=model,
                part=part,
                fmt=ZYMCTRL_FORMAT,
                settings=settings,
                pooled_path=root / "act" / "r0" / model / "pooled" / f"part-{part:05d}.parquet",
                token_paths={LAYER: token},
            )
            parts.append(str(token))
        out["fasta"][model] = str(fasta)
        out["records"][model] = str(record_path)  # base embedder: r0 embeds every model
        out["tokens"][model] = parts
    return out


def make_job(study: dict, scheme: str, fold: int = 0, **kwargs) -> SAEJob:
    models = ["r0"] if scheme in ("base", NULL_SCHEME) else [scheme.removeprefix("ft_")]
    return SAEJob(
        embedder="r0",
        layer=LAYER,
        scheme=scheme,
        fold=fold,
        models=models,
        token_files=[p for m in models for p in study["tokens"][m]],
        fasta={m: study["fasta"][m] for m in models},
        checkpoint_records={m: study["records"][m] for m in models},
        settings=kwargs.pop("settings", SETTINGS),
        prompt=ZYMCTRL_FORMAT,
        device="cpu",
        **kwargs,
    )


def outputs(root: Path, name: str) -> SAEOutputs:
    base = root / "saes" / name
    return SAEOutputs(
        sae_dir=str(base),
        metrics=f"{base}.metrics.json",
        curves_tsv=f"{base}.curves.tsv",
        curves_png=f"{base}.curves.png",
    )


def check_outputs(out: SAEOutputs) -> dict:
    metrics = json.loads(Path(out.metrics).read_text())
    assert Path(out.curves_png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    pd.read_csv(out.curves_tsv, sep="\t")
    load_sae(out.sae_dir)
    return metrics


def test_base_sae_is_trained_on_its_folds_and_evaluated_on_held_out_sequences(study):
    out = outputs(study["root"], "base_fold0")
    metrics = run_train_sae(make_job(study, "base"), out)
    assert check_outputs(out) == json.loads(json.dumps(metrics))
    assert metrics["source"] == "trained"
    assert (metrics["architecture"], metrics["inference_architecture"]) == ("batchtopk", "jumprelu")
    assert metrics["input_normalisation"] == "layer_norm"
    assert metrics["train_sequences"] + metrics["heldout_sequences"] == 40
    assert metrics["heldout_sequences"] > 0 and metrics["eval_split"] == "heldout"
    assert metrics["train_tokens"] == 128 * 40
    assert 0 < metrics["fvu"] < 1 and 0 < metrics["l0"] <= 64
    assert 0 <= metrics["dead_fraction"] <= 1 and 0 <= metrics["dense_fraction"] <= 1
    assert metrics["ce_sequences"] == 6 and metrics["ce_predictions"] > 100
    assert metrics["ce_loss_zero_ablated"] > metrics["ce_loss_clean"]
    assert metrics["ce_loss_recovered"] is not None
    curves = pd.read_csv(out.curves_tsv, sep="\t")
    assert {"loss", "l0", "dead_fraction"} <= set(curves.columns) and len(curves) > 5

    cfg = json.loads((Path(out.sae_dir) / "cfg.json").read_text())
    meta = cfg["metadata"]
    assert meta["hook_name"] == hook_name(LAYER, 2) == "blocks.1.hook_resid_pre"
    assert meta["plmdiff"]["scheme"] == "base" and meta["plmdiff"]["fold"] == 0

    # Same config, same SAE (on the same hardware).
    again = outputs(study["root"], "base_fold0_again")
    run_train_sae(make_job(study, "base"), again)
    a, b = load_sae(out.sae_dir), load_sae(again.sae_dir)
    for name in ("W_enc", "W_dec", "b_enc", "b_dec", "threshold"):
        assert torch.equal(getattr(a, name), getattr(b, name)), name


def test_fine_tune_starts_from_the_base_of_the_same_fold(study):
    base = outputs(study["root"], "base_fold1")
    run_train_sae(make_job(study, "base", fold=1), base)
    out = outputs(study["root"], "ft_r1_fold1")
    metrics = run_train_sae(make_job(study, "ft_r1", fold=1, base_sae=base.sae_dir), out)
    check_outputs(out)
    assert metrics["source"] == "fine-tuned" and metrics["base_sae"] == base.sae_dir
    assert metrics["models"] == ["r1"] and metrics["train_tokens"] == 128 * 15
    assert metrics["input_normalisation"] == "layer_norm"
    before, after = load_sae(base.sae_dir).W_dec, load_sae(out.sae_dir).W_dec
    assert not torch.equal(before, after)
    assert torch.nn.functional.cosine_similarity(before, after, dim=1).mean() > 0.9


def test_null_fine_tune_trains_on_the_base_replicas_held_out_cluster_fold(study):
    """With a cluster fold table: the base replica trains on the other folds' clusters; the null
    fine-tune of the same fold trains on exactly the base's held-out fold, evaluated on the rest."""
    ids = [e.seq_id for e in read_fasta(study["fasta"]["r0"])]
    clusters = study["root"] / "clusters.tsv"
    pd.DataFrame(
        {"seq_id": ids, "cluster": [f"c{i // 3}" for i in range(len(ids))], "method": "test"}
    ).to_csv(clusters, sep="\t", index=False)
    table = write_fold_table(read_clusters(clusters), study["root"] / "folds.tsv", 2, SETTINGS.seed)
    held = int((table["fold"] == 1).sum())
    base = outputs(study["root"], "base_fold1_clusters")
    folds = [str(study["root"] / "folds.tsv")]
    b = run_train_sae(make_job(study, "base", fold=1, fold_table=folds), base)
    assert (b["train_sequences"], b["heldout_sequences"]) == (len(ids) - held, held)
    out = outputs(study["root"], "null_fold1")
    job = make_job(study, NULL_SCHEME, fold=1, base_sae=base.sae_dir, fold_table=folds)
    metrics = run_train_sae(job, out)
    assert metrics["source"] == "fine-tuned" and metrics["train_tokens"] == 128 * 15
    assert (metrics["train_sequences"], metrics["heldout_sequences"]) == (held, len(ids) - held)
    assert metrics["eval_split"] == "base_train"


def test_import_replaces_training_but_still_evaluates(study, tmp_path):
    import plmdiff.sae.sources as sae_import
    from tests.unit.sae.test_sae_import import zym_checkpoint

    checkpoint = zym_checkpoint()
    d = 32
    checkpoint["model_state_dict"] = {
        "W_enc": torch.randn(d, 64) * 0.1,
        "W_dec": torch.nn.functional.normalize(torch.randn(64, d), dim=1),
        "b_enc": torch.zeros(64),
        "b_dec": torch.zeros(d),
    }
    checkpoint["cfg"].update(act_size=d, dict_size=64, hook_point="blocks.1.hook_resid_pre")
    checkpoint["thresholds"] = torch.full((64,), 0.05)
    path = tmp_path / "layer_1" / sae_import.ZYM_CHECKPOINT
    path.parent.mkdir()
    torch.save(checkpoint, path)
    out = outputs(study["root"], "imported")
    template = str(tmp_path / "layer_{layer}")
    job = make_job(study, "base", import_path=str(sae_import.resolve_import_path(template, LAYER)))
    metrics = run_train_sae(job, out)
    check_outputs(out)
    assert metrics["source"] == "imported" and metrics["train_tokens"] == 0
    assert metrics["inference_architecture"] == "jumprelu" and metrics["d_sae"] == 64
    assert metrics["fvu"] > 0 and "ce_loss_recovered" in metrics
    assert pd.read_csv(out.curves_tsv, sep="\t").empty


def test_eval_sample_is_deterministic_and_order_free():
    ids = [f"m_000_{i:05d}" for i in range(100)]
    assert eval_sample(ids, 10, 0) == eval_sample(list(reversed(ids)), 10, 0)
    assert len(set(eval_sample(ids, 10, 0))) == 10
    assert eval_sample(ids, 10, 0) != eval_sample(ids, 10, 1)
    assert hook_name(2, 2) == "blocks.1.hook_resid_post"
