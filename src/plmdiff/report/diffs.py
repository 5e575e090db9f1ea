"""The report's diff section: what each diff leads with, the lenses side by side, the SAEs' fit.

For every (layer, family) the lenses (`activations.embedders`) stand next to each other: one
column per lens with, per analysis, the lead features (`plmdiff.diff.lead`: the stable changed
features, else the called ones, marked), a one-line verdict per feature written from its numbers
only, the diff rule's lead figure, the lead features' top examples with their active residues
marked, and the fit of the SAEs that evaluate the rounds. The section opens with a table that
pairs the lenses per analysis; the full ranked tables and figures follow each diff, one click
away.
"""

from __future__ import annotations

import html
import json
import math
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from plmdiff.config.schema import SELF_EMBEDDER
from plmdiff.core.errors import DataError
from plmdiff.diff.analyses import family_analyses
from plmdiff.diff.examples import html_window
from plmdiff.diff.lead import LEAD_FEATURES, STABLE, lead_features
from plmdiff.diff.tables import FIT_METRICS
from plmdiff.report.blocks import (
    ReportItem,
    caption_html,
    change_class,
    details,
    figure_html,
    fmt_value,
    mark_class,
    read_tsv,
    table_html,
)
from plmdiff.sae.checks import DEAD_FRACTION_FLAG

DIFF_ROWS = 20
EXAMPLE_FEATURES = 8
DIFF_HIDDEN = ("p_value", "folds_present", "folds_changed")
# Columns the diff may add (posterior fold change); read when present, never required.
POSTERIOR = "posterior_log2_fold_change"
FIT_TABLE = "fit.tsv"
# In the validation suite a mostly dead dictionary came from too few optimiser steps, not too
# many latents: its SAEs were 80-97% dead at lr 4e-4 on 80k tokens and gave clean residue
# latents at 2e-3 on 160k (VALIDATION.md "SAE training").
DEAD_HINT = (
    '<p class="flag-hint">A mostly dead dictionary covers less of the layer than its size says, '
    "and its live latents tend to blend several concepts, so fewer changes are found. In "
    "plmdiff's validation suite the cause was too few optimiser steps (VALIDATION.md, \"SAE "
    'training"): raise <code>sae.training_tokens</code> or '
    "<code>sae.lr</code> and compare the dead fraction and FVU of the new SAEs, or use fewer "
    "latents (<code>sae.expansion</code> or <code>sae.d_sae</code>).</p>"
)
# The fit table as the report shows it: per model, the diff's fit metrics but the token count.
FIT_COLUMNS = ("model", *(m for m in FIT_METRICS if m != "n_tokens"))
LENS_TEXT = {
    "base": "the base model embeds every round's samples, so a change is a change in the data",
    "self": "each model embeds its own samples, so a change is a change in the model's "
    "representation of what it generates",
}


# ----------------------------------------------------------------------------- numbers as words


def _num(value: Any) -> float | None:
    """A finite number, or None (missing, NA, NaN, text)."""
    try:
        v = float(value)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


def _finite(value: Any) -> bool:
    return _num(value) is not None


def pct(share: Any) -> str:
    """A share as a percentage with two significant digits below 10% ('0.10%', '3.4%', '31%')."""
    value = _num(share)
    if value is None:
        return "NA"
    v = 100 * value
    if v == 0:
        return "0%"
    if v >= 10:
        return f"{v:.0f}%"
    if v >= 1:
        return f"{v:.1f}%"
    return f"{v:#.2g}%"


def q_text(q: Any) -> str:
    """A q-value as people write it ('0.012', '3e-7'); 'not tested' without one."""
    q = _num(q)
    if q is None:
        return "not tested"
    if q == 0:
        return "0"
    if q < 1e-3:
        mantissa, exponent = f"{q:.0e}".split("e")
        return f"{mantissa}e{int(exponent)}"
    return f"{q:.2g}"


