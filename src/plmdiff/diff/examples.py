"""Where a changed feature fires: its top sequences per round, as residue strings with marks.

feature_stats keeps, per feature and model, the sequences where the feature's activation is
highest with a window of per-residue activations around that position (`pos`, `pos_end`: the
residue span of the most active token, one residue with a character tokenizer; every residue of
a multi-residue token carries that token's activation); this module picks them for the features
a diff lists and renders them as text (TSV) and HTML (report).
"""

from __future__ import annotations

import html
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

# Residue letter of window positions outside the sequence (feature_stats writes it, its
# activation is NaN there).
PAD_RESIDUE = "-"

EXAMPLE_COLUMNS = [
    "analysis",
    "feature",
    "feature_rank",
    "model",
    "round",
    "example_rank",
    "seq_id",
    "pos",
    "pos_end",
    "value",
    "window_start",
    "window_residues",
    "window_acts",
]


def select_examples(
    ranked: pd.DataFrame,
    stats: Mapping[str, Any],
    evaluator: Mapping[str, str],
    models: Sequence[str],
    n_examples: int,
) -> pd.DataFrame:
    """Top examples of the features in `ranked` (one analysis: columns rank, feature), per round.

    `stats[scheme]` is the reference fold's FeatureStats of each scheme; `evaluator[model]` the
    scheme that encodes that model's sequences in this analysis.
    """
    frames = []
    wanted = ranked[["analysis", "feature", "rank"]].rename(columns={"rank": "feature_rank"})
    for r, model in enumerate(models):
        top = stats[evaluator[model]].top
        rows = top[(top["model"] == model) & (top["rank"] <= n_examples)]
        rows = wanted.merge(rows, on="feature", how="inner")
        rows = rows.rename(columns={"rank": "example_rank"}).assign(round=r)
        frames.append(rows)
    if not frames:
        return pd.DataFrame(columns=EXAMPLE_COLUMNS)
    out = pd.concat(frames, ignore_index=True)
    out = out.sort_values(["feature_rank", "round", "example_rank"], kind="stable")
    return out[EXAMPLE_COLUMNS].reset_index(drop=True)


def marked_text(residues: str, acts: Sequence[float]) -> str:
    """Residues where the feature is active in upper case, others in lower case, the maximum
    in brackets; positions outside the sequence are dropped."""
    values = np.asarray(acts, dtype=float)
    peak = int(np.nanargmax(values)) if np.any(values > 0) else -1
    out = []
    for i, (res, v) in enumerate(zip(residues, values, strict=True)):
        if res == PAD_RESIDUE and np.isnan(v):
            continue
        letter = res.upper() if v > 0 else res.lower()
        out.append(f"[{letter}]" if i == peak else letter)
    return "".join(out)


def html_window(residues: str, acts: Sequence[float], window_start: int) -> str:
    """Residues as spans shaded by activation (relative to the window's maximum), the maximum
    outlined; each span's tooltip gives the 1-based residue position and the activation."""
    values = np.asarray(acts, dtype=float)
    top = float(np.nanmax(values)) if np.any(values > 0) else 0.0
    peak = int(np.nanargmax(values)) if top > 0 else -1
    spans = []
    for i, (res, v) in enumerate(zip(residues, values, strict=True)):
        if np.isnan(v):
            continue  # outside the sequence
        pos = window_start + i + 1
        if v > 0 and top > 0:
            alpha = 0.12 + 0.6 * v / top
            cls = ' class="peak"' if i == peak else ""
            spans.append(
                f'<span{cls} style="background:rgba(230,85,13,{alpha:.2f})" '
                f'title="residue {pos}: {v:.3g}">{html.escape(res)}</span>'
            )
        else:
            spans.append(f'<span title="residue {pos}">{html.escape(res)}</span>')
    return f'<code class="window">{"".join(spans)}</code>'


def examples_tsv(examples: pd.DataFrame) -> pd.DataFrame:
    """A table people read: one row per example, the window as marked text."""
    out = examples.drop(columns=["window_acts", "window_residues"]).copy()
    out["pos"] = out["pos"] + 1  # 1-based residue numbering, as biologists count
    # pos_end is exclusive 0-based, so it is the inclusive 1-based number of the last residue.
    out = out.rename(
        columns={"pos": "residue_position", "pos_end": "residue_end", "value": "activation"}
    )
    out["window"] = [
        marked_text(r, a)
        for r, a in zip(examples["window_residues"], examples["window_acts"], strict=True)
    ]
    return out.drop(columns=["window_start"])
