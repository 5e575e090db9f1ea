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
    """Balanced accuracy per layer with 95% intervals, ungrouped folds, baselines, chance, null.

    Layer rows have features == "layer"; every other row is a baseline, drawn as a horizontal
    line across the layers. Filled markers: the layer beats the best baseline (margin_p_fwer <
    0.05) and chance (permutation_p_fwer < 0.05).
    """
    sns.set_theme(style="whitegrid", context="paper")
    fig, ax = plt.subplots(figsize=(7.5, 4.2))
    layers = accuracy[accuracy["features"] == "layer"]
    baselines = accuracy[accuracy["features"] != "layer"]
    x = layers["layer"].to_numpy(dtype=float)
    if layers["permutation_mean"].notna().any():
        ax.fill_between(
            x,
            layers["permutation_q05"].to_numpy(float),
            layers["permutation_q95"].to_numpy(float),
            color="0.85",
            alpha=0.7,
            label="permutation null, 5-95%",
        )
    ax.axhline(layers["chance"].iloc[0], color="0.3", lw=1, ls="--", label="chance (1/K)")
    palette = sns.color_palette("deep")
    for i, (_, row) in enumerate(baselines.iterrows()):
        ax.axhline(
            row["balanced_accuracy"],
            color=palette[(i + 2) % len(palette)],
            lw=1,
            ls=(0, (4, 2)) if row["features"] != row["best_baseline"] else "-.",
            label=f"baseline: {str(row['features']).replace('_', ' ')}",
        )
    ax.plot(
        x,
        layers["balanced_accuracy_ungrouped"].to_numpy(float),
        color=palette[1],
        marker="o",
        ms=3,
        lw=1,
        label="stratified folds (leakage check)",
    )
    y = layers["balanced_accuracy"].to_numpy(float)
    err = np.abs(
        np.stack([y - layers["balanced_accuracy_ci_low"], layers["balanced_accuracy_ci_high"] - y])
    ).astype(float)
    ax.errorbar(
        x, y, yerr=err, color=palette[0], lw=1.5, capsize=2, label="cluster-grouped folds, 95% CI"
    )
    beats = (layers["margin_p_fwer"] < 0.05) & (layers["permutation_p_fwer"] < 0.05)
    ax.scatter(x[beats], y[beats], color=palette[0], s=22, zorder=3, label="beats best baseline")
    ax.scatter(x[~beats], y[~beats], facecolor="white", edgecolor=palette[0], s=22, zorder=3)
    ax.set_xlabel("layer (0 = embeddings)")
    ax.set_ylabel("balanced accuracy (out of fold)")
    method = str(accuracy["cluster_method"].iloc[0])
    ax.set_title(f"{title}\nfolds grouped by: {method}" if title else f"folds grouped by: {method}")
    ax.legend(frameon=False, fontsize=7, loc="center left", bbox_to_anchor=(1.0, 0.5))
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
    """Variance ratio and Mantel r per layer; filled markers where the family-wise p < 0.05.

    A layer whose Mantel test cannot reach its alpha (too few rounds) is drawn as a cross.
    """
    sns.set_theme(style="whitegrid", context="paper")
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(7, 5), sharex=True)
    for ax, frame, column, label, ref in (
        (top, variance, "variance_ratio", "inter/intra-round variance (pseudo-F)", 1.0),
        (bottom, trend, "mantel_r", "Mantel r: |round gap| vs centroid distance", 0.0),
    ):
        ax.plot(frame["layer"], frame[column], color="0.4", lw=1)
        testable = frame["testable"].astype(bool) if "testable" in frame else True
        significant = (frame["permutation_p_fwer"] < 0.05) & testable
        ax.scatter(
            frame["layer"][significant],
            frame[column][significant],
            color="C3",
            s=18,
            zorder=3,
            label="family-wise p < 0.05 (max statistic across layers)",
        )
        ax.scatter(
            frame["layer"][~significant & testable],
            frame[column][~significant & testable],
            facecolor="white",
            edgecolor="C3",
            s=18,
            zorder=3,
            label="p >= 0.05",
        )
        untestable = ~np.asarray(testable, dtype=bool) & np.ones(len(frame), dtype=bool)
        if untestable.any():
            ax.scatter(
                frame["layer"][untestable],
                frame[column][untestable],
                marker="x",
                color="0.3",
                s=18,
                zorder=3,
                label=f"untestable: min p {frame['min_p'].iloc[0]:.3g} > alpha",
            )
            ax.legend(frameon=False, fontsize=8)
        ax.axhline(ref, color="0.3", ls="--", lw=1)
        ax.set_ylabel(label, fontsize=8)
    top.legend(frameon=False, fontsize=8)
    bottom.set_xlabel("layer (0 = embeddings)")
    _save(fig, png)
