"""Figures of the Potts stage: the coupling-change map of a round, energies by round."""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np
import pandas as pd

from plmdiff.core.runtime import save_figure


def plot_coupling_change(
    change: np.ndarray,
    base_scores: np.ndarray,
    significant: np.ndarray,
    *,
    title: str,
    paths: Sequence[str | os.PathLike],
) -> None:
    """Contact-map style: upper triangle the round's change of APC-FN (significant pairs
    circled), lower triangle the base's APC-FN."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    length = change.shape[0]
    upper = np.triu(np.ones((length, length), dtype=bool), k=1)
    fig, ax = plt.subplots(figsize=(6.4, 5.4))
    bound = float(np.abs(change[upper]).max()) if upper.any() else 1.0
    bound = bound if bound > 0 else 1.0
    shown = np.where(upper, change, np.nan)
    base = np.where(upper.T, base_scores, np.nan)
    ax.imshow(base, cmap="Greys", origin="upper", interpolation="nearest")
    im = ax.imshow(
        shown, cmap="RdBu_r", vmin=-bound, vmax=bound, origin="upper", interpolation="nearest"
    )
    si, sj = np.nonzero(np.triu(significant, k=1))
    if len(si):
        ax.scatter(sj, si, s=14, facecolors="none", edgecolors="black", linewidths=0.7)
    fig.colorbar(im, ax=ax, label="change of APC-corrected coupling norm (round - base)")
    ax.set(
        xlabel="profile column",
        ylabel="profile column",
        title=f"{title}\nupper: change (circled: q < FDR); lower: base coupling norm",
    )
    ticks = np.arange(0, length, max(1, length // 10))
    ax.set_xticks(ticks, [str(t + 1) for t in ticks])
    ax.set_yticks(ticks, [str(t + 1) for t in ticks])
    fig.tight_layout()
    save_figure(fig, *paths, dpi=130)


def plot_energies(
    energies: pd.DataFrame,
    bands: pd.DataFrame,
    sets: Sequence[str],
    paths: Sequence[str | os.PathLike],
) -> None:
    """One panel per scoring model: each set's energy distribution, the reference band shaded."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import seaborn as sns

    scorers = list(dict.fromkeys(energies["model"]))
    fig, axes = plt.subplots(1, len(scorers), figsize=(5.5 * len(scorers), 4), squeeze=False)
    for ax, scorer in zip(axes[0], scorers, strict=True):
        data = energies[energies["model"] == scorer]
        order = [s for s in sets if s in set(data["set"])]
        sns.violinplot(data=data, x="set", y="energy", order=order, ax=ax, cut=0, inner="quartile")
        band = bands[bands["model"] == scorer].iloc[0]
        ax.axhspan(band["band_low"], band["band_high"], color="tab:green", alpha=0.12, lw=0)
        ax.set(
            xlabel="sequence set",
            ylabel="Potts energy (lower: more probable)",
            title=f"under the {scorer} model (band: {band['reference']} 2.5-97.5%)",
        )
        ax.tick_params(axis="x", rotation=30)
    fig.tight_layout()
    save_figure(fig, *paths, dpi=130)
