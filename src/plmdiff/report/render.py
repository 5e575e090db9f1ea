"""The standalone HTML report: every stage's tables and figures in one file that opens anywhere.

The `report` rule hands over the outputs of every stage's final rules as `ReportItem`s (file,
stage, the caption template its rule gives `report()`, the wildcards that made it). The page
skeleton and its style sheet are package data (templates/page.html, report.css); this module
renders the sections that go into them (the diff section in `plmdiff.report.diffs`, the blocks
every section uses in `plmdiff.report.blocks`).
"""

from __future__ import annotations

import datetime as dt
import html
import json
import logging
import os
from collections.abc import Iterable, Mapping, Sequence
from functools import cache
from importlib import resources
from pathlib import Path
from string import Template
from typing import Any

import pandas as pd

from plmdiff.core.errors import DataError
from plmdiff.core.runtime import atomic_path
from plmdiff.report import blocks
from plmdiff.report.blocks import (
    ReportItem,
    caption_html,
    details,
    figure_html,
    flat_scalars,
    generic_item,
    mark_class,
    read_tsv,
    render_template,
    rst_to_html,
    table_html,
)
from plmdiff.report.diffs import DEAD_HINT, dead_flag_class, dead_flags, diff_html
from plmdiff.sae.checks import DEAD_FRACTION_FLAG

__all__ = [
    "SECTIONS",
    "ReportItem",
    "build_report",
    "page_html",
    "read_items",
    "render_template",
    "rst_to_html",
    "template",
]

log = logging.getLogger(__name__)

# Sections in reading order: (stage key, title, what the section answers).
SECTIONS = [
    ("overview", "Overview", "Which models were compared, and with which settings."),
    ("sampling", "Sampling", "What each checkpoint generates, and what the length filter kept."),
    ("demo", "Demo DPO", "How the demo's own DPO rounds moved the reward (demo runs only)."),
    (
        "probes",
        "Probe accuracy per layer",
        "At which layers a linear probe tells the rounds apart from a sequence embedding.",
    ),
    ("sanity", "Sanity checks", "Whether the embeddings separate by round beyond chance."),
    ("sae", "SAE metrics", "How well each sparse autoencoder reconstructs its layer."),
    ("diff", "Feature diffs", "Which SAE features changed across rounds, and where they fire."),
    (
        "stability",
        "Stability",
        "Whether those features and changes reappear across fold replicas and SAE schemes.",
    ),
    ("kl", "KL to the base", "How far each model's next-token distribution moved from the base."),
    (
        "model_diff",
        "Model diffing",
        "What changed inside the models on the same tokens: where in depth and along the "
        "sequence the residual stream moved, and which crosscoder latents only the rounds have.",
    ),
    (
        "potts",
        "Potts models",
        "How the sampled family's fields and couplings moved per round, and whether the rounds "
        "stay inside the family's energy band.",
    ),
]

SAE_METRIC_COLUMNS = [
    "embedder",
    "layer",
    "scheme",
    "fold",
    "source",
    "d_sae",
    "k",
    "eval_split",
    "eval_tokens",
    "fvu",
    "explained_variance",
    "mse",
    "l0",
    "dead_fraction",
    "dead_fraction_flag",
    "dense_fraction",
    "ce_loss_recovered",
    "ce_loss_clean",
    "ce_loss_spliced",
    "ce_loss_zero_ablated",
]


# ----------------------------------------------------------------------------- sections


def overview_html(items: Sequence[ReportItem], config: Mapping[str, Any]) -> str:
    rows = []
    records = {Path(i.path).stem: i for i in items if i.suffix == ".json"}
    for r, model in enumerate(m["name"] for m in config.get("models", [])):
        rec: dict[str, Any] = {}
        if model in records:
            rec = json.loads(Path(records[model].path).read_text())
        rows.append(
            {
                "round": r,
                "model": model + (" (base)" if r == 0 else ""),
                "checkpoint": next(m["checkpoint"] for m in config["models"] if m["name"] == model),
                "architecture": rec.get("architecture"),
                "layers": rec.get("n_layers"),
                "d_model": rec.get("d_model"),
                "parameters": rec.get("n_parameters"),
                "fingerprint": (rec.get("fingerprint") or "")[:12] or None,
            }
        )
    models = table_html(pd.DataFrame(rows), max_rows=1000)
    return f"<h3>Models</h3>{models}<h3>Settings</h3>{settings_html(config)}"