def per_round(row: Mapping[str, Any], prefix: str, models: Sequence[str]) -> str:
    """'a → b → c': one share per round, from columns `{prefix}{model}`."""
    if not all(f"{prefix}{m}" in row for m in models):
        return "not computed"
    return " → ".join(pct(row[f"{prefix}{m}"]) for m in models)


def fold_change_text(row: Mapping[str, Any]) -> str:
    """The posterior log2 fold change with its 95% interval when the diff computed one, else the
    observed log2 fold change (last round vs base)."""
    post = _num(row.get(POSTERIOR))
    if post is not None:
        # The 95% credible interval of the gamma-Poisson posterior (plmdiff.diff.evidence).
        sd = _num(row.get(f"{POSTERIOR}_sd"))
        interval = "" if sd is None else f" [{post - 1.96 * sd:+.2f}, {post + 1.96 * sd:+.2f}]"
        return f"posterior log2 FC {post:+.2f}{interval}"
    observed = _num(row.get("log2_fold_change"))
    return f"log2 FC {observed:+.2f}" if observed is not None else "log2 FC NA"


def replication_text(row: Mapping[str, Any]) -> str:
    """'k/n replicas' in which the change was called in the same direction (replica 0 included);
    'one replica' when no replica could check it."""
    k, n = _num(row.get("folds_changed")), _num(row.get("n_folds"))
    if k is not None and n is not None:
        return f"{int(k)}/{int(n)} replicas"
    rep = _num(row.get("change_replication"))
    if rep is not None:
        return f"{rep:.0%} of replicas"
    return "one replica (not checked)"


def verdict(row: Mapping[str, Any], models: Sequence[str]) -> str:
    """One line about one lead feature, from its numbers only: direction over the rounds, share
    of sequences and tokens it fires in (base, last round), fold change, q, replication."""
    first, last = models[0], models[-1]
    change = str(row.get("change") or "")
    if change in ("up", "down"):
        head = f"{change} {first} → {last}"
    elif change == "direction":
        moved = _num(row.get("direction_change"))
        head = "decoder direction moved" + (f" (1 - cos {moved:.2f})" if moved is not None else "")
    else:
        head = "not called"
    seq = [row.get(f"seqfrac_{m}") for m in (first, last)]
    tok = [row.get(f"freq_{m}") for m in (first, last)]
    fires = f"fires in {pct(tok[0])} → {pct(tok[1])} of tokens"
    if all(_finite(s) for s in seq):
        fires = (
            f"fires in {pct(seq[0])} → {pct(seq[1])} of sequences "
            f"({pct(tok[0])} → {pct(tok[1])} of tokens)"
        )
    text = (
        f"{head}: {fires}, {fold_change_text(row)}, q {q_text(row.get('q_value'))}, "
        f"change called in {replication_text(row)}"
    )
    status = row.get("lead", STABLE)
    return text if status == STABLE else f"{status}: {text}"


# ----------------------------------------------------------------------------- lenses


def lens(embedder: str, base: str) -> str:
    """'base', 'self', or the model that embeds every round's samples."""
    if embedder == SELF_EMBEDDER:
        return "self"
    return "base" if embedder == base else embedder


def lens_title(embedder: str, base: str) -> str:
    name = lens(embedder, base)
    if name in LENS_TEXT:
        return f"{name} lens"
    return f"lens of {name}"


def lens_order(embedder: str, base: str) -> tuple[int, str]:
    return ({"base": 0, "self": 1}.get(lens(embedder, base), 2), embedder)


def lenses_sentence(embedders: Sequence[str], base: str) -> str:
    """What each lens that ran measures (activations.embedders)."""
    said = []
    for e in sorted(set(embedders), key=lambda e: lens_order(e, base)):
        name = lens(e, base)
        what = LENS_TEXT.get(name, f"{name} embeds every round's samples")
        said.append(f"<b>{html.escape(lens_title(e, base))}</b>: {html.escape(what)}")
    return f'<p class="lenses-note">{"; ".join(said)}.</p>'


