"""The train_sae rule through Snakemake: DAG-time errors and inputs (dry runs), a real run that
imports a Zym_SAEs checkpoint and fine-tunes it, and the SAEs of the shared tiny run."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pandas as pd
import pytest
import torch

from plmdiff.core.fasta import SequenceEntry, write_fasta
from plmdiff.sae.training import load_sae
from plmdiff.testing.checkpoints import family_sequences, make_tiny_checkpoint
from tests.conftest import LOCAL_CORES, run_snakemake, tiny_config, write_config
from tests.unit.sae.test_sae_import import zym_checkpoint

pytestmark = pytest.mark.workflow


def fake_checkpoints(root: Path, n: int = 3) -> dict[str, Path]:
    """Directories that pass the DAG-time checks (config.json, weights, tokenizer): dry runs only."""
    out = {}
    for i in range(n):
        path = root / f"output_iteration{i}"
        path.mkdir(parents=True)
        (path / "config.json").write_text(json.dumps({"n_layer": 2, "n_embd": 32}))
        (path / "model.safetensors").write_bytes(b"")
        (path / "tokenizer.json").write_text("{}")
        out[f"r{i}"] = path
    return out


def write_study_fasta(workdir: Path, models: list[str], n: int = 12) -> None:
    """FASTA files as the filter rule writes them (this test starts from them)."""
    seqs = family_sequences(limit=2 * n * len(models))
    for k, model in enumerate(models):
        entries = [
            SequenceEntry(f"{model}_000_{i:05d}", seqs[k * n + i][:60], {"model": model})
            for i in range(n)
        ]
        write_fasta(workdir / "results" / "fasta" / f"{model}.fasta", entries)


def dry_run(tmp_path: Path, check: bool = True, **overrides) -> str:
    config = tiny_config(fake_checkpoints(tmp_path / "ckpt"), **overrides)
    configfile = write_config(tmp_path / "config.yaml", config)
    proc = run_snakemake(tmp_path, configfile, "-n", "--quiet", "rules", check=check)
    return proc.stdout + proc.stderr


def test_sae_layer_not_stored_as_tokens_is_a_config_error(tmp_path):
    out = dry_run(tmp_path, check=False, sae={"layers": [2, 0]})
    assert "sae.layers: layer 0 is not in activations.token_layers [1, 2]" in out
    assert "Traceback" not in out


def test_dag_has_one_job_per_scheme_training_every_fold(tmp_path):
    """Fold replicas of one (embedder, layer, scheme) share a GPU job; so do the feature
    statistics of one (embedder, scheme)."""
    out = dry_run(tmp_path, sae={"kfold": 3, "groups": {"late": ["r2"], "all": ["r1", "r2"]}})
    counts = dict(
        line.split()[:2]
        for line in out.splitlines()
        if line.startswith(("train_sae ", "feature_stats "))
    )
    # base, ft_r1, ft_r2, pooled_late, pooled_all, null_ft: 6 schemes (of one layer), 3 folds
    # each; the null fine-tune only calibrates the diff's direction cut: no feature statistics
    assert counts == {"train_sae": "6", "feature_stats": "5"}


def test_dag_of_an_import_names_its_file(tmp_path):
    out = dry_run(tmp_path, check=False, sae={"base": {"import": "zym/layer_{layer}/"}})
    assert "Missing input files for rule train_sae" in out
    assert "zym/layer_1" in out


@pytest.fixture(scope="module")
def import_run(tmp_path_factory) -> Path:
    """A real run: the base SAE imported from a Zym_SAEs checkpoint, then fine-tuned on r1."""
    root = tmp_path_factory.mktemp("sae_import_run")
    checkpoints = {
        f"r{i}": make_tiny_checkpoint(root / "ckpt" / f"output_iteration{i}", seed=i, train_steps=0)
        for i in range(2)
    }
    checkpoint = zym_checkpoint()
    d, d_sae = 32, 64
    g = torch.Generator().manual_seed(0)
    checkpoint["model_state_dict"] = {
        "W_enc": 0.3 * torch.randn(d, d_sae, generator=g),
        "W_dec": torch.nn.functional.normalize(torch.randn(d_sae, d, generator=g), dim=1),
        "b_enc": torch.zeros(d_sae),
        "b_dec": torch.zeros(d),
    }
    checkpoint["cfg"].update(act_size=d, dict_size=d_sae, hook_point="blocks.1.hook_resid_pre")
    checkpoint["thresholds"] = torch.full((d_sae,), 0.1)
    zym = root / "zym" / "layer_1" / "checkpoint_latest.pt"
    zym.parent.mkdir(parents=True)
    torch.save(checkpoint, zym)
    workdir = root / "work"
    workdir.mkdir()
    config = tiny_config(
        checkpoints,
        activations={"token_layers": [1], "shards": 1},
        sae={
            "layers": [1],
            "kfold": 1,
            "schemes": ["base", "per_model"],
            "training_tokens": 2560,
            "finetune_tokens": 2560,
            "eval_sequences": 4,
            "base": {"import": str(root / "zym" / "layer_{layer}" / "checkpoint_latest.pt")},
        },
    )
    configfile = write_config(workdir / "config.yaml", config)
    write_study_fasta(workdir, list(checkpoints))
    targets = [f"results/saes/r0/layer_01/{s}/fold_0.metrics.json" for s in ("base", "ft_r1")]
    # Upstream stages are left out: this test starts from FASTA files it wrote itself.
    rules = ("check_checkpoint", "extract", "extract_tokens", "sae_folds", "train_sae")
    run_snakemake(workdir, configfile, *LOCAL_CORES, "--allowed-rules", *rules, "--", *targets)
    return workdir


@pytest.mark.slow
def test_imported_base_is_written_evaluated_and_fine_tuned(import_run):
    saes = import_run / "results" / "saes" / "r0" / "layer_01"
    base = json.loads((saes / "base" / "fold_0.metrics.json").read_text())
    ft = json.loads((saes / "ft_r1" / "fold_0.metrics.json").read_text())
    assert base["source"] == "imported" and base["import"].endswith("layer_1/checkpoint_latest.pt")
    assert base["eval_split"] == "train" and base["kfold"] == 1  # no held-out data with kfold 1
    assert ft["source"] == "fine-tuned" and ft["base_sae"].endswith("base/fold_0")
    assert ft["d_sae"] == base["d_sae"] == 64
    a, b = load_sae(saes / "base" / "fold_0"), load_sae(saes / "ft_r1" / "fold_0")
    assert a.cfg.normalize_activations == b.cfg.normalize_activations == "layer_norm"
    cos = torch.nn.functional.cosine_similarity(a.W_dec, b.W_dec, dim=1)
    assert cos.mean() > 0.8
    # SAEs are not protected (read-only SAEs abort whole runs and cannot be deleted to retrain).
    weights = saes / "ft_r1" / "fold_0" / "sae_weights.safetensors"
    assert os.stat(weights).st_mode & stat.S_IWUSR
    for log in (import_run / "logs" / "train_sae").rglob("*.log"):
        assert "Traceback" not in log.read_text()


@pytest.mark.slow
def test_saes_of_the_tiny_run(tiny_run):
    """Every SAE of the shared tiny run: sae-lens directory, metrics, curves."""
    saes = sorted((tiny_run / "results" / "saes").glob("*/layer_*/*/fold_*.metrics.json"))
    schemes = {p.parent.name for p in saes}
    assert {"base", "ft_r1", "ft_r2", "pooled", "null_ft"} <= schemes
    for path in saes:
        metrics = json.loads(path.read_text())
        directory = Path(str(path).removesuffix(".metrics.json"))
        sae = load_sae(directory)
        assert sae.cfg.d_sae == metrics["d_sae"]
        # The null fine-tune trains on its base replica's held-out fold, evaluated on the rest.
        split = "base_train" if path.parent.name == "null_ft" else "heldout"
        assert metrics["eval_split"] == split and metrics["heldout_sequences"] > 0
        assert 0 < metrics["fvu"] < 1.5 and metrics["l0"] > 0
        curves = pd.read_csv(f"{directory}.curves.tsv", sep="\t")
        assert len(curves) > 0 and Path(f"{directory}.curves.png").stat().st_size > 1000
