"""The demo rules: a dry run of config/demo.yaml from a clean directory, and a real tiny run."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pandas as pd
import pytest
import yaml

from plmdiff.config.sections import section_defaults
from plmdiff.demo.summary import SUMMARY_COLUMNS
from plmdiff.models.checkpoints import CheckpointRecord
from tests.conftest import LOCAL_CORES, REPO, TINY_CONFIG, run_snakemake, write_config

pytestmark = pytest.mark.workflow

ROUNDS = 2
MODELS = [f"iteration{i}" for i in range(ROUNDS + 1)]


def _dry_run_jobs(stdout: str) -> dict[str, int]:
    lines = stdout.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("Job stats:"))
    counts = {}
    for line in lines[start + 3 :]:
        parts = line.split()
        if len(parts) != 2 or parts[0] == "total":
            break
        counts[parts[0]] = int(parts[1])
    return counts


def test_demo_config_dry_run_shows_the_demo_dag(tmp_path):
    proc = run_snakemake(tmp_path, REPO / "config" / "demo.yaml", "-n", "--quiet", "rules")
    jobs = _dry_run_jobs(proc.stdout)
    assert jobs["demo_train_base"] == 1
    assert jobs["demo_dpo_round"] == 3
    assert jobs["demo_summary"] == 1
    assert jobs["check_checkpoint"] == 4
    assert not (tmp_path / "results").exists()


def tiny_demo_config() -> dict:
    """The tiny workflow config with the demo building its own tiny checkpoints."""
    config = yaml.safe_load(TINY_CONFIG.read_text())
    config["models"] = [
        {"name": m, "checkpoint": f"results/demo/checkpoints/output_iteration{i}"}
        for i, m in enumerate(MODELS)
    ]
    # Like plmdiff.testing.checkpoints.make_tiny_checkpoint: trained on the first 60 residues of each
    # sequence, so that it ends about half its samples within tiny.yaml's 128 tokens.
    config["demo"] = {
        "enabled": True,
        "base": {
            "n_layer": 2,
            "n_embd": 32,
            "n_head": 2,
            "n_positions": 128,
            "epochs": 2,
            "lr": 0.005,
            "batch_size": 32,
            "crop": 60,
            "report_samples": 8,
        },
        "dpo": {
            "rounds": ROUNDS,
            "samples_per_round": 16,
            "pairs_per_round": 4,
            "epochs": 1,
            "batch_size": 4,
            "summary_samples": 8,
        },
    }
    return config


@pytest.mark.slow
def test_demo_rules_run_for_real(tmp_path):
    # The run directory holds its own family (as a clone of the repository does), so that
    # moving the directory below can show the demo's first input is not an absolute path.
    run = tmp_path / "run"
    family = section_defaults("demo")["family_fasta"]
    (run / family).parent.mkdir(parents=True)
    shutil.copy2(REPO / family, run / family)
    configfile = write_config(run / "demo_tiny.yaml", tiny_demo_config())
    targets = [f"results/checkpoints/{m}.json" for m in MODELS]
    run_snakemake(run, configfile, *LOCAL_CORES, *targets, "results/demo/dpo_summary.tsv")
    for i, model in enumerate(MODELS):
        record = CheckpointRecord.read(run / f"results/checkpoints/{model}.json")
        assert record.n_layers == 2 and record.d_model == 32
        directory = run / f"results/demo/checkpoints/output_iteration{i}"
        assert (directory / "model.safetensors").is_file()
        assert (directory / "tokenizer.json").is_file()
    fingerprints = {
        CheckpointRecord.read(run / f"results/checkpoints/{m}.json").fingerprint for m in MODELS
    }
    assert len(fingerprints) == len(MODELS), "a DPO round did not change the weights"

    base = json.loads((run / "results/demo/base_model.json").read_text())
    assert base["holdout_perplexity"] > 1 and base["steps"] > 0
    assert base["samples"]["n_samples"] == 8

    for i in range(1, ROUNDS + 1):
        samples = pd.read_csv(run / f"results/demo/round_{i}.samples.tsv", sep="\t")
        assert len(samples) == 16
        assert set(samples["pair_role"].fillna("")) <= {"chosen", "rejected", ""}
        training = json.loads((run / f"results/demo/round_{i}.training.json").read_text())
        assert training["pairs"] >= 1 and training["steps"] >= 1

    summary = pd.read_csv(run / "results/demo/dpo_summary.tsv", sep="\t")
    assert list(summary.columns) == SUMMARY_COLUMNS
    assert list(summary["iteration"]) == list(range(ROUNDS + 1))
    assert (summary["n_samples"] == 8).all()
    assert (run / "results/demo/dpo_summary.png").read_bytes()[:4] == b"\x89PNG"
    for name in ("demo/train_base.log", "demo/dpo_round_1.log", "demo/summary.log"):
        assert (run / "logs" / name).stat().st_size > 0

    # Nothing is stale: a second run has nothing to do, nor does the run moved elsewhere
    # (modification times kept, as `cp -a` or `mv` keep them).
    proc = run_snakemake(run, configfile, "-n", *targets, "results/demo/dpo_summary.tsv")
    assert "Nothing to be done" in proc.stdout + proc.stderr
    moved = tmp_path / "moved"
    run.rename(moved)
    proc = run_snakemake(
        moved, moved / configfile.name, "-n", *targets, "results/demo/dpo_summary.tsv"
    )
    assert "Nothing to be done" in proc.stdout + proc.stderr, proc.stdout[-3000:]


def test_missing_family_fasta_is_one_line(tmp_path):
    config = tiny_demo_config()
    config["demo"]["family_fasta"] = "no/such.fasta"
    configfile = write_config(tmp_path / "bad.yaml", config)
    proc = run_snakemake(tmp_path, configfile, "-n", check=False)
    assert proc.returncode != 0
    assert "demo.family_fasta: 'no/such.fasta' does not exist" in proc.stderr


def test_family_fasta_found_in_the_working_directory_first(tmp_path):
    family = tmp_path / "my_family.fasta"
    family.write_text(">a\n" + "MKV" * 60 + "\n>b\n" + "MKL" * 60 + "\n")
    config = tiny_demo_config()
    config["demo"]["family_fasta"] = "my_family.fasta"
    configfile = write_config(tmp_path / "c.yaml", config)
    proc = run_snakemake(tmp_path, configfile, "-n", "--quiet", "rules")
    assert proc.returncode == 0


def test_demo_needs_zymctrl_format(tmp_path: Path):
    config = tiny_demo_config()
    config["prompt"] = {"format": "plain", "label": ""}
    configfile = write_config(tmp_path / "plain.yaml", config)
    proc = run_snakemake(tmp_path, configfile, "-n", check=False)
    assert proc.returncode != 0
    assert "plmdiff: " in proc.stderr and "prompt.format = 'plain'" in proc.stderr