def settings_html(config: Mapping[str, Any]) -> str:
    """The settings that decide what the numbers mean, one line per stage."""

    def get(*keys: str) -> Any:
        node: Any = config
        for key in keys:
            if not isinstance(node, Mapping) or key not in node:
                return None
            node = node[key]
        return node

    lines = [
        ("prompt", f"format {get('prompt', 'format')}, label {get('prompt', 'label')!s}"),
        (
            "sampling",
            f"{get('sampling', 'n_sequences')} sequences per model, top-k "
            f"{get('sampling', 'top_k')}, temperature {get('sampling', 'temperature')}, repetition "
            f"penalty {get('sampling', 'repetition_penalty')}, max length "
            f"{get('sampling', 'max_length')}, seed {get('sampling', 'seed')}",
        ),
        (
            "filter",
            f"length {get('filter', 'min_length')}..{get('filter', 'max_length')}, "
            f"relative to base {get('filter', 'relative_to_base')}, dedupe "
            f"{get('filter', 'dedupe')}",
        ),
        (
            "activations",
            f"embedders {get('activations', 'embedders')}, pooled layers "
            f"{get('activations', 'layers')}, token layers {get('activations', 'token_layers')}, "
            f"dtype {get('activations', 'dtype')}",
        ),
        (
            "SAEs",
            f"{get('sae', 'architecture')}, expansion {get('sae', 'expansion')}, k "
            f"{get('sae', 'k')}, layers {get('sae', 'layers')}, schemes {get('sae', 'schemes')}, "
            f"{get('sae', 'kfold')} fold replicas, normalisation {get('sae', 'normalize')}",
        ),
        (
            "diff",
            f"FDR {get('diff', 'fdr')}, posterior |log2FC| interval above "
            f"{get('diff', 'min_abs_log2_fold_change')} (prior {get('diff', 'prior_count')} firings),"
            f" direction cut: null fine-tune quantile {get('diff', 'direction_null_quantile')}, "
            f"floor {get('diff', 'min_direction_change')}, stability cosine "
            f"{get('diff', 'stability_cosine')}, held-out evaluation {get('diff', 'held_out')}",
        ),
        ("KL", f"up to {get('kl', 'max_sequences')} sequences per set"),
        (
            "Potts",
            f"enabled {get('potts', 'enabled')}, family {get('potts', 'family')}, columns "
            f"{get('potts', 'columns')}, coverage >= {get('potts', 'min_coverage')}, "
            f"{get('potts', 'bootstrap')} bootstrap refits, FDR {get('potts', 'fdr')}",
        ),
        ("device", str(get("device"))),
    ]
    body = "".join(f"<tr><th>{html.escape(k)}</th><td>{html.escape(v)}</td></tr>" for k, v in lines)
    return f'<div class="table-wrap"><table class="kv">{body}</table></div>'


