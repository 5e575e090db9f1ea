"""The suite's scores as Markdown tables (validation/work/<suite>/summary.md, VALIDATION.md)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from validation import model_diff, potts_scoring


def _fmt(value: Any) -> str:
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.3g}"
    return str(value)


def samples_table(saved: Mapping[str, Any]) -> list[str]:
    lines = [
        "| study | kind | arch | r0 | r1 | r2 | probe margin (best) | base SAE FVU / L0 / dead | minutes (wall / CPU) |",
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
            f"{f['embedder']}{' layer ' + str(f['layer']) if 'layer' in f else ''}: {_fmt(f['fvu'])} / {_fmt(f['l0'])} / {_fmt(f['dead_fraction'])}"
            for f in s["sae_fit"]
        )
        minutes = (
            f"{s['seconds'] / 60:.1f} / {s['cpu_seconds'] / 60:.1f}"
            if s.get("cpu_seconds")
            else "-"
        )
        lines.append(
            f"| {name} | {s['kind']} | {s['arch']} | {' | '.join(cells)} | "
            f"{margin['accuracy']:.2f} vs perm {margin['permutation_mean']:.2f} ({margin['embedder']}/{margin['pooling']}) | {fit} | {minutes} |"
        )
    return lines


ANALYSIS_COLUMNS = (
    "embedder",
    "layer",
    "analysis",
    "n_changed",
    "n_stable_changed",
    "n_length_effects",
    "n_occurrences",
    "best_feature",
    "best_rank",
    "best_coverage",
    "best_enrichment",
    "best_precision",
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


def verdict_cell(study: Mapping[str, Any]) -> str:
    v = study["verdict"]
    if study["kind"] in ("motif", "composition"):
        where = ", ".join(v["analyses"]) or "no analysis"
        return f"{where}; {v['stable_changed_features']} stable changed features"
    if study["kind"] == "length":
        return (
            f"length baseline separates the rounds: {_fmt(v['length_separates'])}; "
            f"every layer explained by the baselines: {_fmt(v['layers_explained_by_baselines'])}; "
            f"{v['stable_changed_features']} stable changed features, "
            f"{v.get('length_effects', 0)} length effects"
        )
    return f"{v['stable_changed_features']} stable changed features"


def targets_table(scores: Mapping[str, Any]) -> list[str]:
    """The issue's targets: one line per study, then the nulls' false discovery proportion."""
    lines = ["| study | kind | target met | evidence |", "|---|---|---|---|"]
    for name, s in scores["studies"].items():
        lines.append(f"| {name} | {s['kind']} | {_fmt(s['verdict']['met'])} | {verdict_cell(s)} |")
    f = scores["null_fdp"]
    if f["seeds"]:
        lines += [
            "",
            f"Null studies: {f['seeds_with_stable_call']} of {f['seeds']} seeds call a stable "
            f"changed feature ({f['stable_calls']} stable calls in all): realised false discovery "
            f"proportion {f['fdp']:.2f}, Clopper-Pearson 95% [{f['ci_low']:.2f}, "
            f"{f['ci_high']:.2f}]; target (>= 10 seeds, <= 0.05) met: {_fmt(f['met'])}.",
        ]
    return lines


def model_diff_section(studies: Mapping[str, Any]) -> list[str]:
    lines = model_diff.markdown(studies)
    return ["## Model diffing (crosscoder, r vs r0)", "", *lines, ""] if lines else []


def summary_markdown(scores: Mapping[str, Any]) -> str:
    studies = scores["studies"]
    run = scores.get("run")
    cost = (
        [
            f"This run: {run['seconds'] / 60:.1f} min wall, {run['cpu_seconds'] / 60:.1f} CPU min "
            f"(training and workflows), at least {run['idle_seconds_bound'] / 60:.1f} min on "
            f"{run['cores']} idle cores.",
            "",
        ]
        if run
        else []
    )
    return "\n".join(
        [
            *cost,
            "## Targets",
            "",
            *targets_table(scores),
            "",
            "## Studies",
            "",
            *samples_table(studies),
            "",
            "## Analyses (best-matching feature of each)",
            "",
            *analyses_table(studies),
            "",
            *model_diff_section(studies),
            *potts_scoring.summary_lines(studies),
        ]
    )
