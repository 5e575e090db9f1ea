"""The standalone HTML report: every stage's tables and figures in one file that opens anywhere.

The `report` rule hands over the outputs of every stage's final rules as `ReportItem`s (file,
stage, the caption template its rule gives `report()`, the wildcards that made it). Figures are
embedded as base64 PNG, tables rendered from their TSV, and captions rendered from the same
`report/*.rst` templates that `snakemake --report` uses, so both reports say the same thing.
The page skeleton and its style sheet are package data (templates/page.html, report.css); this
module renders what goes into them. Only the standard library, numpy and pandas are needed (the
`report` conda environment).
"""

from __future__ import annotations

import base64
import datetime as dt
import html
import json
import logging
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cache
from importlib import resources
from pathlib import Path
from string import Template
from types import SimpleNamespace
from typing import Any

import numpy as np
import pandas as pd

from plmdiff.core.errors import DataError
from plmdiff.core.runtime import atomic_path
from plmdiff.diff.examples import html_window

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
        "potts",
        "Potts models",
        "How the sampled family's fields and couplings moved per round, and whether the rounds "
        "stay inside the family's energy band.",
    ),
]
TABLE_ROWS = 25
LONG_TABLE = 12
DIFF_ROWS = 20
EXAMPLE_FEATURES = 8
DIFF_HIDDEN = ("p_value", "folds_present", "folds_changed")
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
    "dense_fraction",
    "ce_loss_recovered",
    "ce_loss_clean",
    "ce_loss_spliced",
    "ce_loss_zero_ablated",
]


@dataclass(frozen=True)
class ReportItem:
    """One output file of a stage, as the report rule hands it over."""

    stage: str
    path: str
    caption: str | None = None
    wildcards: Mapping[str, str] = field(default_factory=dict)
    labels: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ReportItem:
        return cls(
            stage=str(data["stage"]),
            path=str(data["path"]),
            caption=data.get("caption"),
            wildcards=dict(data.get("wildcards") or {}),
            labels=dict(data.get("labels") or {}),
        )

    @property
    def suffix(self) -> str:
        return Path(self.path).suffix.lower()

    @property
    def name(self) -> str:
        return Path(self.path).name

    def label(self) -> str:
        parts = [f"{k} {v}" for k, v in self.wildcards.items()]
        return ", ".join(parts)


# ----------------------------------------------------------------------------- captions


def render_template(text: str, config: Mapping[str, Any], wildcards: Mapping[str, str]) -> str:
    """Fill a caption's `{{ ... }}` fields as Snakemake does (jinja2 when available)."""
    ns = SimpleNamespace(config=config, wildcards=SimpleNamespace(**wildcards))
    try:
        import jinja2

        return jinja2.Template(text).render(snakemake=ns)
    except ImportError:
        pass

    def field_value(match: re.Match[str]) -> str:
        expr = match.group(1).strip()
        try:
            return str(eval(expr, {"__builtins__": {}}, {"snakemake": ns}))
        except Exception:
            return match.group(0)

    return re.sub(r"\{\{(.*?)\}\}", field_value, text)


def rst_to_html(text: str) -> str:
    """The reStructuredText our captions use: paragraphs, **bold**, *italic*, ``code``, escapes."""
    paragraphs = [p for p in re.split(r"\n\s*\n", text.strip()) if p.strip()]
    out = []
    for para in paragraphs:
        s = html.escape(" ".join(line.strip() for line in para.splitlines()), quote=False)
        s = re.sub(r"``(.+?)``", r"<code>\1</code>", s)
        s = re.sub(r"(?<![`\w])`([^`]+?)`(?![`\w])", r"<code>\1</code>", s)
        s = re.sub(r"\*\*(.+?)\*\*", r"<b>\1</b>", s)
        s = re.sub(r"(?<![\w*])\*(?!\s)(.+?)(?<!\s)\*(?![\w*])", r"<i>\1</i>", s)
        s = s.replace("\\|", "|").replace("\\", "")
        out.append(f"<p>{s}</p>")
    return "\n".join(out)


# Captions already on the page: a caption repeated for every layer or family is folded away.
_SHOWN_CAPTIONS: set[str] = set()


def caption_html(item: ReportItem, config: Mapping[str, Any]) -> str:
    if not item.caption or not Path(item.caption).is_file():
        return ""
    body = rst_to_html(render_template(Path(item.caption).read_text(), config, item.wildcards))
    template = str(Path(item.caption).resolve())
    if template in _SHOWN_CAPTIONS:
        return details(
            "caption (as above)", f'<div class="caption">{body}</div>', cls="caption-fold"
        )
    _SHOWN_CAPTIONS.add(template)
    return f'<div class="caption">{body}</div>'


# ----------------------------------------------------------------------------- blocks