def sae_metrics_html(items: Sequence[ReportItem], config: Mapping[str, Any]) -> str:
    metrics = [i for i in items if i.name.endswith(".metrics.json")]
    parts = []
    if metrics:
        rows = [flat_scalars(json.loads(Path(i.path).read_text())) for i in metrics]
        frame = pd.DataFrame(rows)
        cols = [c for c in SAE_METRIC_COLUMNS if c in frame.columns]
        frame = frame[cols].sort_values(
            [c for c in ("embedder", "layer", "scheme", "fold") if c in cols], kind="stable"
        )
        if "dead_fraction" in frame:
            frame.insert(cols.index("dead_fraction") + 1, "dead_flag", dead_flags(frame))
            flagged = frame[frame["dead_flag"] != ""]
            if len(flagged):
                names = ", ".join(
                    " ".join(
                        f"{k} {r[k]}" for k in ("embedder", "layer", "scheme", "fold") if k in r
                    )
                    for r in flagged.to_dict("records")
                )
                parts.append(
                    f'<p class="flag">{len(flagged)} of the {len(frame)} SAEs leave more than '
                    f"{DEAD_FRACTION_FLAG:.0%} of their latents dead on their evaluation tokens: "
                    f"{html.escape(names)}.</p>{DEAD_HINT}"
                )
        parts.append(table_html(frame, max_rows=200, cell_class={"dead_flag": dead_flag_class}))
    curves = [i for i in items if i.suffix == ".png"]
    first = [i for i in curves if str(i.wildcards.get("fold", "0")) == "0"]
    if first:
        figs = "".join(generic_item(i, config) for i in first)
        parts.append(details(f"Training curves (fold 0, {len(first)} SAEs)", figs))
    return "".join(parts)


def stability_html(items: Sequence[ReportItem], config: Mapping[str, Any]) -> str:
    parts = []
    for item in items:
        w = item.wildcards
        title = f"Layer {w.get('layer', '')} · family {w.get('family', '')}"
        if item.suffix == ".tsv":
            parts.append(
                f"<h4>{html.escape(title)}: alignments</h4>{caption_html(item, config)}"
                f"{table_html(read_tsv(item.path), source=item.path)}"
            )
        elif item.suffix == ".png":
            parts.append(figure_html(item.path, caption_html(item, config), title))
    return "".join(parts)


def kl_html(items: Sequence[ReportItem], config: Mapping[str, Any]) -> str:
    parts = []
    tops = [i for i in items if i.name.endswith(".top.tsv")]
    for item in items:
        if item in tops:
            continue
        parts.append(generic_item(item, config))
    if tops:
        frames = [read_tsv(i.path) for i in tops]
        frame = pd.concat([f for f in frames if not f.empty], ignore_index=True)
        frame = frame.sort_values("kl_mean", ascending=False) if "kl_mean" in frame else frame
        if "sequence" in frame:
            frame["sequence"] = frame["sequence"].str.slice(0, 60) + "…"
        parts.append(details("Highest-KL sequences of every model", table_html(frame, max_rows=50)))
    return "".join(parts)


# The Potts summary tables in reading order; per-round files follow them.
POTTS_SUMMARY = ("changes.tsv", "energy.tsv", "energy.png", "fits.tsv", "coverage.tsv")
POTTS_TOP_SITES = 15


def potts_html(items: Sequence[ReportItem], config: Mapping[str, Any]) -> str:
    """Summary tables and the energy figure, then per round the coupling-change map and the
    sites whose fields moved most."""
    summary = {i.name: i for i in items if not i.wildcards}
    parts = []
    for name in POTTS_SUMMARY:
        item = summary.get(name)
        if item is None:
            continue
        if name == "fits.tsv":
            frame = read_tsv(item.path)
            if "warning" in frame:
                frame["warning"] = (
                    frame["warning"].astype(object).where(frame["warning"].notna(), "")
                )
                n_warn = int((frame["warning"] != "").sum())
                if n_warn:
                    parts.append(
                        f'<p class="lead">{n_warn} of {len(frame)} fits have N_eff / L below '
                        "potts.min_neff_per_column: their couplings are mostly regularisation.</p>"
                    )
            parts.append(
                f"<h4>fits</h4>{caption_html(item, config)}"
                f"{table_html(frame, source=item.path, cell_class={'warning': mark_class})}"
            )
        else:
            parts.append(generic_item(item, config))
    by_round: dict[str, dict[str, ReportItem]] = {}
    for item in items:
        if item.wildcards.get("model"):
            by_round.setdefault(item.wildcards["model"], {})[item.name] = item
    for model, files in by_round.items():
        parts.append(f'<h3 id="potts-{html.escape(model)}">{html.escape(model)} vs base</h3>')
        if "couplings.png" in files:
            item = files["couplings.png"]
            parts.append(figure_html(item.path, caption_html(item, config)))
        if "sites.tsv" in files:
            item = files["sites.tsv"]
            frame = read_tsv(item.path).sort_values("field_shift", ascending=False)
            body = caption_html(item, config) + table_html(
                frame, max_rows=POTTS_TOP_SITES, source=item.path
            )
            parts.append(details(f"Sites whose fields moved most ({model})", body))
    return "".join(parts)


