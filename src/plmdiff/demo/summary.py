"""Did the DPO rounds move the model? Fresh samples of every demo checkpoint, scored alike.

Every checkpoint draws the same sequence indices with the same seed. The sampler's randomness
is a function of (seed, index) alone, so sample k of every round shares its random stream
(common random numbers): differences between rounds come from the models, not the draws, and
the test against the base pairs samples by index (Wilcoxon signed-rank).
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import asdict
from typing import Any

import numpy as np
import pandas as pd

from plmdiff.core.runtime import save_figure
from plmdiff.demo.dpo import ScoredSample

SUMMARY_COLUMNS = [
    "iteration",
    "n_samples",
    "fraction_ended",
    "fraction_valid",
    "reward_mean",
    "reward_se",
    "proxy_mean",
    "proxy_se",
    "coverage_mean",
    "coverage_se",
    "length_mean",
    "length_se",
    "length_term_mean",
    "length_term_se",
    "reward_delta_vs_base",
    "reward_p_vs_base",
]


def mean_se(values: Sequence[float]) -> tuple[float, float]:
    """Mean and its standard error (sample sd / sqrt(n)); nan where undefined."""
    x = np.asarray([v for v in values if not math.isnan(v)], dtype=float)
    if x.size == 0:
        return math.nan, math.nan
    se = float(x.std(ddof=1) / math.sqrt(x.size)) if x.size > 1 else math.nan
    return float(x.mean()), se


def paired_p_value(base: Sequence[ScoredSample], other: Sequence[ScoredSample]) -> float:
    """Two-sided Wilcoxon signed-rank p-value of the reward, samples paired by index."""
    from scipy.stats import wilcoxon

    by_index = {s.index: s.reward for s in base}
    diffs = [s.reward - by_index[s.index] for s in other if s.index in by_index]
    if not any(diffs):
        return 1.0
    return float(wilcoxon(diffs, zero_method="zsplit").pvalue)


def summary_row(
    iteration: int, scored: Sequence[ScoredSample], base: Sequence[ScoredSample]
) -> dict[str, Any]:
    """Reward over all samples (an invalid one scores 0: it is the expected reward per draw);
    length over samples that ended; proxy, beta-helix coverage (reported, not rewarded) and
    length term over valid samples."""
    ended = [s for s in scored if s.ended]
    valid = [s for s in scored if s.valid]
    reward = mean_se([s.reward for s in scored])
    base_reward, _ = mean_se([s.reward for s in base])
    row = {
        "iteration": iteration,
        "n_samples": len(scored),
        "fraction_ended": len(ended) / len(scored) if scored else math.nan,
        "fraction_valid": len(valid) / len(scored) if scored else math.nan,
        "reward_mean": reward[0],
        "reward_se": reward[1],
    }
    for name, values in (
        ("proxy", [s.proxy for s in valid]),
        ("coverage", [s.coverage for s in valid]),
        ("length", [float(s.length) for s in ended]),
        ("length_term", [s.length_term for s in valid]),
    ):
        row[f"{name}_mean"], row[f"{name}_se"] = mean_se(values)
    row["reward_delta_vs_base"] = reward[0] - base_reward
    row["reward_p_vs_base"] = math.nan if iteration == 0 else paired_p_value(base, scored)
    return row


def summarise(rounds: Sequence[Sequence[ScoredSample]]) -> pd.DataFrame:
    """One row per checkpoint (round 0 = base) in SUMMARY_COLUMNS."""
    if not rounds:
        raise ValueError("no rounds to summarise")
    rows = [summary_row(i, scored, rounds[0]) for i, scored in enumerate(rounds)]
    return pd.DataFrame(rows, columns=SUMMARY_COLUMNS)


def samples_long_table(rounds: Sequence[Sequence[ScoredSample]]) -> pd.DataFrame:
    frames = []
    for i, scored in enumerate(rounds):
        table = pd.DataFrame([asdict(s) for s in scored])
        table.insert(0, "iteration", i)
        table.insert(3, "length", [s.length for s in scored])
        frames.append(table)
    return pd.concat(frames, ignore_index=True)


def plot_summary(summary: pd.DataFrame, path: str | os.PathLike, length_target: float) -> None:
    """Reward, proxy and length (mean +- SE) per round, with the family's reference values."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import seaborn as sns

    sns.set_theme(style="whitegrid", context="paper")
    panels = [
        ("reward", "reward (proxy + length term)", None, None),
        ("proxy", "hexapeptide density / family's", 1.0, "family"),
        ("length", "length (residues)", length_target, "length target"),
    ]
    fig, axes = plt.subplots(1, 3, figsize=(10, 3.2), constrained_layout=True)
    for ax, (name, label, reference, reference_label) in zip(axes, panels, strict=True):
        ax.errorbar(
            summary["iteration"],
            summary[f"{name}_mean"],
            yerr=summary[f"{name}_se"].fillna(0),
            marker="o",
            capsize=3,
            color=sns.color_palette()[0],
        )
        if reference is not None:
            ax.axhline(reference, ls="--", color="grey", lw=1, label=reference_label)
            ax.legend(frameon=False, loc="best")
        ax.set_xlabel("DPO round (0 = base)")
        ax.set_ylabel(label)
        ax.set_xticks(summary["iteration"])
    save_figure(fig, path)
