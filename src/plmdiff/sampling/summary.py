"""The sampling summary over models: one table row per model and one figure (plmdiff.sampling.job).

Length distributions are those of each model's VALID samples (ended, canonical), before the
length window, with the window drawn on top: the window cuts them, so the kept lengths alone would
hide how a round shifted them. Perplexities are those of the kept sequences, which every later
stage uses.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from plmdiff.core.fasta import SequenceEntry
from plmdiff.core.runtime import save_figure
from plmdiff.sampling.filtering import OUTCOMES, is_valid, read_samples

SUMMARY_QUANTILES = ("q05", "median", "q95", "mean")


def summary_table(stats: Sequence[Mapping[str, Any]]) -> pd.DataFrame:
    """One row per model (in config order): counts, duplicate fraction, window, length and ppl."""
    rows = []
    for i, s in enumerate(stats):
        row: dict[str, Any] = {"model": s["model"], "order": i}
        row.update({k: s["counts"][k] for k in ("sampled", *OUTCOMES)})
        row["duplicate_fraction"] = s["duplicate_fraction"]
        row["window_low"] = s["window"]["low"]
        row["window_high"] = s["window"]["high"]
        for name in SUMMARY_QUANTILES:
            row[f"length_{name}"] = s["length"][f"length_{name}"]
        for name in SUMMARY_QUANTILES:
            row[f"ppl_{name}"] = s["ppl"][f"ppl_{name}"]
        rows.append(row)
    return pd.DataFrame(rows)


def sample_frame(model: str, shard_paths: Sequence[str]) -> pd.DataFrame:
    """A model's valid samples (length, ppl) for the distribution panels."""
    valid = [s for s in read_samples(shard_paths) if is_valid(s)]
    return pd.DataFrame(
        {
            "model": model,
            "length": [len(s.sequence) for s in valid],
            "ppl": [s.ppl for s in valid],
        }
    )


def kept_ppl_frame(kept: Mapping[str, Iterable[SequenceEntry]]) -> pd.DataFrame:
    """Perplexities of each model's kept sequences (its FASTA entries' `ppl=` field), nan dropped."""
    frame = pd.DataFrame(
        [
            {"model": model, "ppl": float(entry.fields.get("ppl", "nan"))}
            for model, entries in kept.items()
            for entry in entries
        ],
        columns=["model", "ppl"],
    )
    return frame[frame["ppl"].map(lambda v: not math.isnan(v))]


def summary_figure(
    table: pd.DataFrame,
    valid: pd.DataFrame,
    kept_ppl: pd.DataFrame,
    paths: Sequence[str | Path],
) -> None:
    """Four panels: lengths of valid samples (window dashed), ppl of kept sequences, outcome counts,
    duplicate fraction. Written to every path in `paths` (PNG, SVG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import seaborn as sns

    models = list(table["model"])
    palette = dict(zip(models, sns.color_palette("viridis", len(models)), strict=True))
    fig, axes = plt.subplots(2, 2, figsize=(12, 8.5), constrained_layout=True)

    ax = axes[0, 0]
    if len(valid):
        sns.histplot(
            data=valid,
            x="length",
            hue="model",
            hue_order=models,
            palette=palette,
            element="step",
            fill=False,
            stat="density",
            common_norm=False,
            ax=ax,
        )
    lows = set(table["window_low"].dropna())
    highs = set(table["window_high"].dropna())
    for edge in sorted(lows | highs):
        ax.axvline(edge, color="0.3", linestyle="--", linewidth=1)
    ax.set(title="Length of valid samples (dashed: length window)", xlabel="residues")

    ax = axes[0, 1]
    if len(kept_ppl):
        sns.boxplot(
            data=kept_ppl,
            x="model",
            y="ppl",
            hue="model",
            order=models,
            hue_order=models,
            palette=palette,
            legend=False,
            ax=ax,
        )
    ax.set(title="Perplexity of kept sequences (generating model)", xlabel="", ylabel="perplexity")

    ax = axes[1, 0]
    bottom = pd.Series(0, index=table.index, dtype=float)
    colors = dict(zip(OUTCOMES, sns.color_palette("Set2", len(OUTCOMES)), strict=True))
    for outcome in OUTCOMES:
        ax.bar(
            table["model"],
            table[outcome],
            bottom=bottom,
            label=outcome.replace("_", " "),
            color=colors[outcome],
        )
        bottom += table[outcome]
    ax.legend(fontsize="small", ncols=3, loc="upper center", bbox_to_anchor=(0.5, -0.18))
    ax.set(title="Outcome of every sample", ylabel="sequences")

    ax = axes[1, 1]
    fractions = table["duplicate_fraction"].fillna(0.0)
    bars = ax.bar(table["model"], fractions, color=[palette[m] for m in models])
    ax.bar_label(bars, labels=[f"{v:.3f}" for v in fractions], fontsize="small")
    ax.set(
        title="Duplicate fraction (of in-window sequences)",
        ylabel="fraction",
        ylim=(0, max(0.05, 1.1 * fractions.max())),
    )
    for axis in (axes[0, 1], axes[1, 0], axes[1, 1]):
        axis.tick_params(axis="x", rotation=30)
    save_figure(fig, *paths)
