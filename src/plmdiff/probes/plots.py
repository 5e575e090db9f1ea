"""Figures of the probe sweep and the sanity checks (seaborn on the Agg backend)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns

from plmdiff.core.runtime import save_figure


def _save(fig: plt.Figure, *paths: str | Path) -> None:
    save_figure(fig, *paths, bbox_inches="tight")


def _grid(n: int) -> tuple[int, int]:
    cols = math.ceil(math.sqrt(n))
    return math.ceil(n / cols), cols


def plot_accuracy_per_layer(
    accuracy: pd.DataFrame, png: str | Path, svg: str | Path | None = None, title: str = ""
) -> None:
    """Mean +/- std accuracy per layer, grouped and ungrouped folds, chance and permutation band."""
    sns.set_theme(style="whitegrid", context="paper")
    fig, ax = plt.subplots(figsize=(7, 4))
    x = accuracy["layer"].to_numpy()
    if accuracy["permutation_mean"].notna().any():
        ax.fill_between(
            x,
            accuracy["permutation_q05"],
            accuracy["permutation_q95"],
            color="0.8",
            alpha=0.7,
            label="permutation null, 5-95%",
        )
        ax.plot(x, accuracy["permutation_mean"], color="0.5", lw=1, ls=":")
    ax.axhline(accuracy["chance"].iloc[0], color="0.3", lw=1, ls="--", label="chance (majority)")
    palette = sns.color_palette("deep")
    for column, label, color in (
        ("mean_accuracy_ungrouped", "stratified folds", palette[1]),
        ("mean_accuracy", "cluster-grouped folds", palette[0]),
    ):
        std = accuracy[column.replace("mean", "std")]
        ax.errorbar(
            x,
            accuracy[column],
            yerr=std,
            color=color,
            marker="o",
            ms=3,
            lw=1.5,
            capsize=2,
            label=label,
        )
    ax.set_xlabel("layer (0 = embeddings)")
    ax.set_ylabel("cross-validated accuracy")
    ax.set_title(title)
    ax.legend(frameon=False, fontsize=8)
    _save(fig, png, *([svg] if svg else []))


def plot_confusion(confusion: pd.DataFrame, png: str | Path, title: str = "") -> None:
    """Row-normalised confusion matrix, annotated with counts."""
    sns.set_theme(style="white", context="paper")
    counts = confusion.to_numpy()
    share = counts / np.maximum(counts.sum(1, keepdims=True), 1)
    size = 1.2 + 0.55 * len(confusion)
    fig, ax = plt.subplots(figsize=(size + 1, size))
    sns.heatmap(
        share,
        annot=counts,
        fmt="d",
        cmap="Blues",
        vmin=0,
        vmax=1,
        xticklabels=confusion.columns,
        yticklabels=confusion.index,
        cbar_kws={"label": "share of true round"},
        ax=ax,
    )
    ax.set_xlabel("predicted round")
    ax.set_ylabel("true round")
    ax.set_title(title)
    _save(fig, png)


def _round_palette(names: Sequence[str]) -> dict[str, tuple]:
    """Rounds are ordered: a sequential palette shows the order at a glance."""
    return dict(zip(names, sns.color_palette("viridis", len(names)), strict=True))


def plot_tsne_grid(
    maps: Mapping[int, np.ndarray],
    rounds: np.ndarray,
    names: Sequence[str],
    png: str | Path,
    title: str = "",
) -> None:
    """One t-SNE panel per layer, points coloured by round."""
    sns.set_theme(style="white", context="paper")
    rows, cols = _grid(len(maps))
    fig, axes = plt.subplots(rows, cols, figsize=(2.6 * cols, 2.5 * rows), squeeze=False)
    palette = _round_palette(names)
    labels = np.asarray(names)[rounds]
    for ax, (layer, xy) in zip(axes.flat, maps.items(), strict=False):
        sns.scatterplot(
            x=xy[:, 0],
            y=xy[:, 1],
            hue=labels,
            hue_order=list(names),
            palette=palette,
            s=6,
            linewidth=0,
            alpha=0.8,
            legend=False,
            ax=ax,
        )
        ax.set_title(f"layer {layer}", fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
    for ax in axes.flat[len(maps) :]:
        ax.axis("off")
    handles = [
        plt.Line2D([], [], marker="o", ls="", color=palette[name], label=name) for name in names
    ]
    fig.legend(handles=handles, title="round", loc="center left", bbox_to_anchor=(1.0, 0.5))
    fig.suptitle(title)
    fig.tight_layout()
    _save(fig, png)


def plot_cosine_grid(
    cosine: pd.DataFrame, names: Sequence[str], png: str | Path, column: str = "cosine_centred"
) -> None:
    """One heatmap per layer of the cosine similarity between round means."""
    sns.set_theme(style="white", context="paper")
    layers = list(dict.fromkeys(cosine["layer"]))
    rows, cols = _grid(len(layers))
    size = max(2.2, 0.35 * len(names) + 1.2)
    fig, axes = plt.subplots(rows, cols, figsize=(size * cols, size * rows), squeeze=False)
    for index, (ax, layer) in enumerate(zip(axes.flat, layers, strict=False)):
        block = cosine[cosine["layer"] == layer].pivot(
            index="round_i", columns="round_j", values=column
        )
        block = block.loc[list(names), list(names)]
        # Round names only on the outer edge of the grid: inside it they run into the neighbours.
        bottom_of_column = index + cols >= len(layers)
        sns.heatmap(
            block,
            vmin=-1,
            vmax=1,
            cmap="vlag",
            square=True,
            cbar=False,
            annot=len(names) <= 6,
            fmt=".2f",
            annot_kws={"fontsize": 6},
            xticklabels=list(names) if bottom_of_column else False,
            yticklabels=list(names) if index % cols == 0 else False,
            ax=ax,
        )
        ax.tick_params(labelsize=7)
        ax.set_title(f"layer {layer}", fontsize=9)
        ax.set_xlabel("")
        ax.set_ylabel("")
    for ax in axes.flat[len(layers) :]:
        ax.axis("off")
    mappable = plt.cm.ScalarMappable(cmap="vlag", norm=plt.Normalize(-1, 1))
    fig.colorbar(mappable, ax=axes, shrink=0.6, label=column.replace("_", " "))
    _save(fig, png)


def plot_sanity_stats(variance: pd.DataFrame, trend: pd.DataFrame, png: str | Path) -> None:
    """Variance ratio and Mantel r per layer; filled markers where the BH q < 0.05."""
    sns.set_theme(style="whitegrid", context="paper")
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(7, 5), sharex=True)
    for ax, frame, column, label, ref in (
        (top, variance, "variance_ratio", "inter/intra-round variance (pseudo-F)", 1.0),
        (bottom, trend, "mantel_r", "Mantel r: |round gap| vs centroid distance", 0.0),
    ):
        ax.plot(frame["layer"], frame[column], color="0.4", lw=1)
        significant = frame["permutation_q"] < 0.05
        ax.scatter(
            frame["layer"][significant],
            frame[column][significant],
            color="C3",
            s=18,
            zorder=3,
            label="permutation q < 0.05 (BH across layers)",
        )
        ax.scatter(
            frame["layer"][~significant],
            frame[column][~significant],
            facecolor="white",
            edgecolor="C3",
            s=18,
            zorder=3,
            label="q >= 0.05",
        )
        ax.axhline(ref, color="0.3", ls="--", lw=1)
        ax.set_ylabel(label, fontsize=8)
    top.legend(frameon=False, fontsize=8)
    bottom.set_xlabel("layer (0 = embeddings)")
    _save(fig, png)
