"""The report's building blocks: the items a rule hands over, captions, tables, figures.

Captions are rendered from the same `report/*.rst` templates that `snakemake --report` uses, so
both reports say the same thing; figures are embedded as base64 PNG, tables rendered from their
TSV. Only the standard library, numpy and pandas are needed (the `report` conda environment).
"""

from __future__ import annotations

import base64
import html
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pandas as pd

from plmdiff.core.errors import DataError

TABLE_ROWS = 25
LONG_TABLE = 12


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
    """Fill a caption's `{{ ... }}` fields and `{% if %}` blocks as Snakemake does (jinja2 when
    available; otherwise the subset our captions use, with Python expressions)."""
    ns = SimpleNamespace(config=config, wildcards=SimpleNamespace(**wildcards))
    try:
        import jinja2

        return jinja2.Template(text).render(snakemake=ns)
    except ImportError:
        pass

    def evaluate(expr: str) -> Any:
        return eval(expr, {"__builtins__": {}}, {"snakemake": ns})

    def field_value(match: re.Match[str]) -> str:
        try:
            return str(evaluate(match.group(1).strip()))
        except Exception:
            return match.group(0)

    return re.sub(r"\{\{(.*?)\}\}", field_value, _conditional_blocks(text, evaluate))


_BLOCK = re.compile(r"\{%-?\s*(if|elif|else|endif)\b(.*?)-?%\}", re.S)


def _conditional_blocks(text: str, evaluate: Any) -> str:
    """Keep the branches of `{% if %}...{% elif %}...{% else %}...{% endif %}` (nestable) whose
    condition holds; a condition is evaluated only where its block is reached."""
    out: list[str] = []
    # Per open block: (whether the enclosing text is kept, whether a branch was taken).
    stack: list[tuple[bool, bool]] = []
    keep, pos = True, 0
    for match in _BLOCK.finditer(text):
        if keep:
            out.append(text[pos : match.start()])
        pos = match.end()
        kind, expr = match.group(1), match.group(2).strip()
        if kind == "if":
            stack.append((keep, False))
        if kind in ("elif", "else", "endif") and not stack:
            raise DataError(f"caption template: '{{% {kind} %}}' without an open '{{% if %}}'")
        if kind in ("if", "elif"):
            outer, taken = stack[-1]
            keep = outer and not taken and bool(evaluate(expr))
            stack[-1] = (outer, taken or keep)
        elif kind == "else":
            outer, taken = stack[-1]
            keep = outer and not taken
            stack[-1] = (outer, True)
        else:
            keep = stack.pop()[0]
    if stack:
        raise DataError("caption template: an '{% if %}' block is not closed by '{% endif %}'")
    if keep:
        out.append(text[pos:])
    return "".join(out)


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
    if body in _SHOWN_CAPTIONS:
        return details(
            "caption (as above)", f'<div class="caption">{body}</div>', cls="caption-fold"
        )
    _SHOWN_CAPTIONS.add(body)
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


def flat_scalars(data: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(flat_scalars(value, f"{name}_"))
        elif isinstance(value, str | int | float | bool) or value is None:
            out[name] = value
    return out


def mark_class(value: Any) -> str:
    return "mark" if isinstance(value, str) and value else ""


def change_class(value: Any) -> str:
    return {"up": "up", "down": "down", "direction": "dir"}.get(str(value), "")


def clear_shown_captions() -> None:
    """A new page: no caption is on it yet."""
    _SHOWN_CAPTIONS.clear()
