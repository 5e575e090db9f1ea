"""Figures of a feature diff: volcano, frequency trajectories of top features, the lead
features' trends, stability."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from plmdiff.core.runtime import save_figure
from plmdiff.diff.lead import STABLE, sequence_share_interval
from plmdiff.diff.settings import DiffConfig

COLORS = {"changed, stable": "#d62728", "changed, not stable": "#ff9896", "not changed": "#9e9e9e"}
MAX_TRAJECTORIES = 8


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig: Any, paths: Sequence[str | os.PathLike]) -> None:
    save_figure(fig, *paths, dpi=130)


def status(features: pd.DataFrame) -> pd.Series:
    stable = features["stable"].astype("boolean").fillna(True).to_numpy(dtype=bool)
    changed = features["changed"].to_numpy(dtype=bool)
    return pd.Series(
        np.where(
            changed & stable,
            "changed, stable",
            np.where(changed, "changed, not stable", "not changed"),
        ),
        index=features.index,
    )


def volcano(features: pd.DataFrame, cfg: DiffConfig, paths: Sequence[str | os.PathLike]) -> None:
    """Posterior log2 fold change (last round vs base) against -log10 q, one panel per analysis:
    the two quantities the frequency call reads."""
    import seaborn as sns

    plt = _pyplot()
    analyses = list(dict.fromkeys(features["analysis"]))
    fig, axes = plt.subplots(1, len(analyses), figsize=(5.5 * len(analyses), 4.5), squeeze=False)
    for ax, name in zip(axes[0], analyses, strict=True):
        d = features[features["analysis"] == name].copy()
        d["status"] = status(d)
        floor = np.nanmin(d["q_value"][d["q_value"] > 0]) if (d["q_value"] > 0).any() else 1e-300
        d["mlq"] = -np.log10(d["q_value"].clip(lower=floor / 10))
        tested = d[d["tested"]]
        sns.scatterplot(
            data=tested,
            x="posterior_log2_fold_change",
            y="mlq",
            hue="status",
            palette=COLORS,
            hue_order=list(COLORS),
            s=14,
            linewidth=0,
            ax=ax,
            legend=ax is axes[0][0],
        )
        ax.axhline(-np.log10(cfg.fdr), color="black", lw=0.6, ls="--")
        for x in {-cfg.min_abs_log2_fold_change, cfg.min_abs_log2_fold_change}:
            ax.axvline(x, color="black", lw=0.6, ls=":")
        for row in tested[tested["changed"]].head(5).itertuples():
            ax.annotate(
                str(row.feature),
                (row.posterior_log2_fold_change, row.mlq),
                fontsize=7,
                xytext=(3, 3),
                textcoords="offset points",
            )
        ax.set(
            title=f"{name}: {int(d['changed'].sum())} of {int(d['tested'].sum())} tested changed",
            xlabel="posterior log2 fold change of firing frequency (last round vs base)",
            ylabel="-log10 q (BH)",
        )
    fig.tight_layout()
    _save(fig, paths)


def trajectories(
    features: pd.DataFrame,
    fold_tables: Mapping[tuple[str, int], pd.DataFrame],
    matchings: Mapping[tuple[str, int], Any],
    models: Sequence[str],
    folds: Sequence[int],
    cfg: DiffConfig,
    path: str | os.PathLike,
) -> None:
    """Firing frequency per round of the top-ranked features; dashed: the same feature in the
    other fold replicas (Hungarian partner with cosine >= stability_cosine), each evaluated on
    its own held-out sequences."""
    plt = _pyplot()
    analyses = list(dict.fromkeys(features["analysis"]))
    fig, axes = plt.subplots(1, len(analyses), figsize=(5.5 * len(analyses), 4.2), squeeze=False)
    x = np.arange(len(models))
    palette = plt.get_cmap("tab10")
    for ax, name in zip(axes[0], analyses, strict=True):
        d = features[features["analysis"] == name]
        top = d[d["changed"]].head(MAX_TRAJECTORIES)
        if top.empty:
            top = d.head(min(3, len(d)))
        for i, row in enumerate(top.itertuples()):
            color = palette(i % 10)
            y = [getattr(row, f"freq_{m}") for m in models]
            ax.plot(x, y, marker="o", color=color, label=f"feature {row.feature}")
            for fold in folds[1:]:
                match = matchings.get((name, fold))
                if match is None or not match.matched(cfg.stability_cosine)[row.feature]:
                    continue
                other = fold_tables[(name, fold)].iloc[match.partner[row.feature]]
                ax.plot(x, [other[f"freq_{m}"] for m in models], ls="--", lw=0.8, color=color)
        ax.set_yscale("symlog", linthresh=1e-3)
        ax.set_xticks(x, list(models), rotation=30)
        title = "changed features" if top["changed"].any() else "top-ranked (none changed)"
        ax.set(
            title=f"{name}: {title}",
            xlabel="round (model)",
            ylabel="firing frequency (fraction of tokens)",
        )
        ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    _save(fig, [path])


def lead_trends(
    lead: pd.DataFrame,
    n_sequences: Mapping[str, Sequence[int]],
    analyses: Sequence[str],
    models: Sequence[str],
    path: str | os.PathLike,
) -> None:
    """One panel per lead feature (`plmdiff.diff.lead.lead_features`), one row per analysis:
    the share of held-out sequences in which it fires per round, with its 95% Clopper-Pearson
    interval (`n_sequences[analysis]`: sequences per round), and the share of tokens (right
    axis, no interval: tokens of one sequence are not independent draws)."""
    plt = _pyplot()
    rows = list(analyses)
    n_cols = max([1, *(int((lead["analysis"] == a).sum()) for a in rows)])
    fig, axes = plt.subplots(
        len(rows), n_cols, figsize=(3.1 * n_cols, 2.7 * len(rows)), squeeze=False
    )
    x = np.arange(len(models))
    for axes_row, name in zip(axes, rows, strict=True):
        d = lead[lead["analysis"] == name]
        for ax in axes_row[len(d) :]:
            ax.set_axis_off()
        if d.empty:
            ax = axes_row[0]
            ax.text(
                0.5,
                0.5,
                f"{name}:\nno feature called changed",
                ha="center",
                va="center",
                transform=ax.transAxes,
            )
            continue
        for ax, row in zip(axes_row, d.itertuples(), strict=False):
            share = np.array([getattr(row, f"seqfrac_{m}") for m in models], dtype=float)
            lower, upper = sequence_share_interval(share, n_sequences[name])
            color = "#d62728" if row.lead == STABLE else "#ff9896"
            ax.errorbar(
                x,
                100 * share,
                yerr=100 * np.vstack([share - lower, upper - share]),
                marker="o",
                color=color,
                capsize=3,
                label="sequences",
            )
            ax.set_ylim(bottom=0)
            ax.set_ylabel("% of sequences", fontsize=8)
            tokens = ax.twinx()
            freq = [100 * float(getattr(row, f"freq_{m}")) for m in models]
            tokens.plot(x, freq, ls="--", marker=".", color="#555555", lw=0.8)
            tokens.set_ylim(bottom=0)
            tokens.set_ylabel("% of tokens (dashed)", fontsize=8, color="#555555")
            tokens.tick_params(labelsize=7, colors="#555555")
            ax.set_xticks(x, list(models), fontsize=7)
            ax.tick_params(labelsize=7)
            status = row.change if row.lead == STABLE else f"{row.change}, {row.lead}"
            ax.set_title(f"{name} #{row.rank}: feature {row.feature}\n({status})", fontsize=8)
    fig.tight_layout()
    _save(fig, [path])


def stability(
    features: pd.DataFrame,
    matchings: Mapping[tuple[str, int], Any],
    models: Sequence[str],
    cfg: DiffConfig,
    path: str | os.PathLike,
) -> None:
    """Left: decoder cosine of each fold-0 feature to its Hungarian partner in the other
    replicas. Right: decoder direction change (1 - cos to the base SAE) per round, where
    fine-tuned SAEs are compared."""
    import seaborn as sns

    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    rows = []
    for (name, fold), match in matchings.items():
        d = features[features["analysis"] == name].set_index("feature")
        changed = d["changed"].reindex(np.arange(match.partner.size)).fillna(False).to_numpy()
        for group, mask in (("all features", np.ones_like(changed, bool)), ("changed", changed)):
            rows += [(name, fold, group, c) for c in match.cosine[mask] if not np.isnan(c)]
    if rows:
        data = pd.DataFrame(rows, columns=["analysis", "fold", "features", "cosine"])
        data["features"] = data["analysis"] + ": " + data["features"]
        sns.histplot(
            data=data,
            x="cosine",
            hue="features",
            stat="density",
            common_norm=False,
            element="step",
            bins=40,
            ax=axes[0],
            binrange=(min(0.0, float(data["cosine"].min())), 1.0),
        )
        axes[0].axvline(cfg.stability_cosine, color="black", lw=0.6, ls="--")
        axes[0].set(
            title="Fold replicas: cosine to the matched feature",
            xlabel="decoder cosine (Hungarian partner)",
        )
    else:
        axes[0].text(
            0.5,
            0.5,
            "one replica per SAE (sae.kfold = 1):\nno fold stability",
            ha="center",
            va="center",
            transform=axes[0].transAxes,
        )
        axes[0].set_axis_off()
    cols = [c for c in features.columns if c.startswith("dir_change_")]
    if cols:
        long = features.melt(
            id_vars=["analysis"], value_vars=cols, var_name="round", value_name="1 - cos"
        ).dropna()
        long["round"] = long["round"].str.removeprefix("dir_change_")
        order = list(dict.fromkeys(c.removeprefix("dir_change_") for c in cols))
        sns.boxplot(
            data=long,
            x="round",
            y="1 - cos",
            hue="analysis",
            order=order,
            ax=axes[1],
            fliersize=1.5,
        )
        # The direction cut of each analysis (null quantile, never below the floor).
        for cut in features["direction_cut"].dropna().unique():
            axes[1].axhline(float(cut), color="black", lw=0.6, ls="--")
        axes[1].set(
            title="Decoder direction change vs the base SAE",
            xlabel="fine-tuned SAE (round, or pooled scheme)",
            ylabel="1 - cosine to base decoder row",
        )
    else:
        axes[1].text(
            0.5,
            0.5,
            "the base SAE is compared with itself:\nno direction change",
            ha="center",
            va="center",
            transform=axes[1].transAxes,
        )
        axes[1].set_axis_off()
    fig.tight_layout()
    _save(fig, [path])