STAGE_RENDERERS = {
    "overview": overview_html,
    "sae": sae_metrics_html,
    "stability": stability_html,
    "kl": kl_html,
    "potts": potts_html,
}


def section_html(
    stage: str, by_stage: Mapping[str, Sequence[ReportItem]], config: Mapping[str, Any]
) -> str:
    items = by_stage.get(stage, [])
    if stage == "diff":  # its fit panels read the SAE stage's metrics too
        return diff_html(items, config, sae_items=by_stage.get("sae", []))
    renderer = STAGE_RENDERERS.get(stage)
    if renderer is not None:
        return renderer(items, config)
    return "".join(generic_item(i, config) for i in items)


# ----------------------------------------------------------------------------- page


@cache
def template(name: str) -> str:
    """A file of the package's templates/ directory (package data: found in any install)."""
    return resources.files("plmdiff.report").joinpath("templates", name).read_text("utf-8")


def page_html(title: str, subtitle: str, nav: Sequence[str], body: Sequence[str]) -> str:
    """The page skeleton (templates/page.html) around the sections, the style sheet inlined."""
    return Template(template("page.html")).substitute(
        title=html.escape(title),
        css=template("report.css"),
        subtitle=subtitle,
        nav="".join(nav),
        body="".join(body),
    )


def build_report(
    items: Iterable[ReportItem],
    config: Mapping[str, Any],
    out_path: str | os.PathLike,
    *,
    title: str = "plmdiff report",
) -> str:
    """Render the standalone report to `out_path` (one self-contained HTML file)."""
    blocks.clear_shown_captions()
    by_stage: dict[str, list[ReportItem]] = {}
    for item in items:
        by_stage.setdefault(item.stage, []).append(item)
    unknown = sorted(set(by_stage) - {s for s, _, _ in SECTIONS})
    if unknown:
        raise DataError(
            f"report items of unknown stage(s) {', '.join(unknown)}; accepted: "
            + ", ".join(s for s, _, _ in SECTIONS)
        )
    nav, body = [], []
    for stage, heading, question in SECTIONS:
        stage_items = by_stage.get(stage, [])
        if stage != "overview" and not stage_items:
            nav.append(f'<a class="absent" href="#{stage}">{html.escape(heading)}</a>')
            body.append(
                f'<section id="{stage}"><h2>{html.escape(heading)}</h2>'
                f'<p class="absent-stage">Not part of this run (the stage has no outputs in this '
                f"workflow or is disabled in the config).</p></section>"
            )
            continue
        nav.append(f'<a href="#{stage}">{html.escape(heading)}</a>')
        log.info("report section %s: %d files", stage, len(stage_items))
        body.append(
            f'<section id="{stage}"><h2>{html.escape(heading)}</h2>'
            f'<p class="question">{html.escape(question)}</p>'
            f"{section_html(stage, by_stage, config)}</section>"
        )
    models = [m["name"] for m in config.get("models", [])]
    when = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    subtitle = (
        f"{len(models)} models ({html.escape(' → '.join(models))}) · label "
        f"{html.escape(str(config.get('prompt', {}).get('label', '')))} · generated {when}"
    )
    page = page_html(title, subtitle, nav, body)
    with atomic_path(out_path) as tmp:
        tmp.write_text(page)
    return page


def read_items(data: Iterable[Mapping[str, Any]]) -> list[ReportItem]:
    return [ReportItem.from_json(d) for d in data]
