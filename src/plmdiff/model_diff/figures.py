"""Figures of the model_diff stage: the activation-difference profile and the latent classes."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import pandas as pd

from plmdiff.core.runtime import save_figure
from plmdiff.model_diff.scaling import BASE_ONLY, MIXED, ROUND_ONLY, SHARED


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_profile(profile: pd.DataFrame, paths: Sequence[str | os.PathLike]) -> None:
    """Left: the median ||h_round - h_base|| by layer (depth) with its interquartile range;
    right: the mean by relative position, one line per (round, layer)."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    whole = profile[profile["scope"] == "all"]
    for model, group in whole.groupby("model", sort=False):
        # The median, not the mean, sits inside the interquartile range whatever the skew.
        axes[0].errorbar(
            group["layer"],
            group["q50"],
            yerr=[group["q50"] - group["q25"], group["q75"] - group["q50"]],
            marker="o",
            capsize=3,
            label=model,
        )
    axes[0].set(
        xlabel="layer",
        ylabel="||h_round - h_base|| per token (median, IQR)",
        title="Where in depth the rounds moved",
    )
    axes[0].legend(title="round", fontsize=8)
    pos = profile[profile["scope"] == "position"]
    for (model, layer), group in pos.groupby(["model", "layer"], sort=False):
        mid = (group["position_from"] + group["position_to"]) / 2
        axes[1].plot(mid, group["mean"], marker=".", label=f"{model}, layer {layer}")
    axes[1].set(
        xlabel="relative position (pos / length)",
        ylabel="mean ||h_round - h_base||",
        title="Where along the sequence",
    )
    axes[1].legend(fontsize=7, ncol=2)
    fig.tight_layout()
    save_figure(fig, *paths)


def plot_classes(latents: pd.DataFrame, layer: int, paths: Sequence[str | os.PathLike]) -> None:
    """Left: alive latents per class and round; right: latent scaling of the exclusive latents
    (nu_error vs nu_reconstruction; flagged ones are artifacts)."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    alive = latents[latents["fires"] > 0]
    counts = (
        alive.groupby(["model", "class"], sort=False)
        .size()
        .unstack(fill_value=0)
        .reindex(columns=[SHARED, ROUND_ONLY, BASE_ONLY, MIXED], fill_value=0)
    )
    counts.plot.bar(ax=axes[0], rot=0)
    axes[0].set(
        xlabel="round vs base",
        ylabel="alive latents",
        yscale="symlog",
        title=f"Crosscoder latent classes, layer {layer}",
    )
    scored = latents[latents["nu_error"].notna()]
    for (cls, flagged), group in scored.groupby(["class", "artifact"], sort=False):
        axes[1].scatter(
            group["nu_error"],
            group["nu_reconstruction"],
            s=10,
            marker="x" if flagged else "o",
            label=f"{cls}{' (artifact)' if flagged else ''}",
        )
    axes[1].set(
        xlabel="nu error (other / own)",
        ylabel="nu reconstruction (other / own)",
        title="Latent scaling of exclusive latents",
    )
    if len(scored):
        axes[1].legend(fontsize=8)
    fig.tight_layout()
    save_figure(fig, *paths)
