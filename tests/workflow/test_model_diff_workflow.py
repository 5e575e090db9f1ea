"""The model_diff stage in the tiny workflow run: paired shards, profile, crosscoder, difference
SAEs and their agreement with the SAE diff."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from plmdiff.config import paths
from plmdiff.model_diff.job import open_layer
from plmdiff.model_diff.scaling import CLASSES

pytestmark = [pytest.mark.workflow, pytest.mark.slow]
MODELS = ["r0", "r1", "r2"]


def test_paired_shards_of_every_model_align(tiny_run):
    dirs = {m: tiny_run / paths.paired_layer_dir(m, "01") for m in MODELS}
    layer = open_layer(dirs)  # raises unless every row matches across models
    assert layer.models == tuple(MODELS)


def test_profile_has_every_round_overall_and_by_position(tiny_run):
    profile = pd.read_csv(tiny_run / paths.model_diff_profile("tsv"), sep="\t")
    whole = profile[profile["scope"] == "all"]
    assert sorted(whole["model"]) == ["r1", "r2"]
    assert (whole["mean"] > 0).all() and (whole["n_tokens"] > 0).all()
    assert whole["kl_mean"].notna().all()
    assert (profile["scope"] == "position").sum() == 2 * 10
    assert (tiny_run / paths.model_diff_profile("png")).stat().st_size > 0


def test_crosscoder_classes_latent_scaling_and_agreement(tiny_run):
    layer_file = lambda name: tiny_run / paths.model_diff_layer_file("01", name)  # noqa: E731
    metrics = json.loads(layer_file("crosscoder.metrics.json").read_text())
    assert metrics["models"] == MODELS
    assert set(metrics["fvu"]) == set(MODELS) and 0 <= metrics["dead_fraction"] <= 1
    assert all(0 <= v < 1.5 for v in metrics["fvu"].values())
    latents = pd.read_parquet(layer_file("latents.parquet"))
    assert set(latents["class"]) <= set(CLASSES)
    assert len(latents) == 2 * metrics["d_dict"]
    classes = pd.read_csv(layer_file("classes.tsv"), sep="\t")
    assert list(classes["model"]) == ["r1", "r2"]
    assert (classes[list(CLASSES)].sum(axis=1) + classes["dead"] == classes["latents"]).all()
    agreement = pd.read_csv(layer_file("agreement.tsv"), sep="\t")
    assert {"crosscoder_round_only", "diff_sae", "sae_diff_changed"} <= set(agreement["view"])
    for m in ("r1", "r2"):
        diff_sae = json.loads((tiny_run / paths.diff_sae_file("01", m, "metrics.json")).read_text())
        assert 0 <= diff_sae["fvu"] < 1.5