def fmt_value(value: Any) -> str:
    if value is None or (isinstance(value, float) and np.isnan(value)) or value is pd.NA:
        return '<span class="na">NA</span>'
    if isinstance(value, bool | np.bool_):
        return "yes" if value else "no"
    if isinstance(value, float | np.floating):
        v = float(value)
        if v != 0 and (abs(v) < 1e-3 or abs(v) >= 1e5):
            return f"{v:.3g}"
        return f"{v:.4g}"
    return html.escape(str(value))


def table_html(
    frame: pd.DataFrame,
    *,
    max_rows: int = TABLE_ROWS,
    source: str | None = None,
    cell_class: Mapping[str, Any] | None = None,
) -> str:
    """An HTML table of `frame` (first max_rows rows; the rest named, not hidden silently)."""
    shown = frame.head(max_rows)
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in shown.columns)
    rows = []
    for _, row in shown.iterrows():
        cells = []
        for col in shown.columns:
            cls = ""
            if cell_class and col in cell_class:
                name = cell_class[col](row[col])
                cls = f' class="{name}"' if name else ""
            numeric = isinstance(row[col], int | float | np.integer | np.floating)
            align = ' style="text-align:right"' if numeric and not cls else ""
            cells.append(f"<td{cls}{align}>{fmt_value(row[col])}</td>")
        rows.append("<tr>" + "".join(cells) + "</tr>")
    note = ""
    if len(frame) > max_rows or source:
        what = f"showing {len(shown)} of {len(frame)} rows" if len(frame) > max_rows else ""
        where = f"full table: <code>{html.escape(source)}</code>" if source else ""
        note = f'<div class="note">{"; ".join(x for x in (what, where) if x)}</div>'
    return (
        f'<div class="table-wrap"><table><thead><tr>{head}</tr></thead>'
        f"<tbody>{''.join(rows)}</tbody></table></div>{note}"
    )


def read_tsv(path: str | os.PathLike) -> pd.DataFrame:
    try:
        return pd.read_csv(path, sep="\t")
    except pd.errors.EmptyDataError:
        return pd.DataFrame()
    except FileNotFoundError:
        raise DataError(f"report input {path} does not exist") from None


def figure_html(path: str | os.PathLike, caption: str = "", title: str = "") -> str:
    path = Path(path)
    if not path.is_file():
        raise DataError(f"report figure {path} does not exist")
    data = base64.b64encode(path.read_bytes()).decode()
    mime = "image/svg+xml" if path.suffix.lower() == ".svg" else "image/png"
    heading = f'<div class="fig-title">{html.escape(title)}</div>' if title else ""
    return (
        f'<figure>{heading}<img alt="{html.escape(path.name)}" src="data:{mime};base64,{data}">'
        f'<figcaption>{caption}<div class="note"><code>{html.escape(str(path))}</code></div>'
        "</figcaption></figure>"
    )


def details(summary: str, body: str, open_: bool = False, cls: str = "") -> str:
    flag = " open" if open_ else ""
    klass = f' class="{cls}"' if cls else ""
    return f"<details{klass}{flag}><summary>{summary}</summary>{body}</details>"


def generic_item(item: ReportItem, config: Mapping[str, Any]) -> str:
    """A figure or table as it comes; other files are listed by name."""
    title = " · ".join(x for x in (item.label(), item.name) if x)
    if item.suffix in (".png", ".svg"):
        return figure_html(item.path, caption_html(item, config), title)
    if item.suffix in (".tsv", ".csv"):
        frame = read_tsv(item.path) if item.suffix == ".tsv" else pd.read_csv(item.path)
        body = f"{caption_html(item, config)}{table_html(frame, source=item.path)}"
        if len(frame) > LONG_TABLE:  # long tables are there, one click away
            return details(f"{html.escape(title)} ({len(frame)} rows)", body)
        return f"<h4>{html.escape(title)}</h4>{body}"
    return ""


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
            f"FDR {get('diff', 'fdr')}, |log2FC| >= {get('diff', 'min_abs_log2_fold_change')},"
            f" direction change >= {get('diff', 'min_direction_change')}, stability cosine "
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
        rows = [_flat_scalars(json.loads(Path(i.path).read_text())) for i in metrics]
        frame = pd.DataFrame(rows)
        cols = [c for c in SAE_METRIC_COLUMNS if c in frame.columns]
        frame = frame[cols].sort_values(
            [c for c in ("embedder", "layer", "scheme", "fold") if c in cols], kind="stable"
        )
        parts.append(table_html(frame, max_rows=200))
    curves = [i for i in items if i.suffix == ".png"]
    first = [i for i in curves if str(i.wildcards.get("fold", "0")) == "0"]
    if first:
        figs = "".join(generic_item(i, config) for i in first)
        parts.append(details(f"Training curves (fold 0, {len(first)} SAEs)", figs))
    return "".join(parts)