# ----------------------------------------------------------------------------- SAE fit


def dead_flags(frame: pd.DataFrame) -> pd.Series:
    """Per row, 'over 50% dead' where the SAE's `dead_fraction_flag` says so (or, without that
    column, its dead fraction is above DEAD_FRACTION_FLAG); '' otherwise."""
    dead = pd.to_numeric(frame["dead_fraction"], errors="coerce")
    flagged = dead > DEAD_FRACTION_FLAG
    if "dead_fraction_flag" in frame:
        given = frame["dead_fraction_flag"].astype("boolean")
        flagged = given.fillna(flagged).astype(bool)
    label = f"over {DEAD_FRACTION_FLAG:.0%} dead"
    return pd.Series(["" if not f else label for f in flagged], index=frame.index, dtype=object)


def dead_flag_class(value: Any) -> str:
    return "flag" if isinstance(value, str) and value else ""


def sae_metric_rows(sae_items: Sequence[ReportItem]) -> pd.DataFrame:
    rows = []
    for item in sae_items:
        if item.name.endswith(".metrics.json"):
            rows.append(json.loads(Path(item.path).read_text()))
    return pd.DataFrame(rows)


def evaluating_sae_rows(
    metrics: pd.DataFrame, embedder: str, layer: str, family: str, models: Sequence[str]
) -> pd.DataFrame:
    """The SAE-stage metrics of the SAEs that evaluate the rounds of one diff (replica 0, whose
    features the diff ranks), one row per (analysis, SAE), with the models it evaluates."""
    need = {"embedder", "layer", "scheme", "fold"}
    if metrics.empty or not need <= set(metrics.columns):
        return pd.DataFrame()
    mine = metrics[
        (metrics["embedder"].astype(str) == embedder)
        & (metrics["layer"].astype(int) == int(layer))
        & (metrics["fold"].astype(int) == int(metrics["fold"].astype(int).min()))
    ]
    try:
        analyses = family_analyses(family, list(mine["scheme"].astype(str)), models)
    except DataError:
        return pd.DataFrame()
    rows = []
    for an in analyses:
        by_scheme: dict[str, list[str]] = {}
        for model, scheme in an.evaluator.items():
            by_scheme.setdefault(scheme, []).append(model)
        for scheme, evaluated in by_scheme.items():
            hit = mine[mine["scheme"].astype(str) == scheme]
            if hit.empty:
                continue
            rec = hit.iloc[0]
            split, trained_on = rec.get("eval_split"), rec.get("models")
            on = f"{split} tokens" if isinstance(split, str) else "evaluation tokens"
            if isinstance(trained_on, list) and trained_on:
                on += " of " + ", ".join(map(str, trained_on))
            rows.append(
                {
                    "analysis": an.name,
                    "evaluates": ", ".join(evaluated),
                    "sae": f"{scheme} fold {int(rec['fold'])}",
                    "evaluated_on": on,
                    **{c: rec.get(c) for c in ("fvu", "l0", "dead_fraction")},
                    **(
                        {"dead_fraction_flag": rec["dead_fraction_flag"]}
                        if "dead_fraction_flag" in rec and rec["dead_fraction_flag"] is not None
                        else {}
                    ),
                }
            )
    return pd.DataFrame(rows)


def _with_dead_flags(frame: pd.DataFrame) -> pd.DataFrame:
    """The frame with a `dead_flag` column after `dead_fraction` (the flag column it may have
    had folded into it)."""
    if "dead_fraction" not in frame:
        return frame
    out = frame.drop(columns=["dead_fraction_flag"], errors="ignore")
    out.insert(list(out.columns).index("dead_fraction") + 1, "dead_flag", dead_flags(frame))
    return out


