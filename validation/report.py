"""The suite's scores as Markdown tables (validation/work/<suite>/summary.md, VALIDATION.md)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


def _fmt(value: Any) -> str:
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.3g}"
    return str(value)


def samples_table(saved: Mapping[str, Any]) -> list[str]:
    lines = [
        "| study | kind | arch | r0 | r1 | r2 | probe margin (best) | base SAE FVU / L0 / dead | minutes |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, s in saved.items():
        cells = []
        for model in ("r0", "r1", "r2"):
            row = s["samples"][model]
            extra = row.get("motif_share", row.get("class_share"))
            cells.append(
                f"n {row['n']}, len {row['mean_length']:.0f}"
                + (f", {extra:.0%}" if extra is not None else "")
            )
        margin = max(s["probes"], key=lambda p: p["margin"])
        fit = "; ".join(
            f"{f['embedder']}: {_fmt(f['fvu'])} / {_fmt(f['l0'])} / {_fmt(f['dead_fraction'])}"
            for f in s["sae_fit"]
        )
        minutes = f"{s['seconds'] / 60:.1f}" if s.get("seconds") else "-"
        lines.append(
            f"| {name} | {s['kind']} | {s['arch']} | {' | '.join(cells)} | "
            f"{margin['accuracy']:.2f} vs perm {margin['permutation_mean']:.2f} ({margin['embedder']}/{margin['pooling']}) | {fit} | {minutes} |"
        )
    return lines


ANALYSIS_COLUMNS = (
    "embedder",
    "analysis",
    "n_changed",
    "n_stable_changed",
    "n_occurrences",
    "best_feature",
    "best_rank",
    "best_coverage",
    "best_enrichment",
    "best_changed",
    "best_stable",
    "best_change_replication",
    "best_log2_fold_change",
    "best_posterior_log2_fold_change",
    "best_q_value",
    "qualifying",
    "qualifying_best_rank",
    "first_changed_rank_in_target",
)


def analyses_table(saved: Mapping[str, Any]) -> list[str]:
    lines = [
        "| study | " + " | ".join(ANALYSIS_COLUMNS) + " |",
        "|---" * (len(ANALYSIS_COLUMNS) + 1) + "|",
    ]
    for name, s in saved.items():
        for a in s["analyses"]:
            lines.append(
                f"| {name} | " + " | ".join(_fmt(a.get(c, "")) for c in ANALYSIS_COLUMNS) + " |"
            )
    return lines


def summary_markdown(saved: Mapping[str, Any]) -> str:
    return "\n".join(
        [
            "## Studies",
            "",
            *samples_table(saved),
            "",
            "## Analyses (best-matching feature of each)",
            "",
            *analyses_table(saved),
            "",
        ]
    )