def _flat_scalars(data: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(_flat_scalars(value, f"{name}_"))
        elif isinstance(value, str | int | float | bool) or value is None:
            out[name] = value
    return out


def _mark_class(value: Any) -> str:
    return "mark" if isinstance(value, str) and value else ""


def _change_class(value: Any) -> str:
    return {"up": "up", "down": "down", "direction": "dir"}.get(str(value), "")


def diff_html(items: Sequence[ReportItem], config: Mapping[str, Any]) -> str:
    """Per (embedder, layer, family): the top features, volcano, trajectories, top examples."""
    groups: dict[tuple[str, ...], dict[str, ReportItem]] = {}
    for item in items:
        key = tuple(item.wildcards.get(k, "") for k in ("embedder", "layer", "family"))
        groups.setdefault(key, {})[item.name] = item
    parts = []
    for (embedder, layer, family), files in groups.items():
        parts.append(
            f'<h3 id="diff-{embedder}-{layer}-{family}">Layer {html.escape(layer)} · '
            f"family <code>{html.escape(family)}</code> · embedder "
            f"{html.escape(embedder)}</h3>"
        )
        n_changed = 0
        if "features.tsv" in files:
            item = files["features.tsv"]
            frame = read_tsv(item.path)
            for col in ("change", "mark"):  # empty text, not a missing number
                if col in frame:
                    frame[col] = frame[col].astype(object).where(frame[col].notna(), "")
            n_changed = int((frame["change"] != "").sum()) if "change" in frame else 0
            n_unstable = int((frame.get("mark") == "UNSTABLE").sum()) if "mark" in frame else 0
            parts.append(
                f'<p class="lead">{n_changed} of the {len(frame)} listed features are called '
                f"changed; {n_unstable} of them are marked UNSTABLE.</p>"
            )
            parts.append(caption_html(item, config))
            # The page shows what decides a call; p-values and fold counts stay in the TSV.
            frame = frame.drop(columns=[c for c in DIFF_HIDDEN if c in frame])
            parts.append(
                table_html(
                    frame,
                    max_rows=DIFF_ROWS,
                    source=item.path,
                    cell_class={"mark": _mark_class, "change": _change_class},
                )
            )
        figs = [
            figure_html(files[name].path, caption_html(files[name], config))
            for name in ("volcano.png", "trajectories.png")
            if name in files
        ]
        parts.append(f'<div class="pair">{"".join(figs)}</div>')
        if "examples.parquet" in files:
            parts.append(
                examples_html(files["examples.parquet"].path, html_window, open_=n_changed > 0)
            )
    return "".join(parts)


def examples_html(path: str, render_window: Any, *, open_: bool = True) -> str:
    """Top examples of the first features: one row per round, windows with active residues."""
    ex = pd.read_parquet(path)
    if ex.empty:
        return "<p>No top examples (no feature fired in the held-out sequences).</p>"
    blocks = []
    for (analysis, feature, rank), d in ex.groupby(
        ["analysis", "feature", "feature_rank"], sort=False
    ):
        if rank > EXAMPLE_FEATURES:
            continue
        rows = []
        for model, dm in d.groupby("model", sort=False):
            cells = "".join(
                f'<div class="ex">{render_window(r.window_residues, r.window_acts, r.window_start)}'
                f'<span class="note"> {html.escape(r.seq_id)} · residue {r.pos + 1} · '
                f"{r.value:.3g}</span></div>"
                for r in dm.itertuples()
            )
            rows.append(f"<tr><th>{html.escape(str(model))}</th><td>{cells}</td></tr>")
        blocks.append(
            f'<h4>#{rank} · feature {feature} <span class="note">({html.escape(analysis)})'
            f'</span></h4><table class="examples">{"".join(rows)}</table>'
        )
    intro = (
        "<p>Where the top features fire: per round, the held-out sequences with the highest "
        "activation, a window around the most active residue (bold, underlined). Shading is the "
        "activation relative to the window's maximum; hover a residue for its position and "
        "value; unshaded residues are inactive.</p>"
    )
    return details(
        f"Top examples ({min(EXAMPLE_FEATURES, ex['feature_rank'].max())} features)",
        intro + "".join(blocks),
        open_=open_,
    )


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
                f"{table_html(frame, source=item.path, cell_class={'warning': _mark_class})}"
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
    "diff": diff_html,
    "stability": stability_html,
    "kl": kl_html,
    "potts": potts_html,
}


def section_html(stage: str, items: Sequence[ReportItem], config: Mapping[str, Any]) -> str:
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
    _SHOWN_CAPTIONS.clear()
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
            f"{section_html(stage, stage_items, config)}</section>"
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