def fit_html(
    files: Mapping[str, ReportItem],
    metrics: pd.DataFrame,
    embedder: str,
    layer: str,
    family: str,
    models: Sequence[str],
    config: Mapping[str, Any],
) -> str:
    """Per model, the fit of the SAE that evaluates it, so a change in fit is not read as a
    change in features: the diff's fit.tsv when it wrote one; the SAE stage's metrics always."""
    parts, flagged = [], False
    if FIT_TABLE in files:
        item = files[FIT_TABLE]
        fit = read_tsv(item.path)
        for col in FIT_COLUMNS:
            if col not in fit:
                fit[col] = "not computed"
        fit = _with_dead_flags(fit)
        flagged |= bool((fit.get("dead_flag", pd.Series(dtype=object)) != "").any())
        parts.append(
            "<p>Per model, the evaluating SAE on that model's held-out tokens (this diff's "
            f"<code>{FIT_TABLE}</code>).</p>{caption_html(item, config)}"
            + table_html(
                fit, max_rows=100, source=item.path, cell_class={"dead_flag": dead_flag_class}
            )
        )
    else:
        parts.append(
            "<p>Per model, on that model's held-out tokens: not computed (this diff wrote no "
            f"<code>{FIT_TABLE}</code>).</p>"
        )
    rows = evaluating_sae_rows(metrics, embedder, layer, family, models)
    if rows.empty:
        parts.append("<p>SAE-stage metrics of the evaluating SAEs: not in this run.</p>")
    else:
        rows = _with_dead_flags(rows)
        flagged |= bool((rows["dead_flag"] != "").any())
        parts.append(
            "<p>The evaluating SAEs as the SAE stage measured them, on their own evaluation "
            "tokens:</p>"
            + table_html(rows, max_rows=100, cell_class={"dead_flag": dead_flag_class})
        )
    if flagged:
        parts.append(DEAD_HINT)
    flag = f' <span class="flag">over {DEAD_FRACTION_FLAG:.0%} dead latents</span>'
    return details(
        "Fit of the evaluating SAEs (FVU, L0, dead fraction)" + (flag if flagged else ""),
        "".join(parts),
        open_=flagged,
    )


# ----------------------------------------------------------------------------- lead features


def analysis_counts(features: pd.DataFrame) -> pd.DataFrame:
    """Per analysis: features tested, called changed, and called changed and stable."""
    rows = []
    for name, d in features.groupby("analysis", sort=False):
        called = d["changed"].to_numpy(dtype=bool)
        stable = d["stable"].astype("boolean").fillna(False).to_numpy(dtype=bool)
        rows.append(
            {
                "analysis": name,
                "tested": int(d["tested"].sum()) if "tested" in d else len(d),
                "called": int(called.sum()),
                "stable_called": int((called & stable).sum()),
                "single_replica": bool(d["stable"].isna().all()),
                # Diffs written before the position-matched comparison have no such column.
                "length_effects": (
                    int(d["length_effect"].astype(bool).sum()) if "length_effect" in d else None
                ),
            }
        )
    return pd.DataFrame(rows)


def length_sentence(c: Mapping[str, Any]) -> str:
    """The frequency changes that do not hold at matched positions (plmdiff.diff.statistics),
    said apart from the changed features ('' when none, or not computed)."""
    n = c.get("length_effects")
    if n is None or pd.isna(n) or not n:
        return ""
    return (
        f" {int(n)} feature{'s' if n != 1 else ''} changed with the sequences' lengths "
        "(length_effect in features.parquet; not counted as changed)."
    )


def counts_sentence(c: Mapping[str, Any]) -> str:
    """What an analysis called, and what it leads with because of it."""
    return _counts_head(c) + length_sentence(c)


