"""The KL-by-round figure: per-sequence KL to the base by round, and along the sequence."""

from __future__ import annotations

import os
from collections.abc import Sequence

import pandas as pd

from plmdiff.core.runtime import save_figure
from plmdiff.kl.divergence import BASE_SET, OWN, position_profile


def plot_kl_by_round(
    frames: Sequence[pd.DataFrame], models: Sequence[str], paths: Sequence[str | os.PathLike]
) -> None:
    """Per-sequence mean KL by round (both sequence sets), and mean KL along the sequence."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import seaborn as sns

    data = pd.concat(frames, ignore_index=True)
    data["set"] = data["set"].map({OWN: "model's own samples", BASE_SET: "base samples"})
    fig, axes = plt.subplots(1, 2, figsize=(11, 4), gridspec_kw={"width_ratios": [1.2, 1]})
    sns.boxplot(
        data=data,
        x="model",
        y="kl_mean",
        hue="set",
        order=list(models),
        ax=axes[0],
        fliersize=2,
        showmeans=True,
        meanprops={"marker": "o", "markerfacecolor": "white", "markeredgecolor": "black"},
    )
    axes[0].set(
        xlabel="round (model)",
        ylabel="mean KL(model || base) per sequence [nats]",
        title="KL to the base by round",
    )
    axes[0].legend(title=None, fontsize=8)
    prof = position_profile(frames)
    prof = prof[prof["set"] == OWN]
    if not prof.empty:
        sns.lineplot(
            data=prof,
            x="position",
            y="kl",
            hue="model",
            hue_order=list(models),
            ax=axes[1],
            marker="o",
            markersize=3,
        )
    axes[1].set(
        xlabel="relative position (0 = first residue, 1 = <end>)",
        ylabel="mean KL per token [nats]",
        title="Along the sequence (own samples)",
    )
    fig.tight_layout()
    save_figure(fig, *paths, dpi=130)