def _counts_head(c: Mapping[str, Any]) -> str:
    head = (
        f"{c['called']} of {c['tested']} tested features called changed, "
        f"{c['stable_called']} of them stable"
    )
    if c["stable_called"]:
        shown = min(LEAD_FEATURES, c["stable_called"])
        which = "it" if shown == 1 else f"the best-ranked {shown}"
        return f"{head}; the diff leads with {which}."
    if not c["called"]:
        return f"{head}. No feature changed in this analysis."
    why = (
        "with one replica per SAE (sae.kfold 1) no change could be checked for replication"
        if c["single_replica"]
        else "no called change replicates across the fold replicas"
    )
    mark = "single replica" if c["single_replica"] else "UNSTABLE"
    shown = min(LEAD_FEATURES, c["called"])
    return (
        f"{head}: <b>nothing is stable and changed</b> ({why}). The {shown} best-ranked called "
        f"features are shown, marked {mark}."
    )


def lead_table_html(lead: pd.DataFrame, models: Sequence[str]) -> str:
    """The lead features of one analysis: their numbers, and the verdict under each."""
    has_posterior = POSTERIOR in lead
    fc_head = "posterior log2 FC [95%]" if has_posterior else "log2 FC (last vs base)"
    heads = [
        "rank",
        "feature",
        "change",
        "status",
        fc_head,
        "q",
        "change called in",
        f"sequences ({' → '.join(models)})",
        f"tokens ({' → '.join(models)})",
    ]
    body = []
    for row in lead.to_dict("records"):
        status = str(row["lead"])
        cells = [
            fmt_value(row["rank"]),
            fmt_value(row["feature"]),
            f'<span class="{change_class(row.get("change"))}">{fmt_value(row.get("change"))}</span>',
            f'<span class="{"" if status == STABLE else "mark"}">{html.escape(status)}</span>',
            html.escape(re.sub(r"^(posterior )?log2 FC ", "", fold_change_text(row))),
            html.escape(q_text(row.get("q_value"))),
            html.escape(replication_text(row)),
            html.escape(per_round(row, "seqfrac_", models)),
            html.escape(per_round(row, "freq_", models)),
        ]
        body.append("<tr>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
        body.append(
            f'<tr class="verdict"><td colspan="{len(heads)}">{html.escape(verdict(row, models))}'
            "</td></tr>"
        )
    head = "".join(f"<th>{html.escape(h)}</th>" for h in heads)
    return (
        f'<div class="table-wrap"><table class="lead"><thead><tr>{head}</tr></thead>'
        f"<tbody>{''.join(body)}</tbody></table></div>"
    )


def residue_label(row: Any) -> str:
    """'residue 12', or 'residues 12-14' for a token of several residues (1-based)."""
    end = int(getattr(row, "pos_end", row.pos + 1))
    return f"residue {row.pos + 1}" if end <= row.pos + 1 else f"residues {row.pos + 1}-{end}"


def feature_examples_html(examples: pd.DataFrame, title: str) -> str:
    """One feature's top examples: per round, windows with the active residues marked."""
    rows = []
    for model, dm in examples.groupby("model", sort=False):
        cells = "".join(
            f'<div class="ex">{html_window(r.window_residues, r.window_acts, r.window_start)}'
            f'<span class="note"> {html.escape(r.seq_id)} · {residue_label(r)} · '
            f"{r.value:.3g}</span></div>"
            for r in dm.itertuples()
        )
        rows.append(f"<tr><th>{html.escape(str(model))}</th><td>{cells}</td></tr>")
    return f'<h5>{title}</h5><table class="examples">{"".join(rows)}</table>'


EXAMPLES_INTRO = (
    "<p>Per round, the held-out sequences with the highest activation, a window around the most "
    "active residue (bold, underlined). Shading is the activation relative to the window's "
    "maximum; hover a residue for its position and value; unshaded residues are inactive.</p>"
)


def lead_examples_html(examples: pd.DataFrame | None, lead: pd.DataFrame, top_n: Any) -> str:
    """Top examples of the lead features of one analysis (the diff stores them for its top_n)."""
    if examples is None:
        return "<p>Top examples: not in this run (no examples.parquet).</p>"
    blocks = []
    for row in lead.itertuples():
        ex = examples[(examples["analysis"] == row.analysis) & (examples["feature"] == row.feature)]
        title = f"#{row.rank} · feature {row.feature}"
        if ex.empty:
            why = (
                f"its rank is beyond diff.top_n ({top_n})"
                if _finite(top_n) and row.rank > int(top_n)
                else "it fired in none of the held-out sequences kept as examples"
            )
            blocks.append(f'<h5>{title}</h5><p class="note">No stored examples: {why}.</p>')
        else:
            blocks.append(feature_examples_html(ex, title))
    return details("Top examples of the lead features", EXAMPLES_INTRO + "".join(blocks), True)


def examples_html(path: str, *, open_: bool = True) -> str:
    """Top examples of the first listed features of every analysis."""
    ex = pd.read_parquet(path)
    if ex.empty:
        return "<p>No top examples (no feature fired in the held-out sequences).</p>"
    blocks = []
    for (analysis, feature, rank), d in ex.groupby(
        ["analysis", "feature", "feature_rank"], sort=False
    ):
        if rank > EXAMPLE_FEATURES:
            continue
        title = f'#{rank} · feature {feature} <span class="note">({html.escape(analysis)})</span>'
        blocks.append(feature_examples_html(d, title))
    return details(
        f"Top examples ({min(EXAMPLE_FEATURES, ex['feature_rank'].max())} features)",
        EXAMPLES_INTRO + "".join(blocks),
        open_=open_,
    )


def listed_features_html(files: Mapping[str, ReportItem], config: Mapping[str, Any]) -> str:
    """The diff's ranked table (features.tsv), volcano, trajectories and top examples."""
    parts = []
    if "features.tsv" in files:
        item = files["features.tsv"]
        frame = read_tsv(item.path)
        for col in ("change", "mark"):  # empty text, not a missing number
            if col in frame:
                frame[col] = frame[col].astype(object).where(frame[col].notna(), "")
        parts.append(caption_html(item, config))
        # The page shows what decides a call; p-values and fold counts stay in the TSV.
        frame = frame.drop(columns=[c for c in DIFF_HIDDEN if c in frame])
        parts.append(
            table_html(
                frame,
                max_rows=DIFF_ROWS,
                source=item.path,
                cell_class={"mark": mark_class, "change": change_class},
            )
        )
    figs = [
        figure_html(files[name].path, caption_html(files[name], config))
        for name in ("volcano.png", "trajectories.png")
        if name in files
    ]
    parts.append(f'<div class="pair">{"".join(figs)}</div>')
    if "examples.parquet" in files:
        parts.append(examples_html(files["examples.parquet"].path, open_=False))
    return details("Ranked features, volcano, trajectories and top examples", "".join(parts))


def diff_job_html(
    files: Mapping[str, ReportItem],
    metrics: pd.DataFrame,
    embedder: str,
    layer: str,
    family: str,
    config: Mapping[str, Any],
) -> str:
    """One diff job (lens, layer, family): lead features per analysis, lead figure, examples,
    the evaluating SAEs' fit, then everything the diff listed."""
    models = [m["name"] for m in config.get("models", [])]
    parts = []
    examples = (
        pd.read_parquet(files["examples.parquet"].path) if "examples.parquet" in files else None
    )
    top_n = config.get("diff", {}).get("top_n")
    if "features.parquet" in files:
        features = pd.read_parquet(files["features.parquet"].path)
        lead = lead_features(features)
        for c in analysis_counts(features).to_dict("records"):
            d = lead[lead["analysis"] == c["analysis"]]
            parts.append(
                f"<h5>Analysis <code>{html.escape(str(c['analysis']))}</code></h5>"
                f'<p class="lead">{counts_sentence(c)}</p>'
            )
            if len(d):
                parts.append(lead_table_html(d, models))
                parts.append(lead_examples_html(examples, d, top_n))
    else:
        parts.append("<p>Lead features: not in this run (no features.parquet).</p>")
    if "lead.png" in files:
        parts.append(figure_html(files["lead.png"].path, caption_html(files["lead.png"], config)))
    parts.append(fit_html(files, metrics, embedder, layer, family, models, config))
    parts.append(listed_features_html(files, config))
    return "".join(parts)


def paired_summary_html(
    groups: Mapping[tuple[str, str], Mapping[str, Mapping[str, ReportItem]]],
    lenses: Sequence[str],
    config: Mapping[str, Any],
) -> str:
    """One row per (layer, family, analysis), one column per lens: what it called, and the
    verdict of its first lead feature."""
    models = [m["name"] for m in config.get("models", [])]
    base = models[0] if models else ""
    rows = []
    for (layer, family), by_lens in groups.items():
        cells: dict[str, dict[str, str]] = {}
        for e in lenses:
            files = by_lens.get(e, {})
            if "features.parquet" not in files:
                continue
            features = pd.read_parquet(files["features.parquet"].path)
            lead = lead_features(features)
            for c in analysis_counts(features).to_dict("records"):
                d = lead[lead["analysis"] == c["analysis"]]
                text = f"{c['stable_called']} stable / {c['called']} called / {c['tested']} tested"
                if len(d):
                    first = d.iloc[0].to_dict()
                    text += (
                        f"; #{first['rank']} feature {first['feature']}: {verdict(first, models)}"
                    )
                cells.setdefault(str(c["analysis"]), {})[e] = text
        for analysis, by in cells.items():
            row = f"<td>{html.escape(layer)}</td><td><code>{html.escape(family)}</code></td>"
            row += f"<td>{html.escape(analysis)}</td>"
            row += "".join(
                f'<td class="wrap">{html.escape(by.get(e, "not run"))}</td>' for e in lenses
            )
            rows.append(f"<tr>{row}</tr>")
    heads = ["layer", "family", "analysis", *[lens_title(e, base) for e in lenses]]
    head = "".join(f"<th>{html.escape(h)}</th>" for h in heads)
    return (
        f'<div class="table-wrap"><table class="paired"><thead><tr>{head}</tr></thead>'
        f"<tbody>{''.join(rows)}</tbody></table></div>"
    )


def diff_html(
    items: Sequence[ReportItem],
    config: Mapping[str, Any],
    *,
    sae_items: Sequence[ReportItem] = (),
) -> str:
    """The diff section: the paired summary, then per (layer, family) the lenses side by side."""
    models = [m["name"] for m in config.get("models", [])]
    base = models[0] if models else ""
    groups: dict[tuple[str, str], dict[str, dict[str, ReportItem]]] = {}
    for item in items:
        w = item.wildcards
        key = (w.get("layer", ""), w.get("family", ""))
        groups.setdefault(key, {}).setdefault(w.get("embedder", ""), {})[item.name] = item
    lenses = sorted({e for g in groups.values() for e in g}, key=lambda e: lens_order(e, base))
    metrics = sae_metric_rows(sae_items)
    parts = [
        lenses_sentence(lenses, base),
        "<p>Per analysis and lens: stable changed / called / tested features, and the verdict "
        "of the first feature each leads with (details below).</p>",
        paired_summary_html(groups, lenses, config),
    ]
    for (layer, family), by_lens in groups.items():
        parts.append(
            f"<h3>Layer {html.escape(layer)} · family <code>{html.escape(family)}</code></h3>"
        )
        columns = []
        for e in [e for e in lenses if e in by_lens]:
            columns.append(
                f'<div class="lens" id="diff-{html.escape(e)}-{html.escape(layer)}-'
                f'{html.escape(family)}"><h4>{html.escape(lens_title(e, base))} '
                f'<span class="note">(embedder {html.escape(e)})</span></h4>'
                f"{diff_job_html(by_lens[e], metrics, e, layer, family, config)}</div>"
            )
        parts.append(f'<div class="lenses">{"".join(columns)}</div>')
    return "".join(parts)
