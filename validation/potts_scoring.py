"""The Potts stage on a motif planted at a homologous site: do the motif's columns carry the largest
field shifts of the last round against the base? (issue 17, item 4)

Read only from the workflow's outputs: the last round's alignment to the family profile
(`potts/align/<round>.parquet`, match-column rows) locates the motif, and the round's comparison
with the base (`potts/compare/<round>/sites.tsv`, `pairs.tsv`) is scored at those columns.

The motif's columns are where the aligner put the planted residues: every occurrence of the
motif in a kept row's residues (gaps removed) gives the columns of its residues; the most common
placement is the motif's columns, with the share of occurrences that agree. Scores: the field
shift rank of each motif column among all columns, how many of the top-|motif| columns are motif
columns (the target: all of them), the probability that a motif column out-shifts a random other
column (a rank AUC: 1 is perfect, 0.5 chance), and the significant coupling changes (all, among
motif columns, touching one).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from plmdiff.config import paths
from plmdiff.core.fasta import SequenceEntry, write_fasta

# The stage's settings in the study config (the schema's defaults otherwise): every profile
# column, the default 20 bootstrap refits.
WORKFLOW_SECTION: dict[str, Any] = {"enabled": True}
FAMILY_NAME = "potts_family.fasta"


def config_section(family: Path | None) -> dict[str, Any]:
    """The study's potts section: the stage's defaults, and the natural family (`potts.family`)
    when one is given."""
    return {**WORKFLOW_SECTION, **({"family": str(family)} if family is not None else {})}


def write_family(sequences: Sequence[str], crop: int, workdir: Path) -> Path:
    """The natural family as the study's models were trained on it (the first `crop` residues of
    every sequence, nothing planted): the profile and energy reference of `potts.family`."""
    path = workdir / FAMILY_NAME
    ids = family_ids(len(sequences))
    write_fasta(path, [SequenceEntry(i, s[:crop]) for i, s in zip(ids, sequences, strict=True)])
    return path


def family_ids(n: int) -> list[str]:
    """The family FASTA's record names."""
    return [f"family_{i}" for i in range(n)]


def targets(base: str, last: str) -> list[str]:
    """What scoring reads: the last round's alignment and comparison, and the two fits' records
    (only these two sets are fitted: the middle round's fit is not needed)."""
    return [
        paths.potts_alignment(last),
        paths.potts_compare_file(last, "sites.tsv"),
        paths.potts_compare_file(last, "pairs.tsv"),
        paths.potts_fit_info(base),
        paths.potts_fit_info(last),
    ]


def motif_placements(rows: Sequence[str], motif: str) -> list[tuple[int, ...]]:
    """The 1-based profile columns of the motif's residues, one tuple per occurrence of the motif
    in a row's residues (a deletion '-' inside an occurrence is skipped; an insertion, dropped
    by the alignment, breaks it)."""
    out = []
    for row in rows:
        columns = [c for c, ch in enumerate(row, start=1) if ch != "-"]
        residues = "".join(ch for ch in row if ch != "-")
        at = residues.find(motif)
        while at >= 0:
            out.append(tuple(columns[at : at + len(motif)]))
            at = residues.find(motif, at + 1)
    return out


def motif_columns(rows: Sequence[str], motif: str) -> tuple[tuple[int, ...], int, int]:
    """(the most common placement's columns, its occurrences, all occurrences); () when the
    motif occurs in no row."""
    placements = Counter(motif_placements(rows, motif))
    if not placements:
        return (), 0, 0
    best, count = max(placements.items(), key=lambda kv: (kv[1], [-c for c in kv[0]]))
    return best, count, sum(placements.values())


def field_scores(sites: pd.DataFrame, columns: Sequence[int]) -> dict[str, Any]:
    """Where the motif's columns rank among all sites by field shift (1 = largest)."""
    shift = sites.set_index("site")["field_shift"]
    missing = sorted(set(columns) - set(shift.index))
    if missing:
        raise ValueError(f"motif columns {missing} are not sites of the field-shift table")
    ranks = shift.rank(ascending=False, method="min")
    wanted = sorted(set(columns))
    k = len(wanted)
    top = list(shift.sort_values(ascending=False, kind="stable").index[:k])
    inside = shift.loc[wanted].to_numpy()
    outside = shift.drop(index=wanted).to_numpy()
    # Mann-Whitney's AUC: ties count half.
    greater = (inside[:, None] > outside[None, :]).sum() + 0.5 * (
        inside[:, None] == outside[None, :]
    ).sum()
    auc = float(greater / (len(inside) * len(outside))) if len(outside) and k else float("nan")
    return {
        "sites": len(shift),
        "motif_ranks": [int(ranks.loc[c]) for c in wanted],
        "top_sites": [int(s) for s in top],
        "motif_in_top": len(set(top) & set(wanted)),
        "rank_auc": auc,
        "motif_mean_shift": float(inside.mean()) if k else float("nan"),
        "other_mean_shift": float(outside.mean()) if len(outside) else float("nan"),
    }


def coupling_scores(pairs: pd.DataFrame, columns: Sequence[int]) -> dict[str, Any]:
    """Significant coupling changes: all, with both columns in the motif, with one or both."""
    motif = set(columns)
    sig = pairs[pairs["significant"].astype(bool)]
    a = sig["site_i"].isin(motif)
    b = sig["site_j"].isin(motif)
    k = len(motif)
    return {
        "pairs_tested": len(pairs),
        "pairs_significant": len(sig),
        "motif_pairs": k * (k - 1) // 2,
        "motif_pairs_significant": int((a & b).sum()),
        "pairs_significant_touching_motif": int((a | b).sum()),
    }


def score(
    alignment: pd.DataFrame, sites: pd.DataFrame, pairs: pd.DataFrame, motif: str
) -> dict[str, Any]:
    """The motif's columns in the last round's alignment, and their field shifts and coupling
    changes against the base."""
    rows = alignment.loc[alignment["kept"].astype(bool), "aligned"].tolist()
    columns, agree, occurrences = motif_columns(rows, motif)
    located = {
        "motif": motif,
        "rows": len(rows),
        "rows_with_motif": sum(motif in r.replace("-", "") for r in rows),
        "motif_columns": list(columns),
        "placement_share": agree / occurrences if occurrences else 0.0,
    }
    if not columns:
        return located
    return {**located, **field_scores(sites, columns), **coupling_scores(pairs, columns)}


def score_study(workdir: Path, motif: str, base: str, last: str) -> dict[str, Any]:
    """score() on a finished study's outputs, with the two fits' N_eff."""
    fits = {s: pd.read_json(workdir / paths.potts_fit_info(s), typ="series") for s in (base, last)}
    return {
        **score(
            pd.read_parquet(workdir / paths.potts_alignment(last)),
            pd.read_csv(workdir / paths.potts_compare_file(last, "sites.tsv"), sep="\t"),
            pd.read_csv(workdir / paths.potts_compare_file(last, "pairs.tsv"), sep="\t"),
            motif,
        ),
        "neff": {s: float(f["neff"]) for s, f in fits.items()},
        "columns": int(fits[last]["columns"]),
    }


def summary_lines(studies: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """The Potts section of summary.md: one row per study scored with the stage."""
    scored = {n: s for n, s in studies.items() if "potts" in s}
    if not scored:
        return []
    lines = [
        "## Potts (motif planted at homologous columns)",
        "",
        "| study | target met | motif columns (share of placements) | field-shift ranks "
        "| motif in top-|motif| | rank AUC | significant pairs (motif / touching / all) | N_eff base / round |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, s in scored.items():
        p, v = s["potts"], s["potts"]["verdict"]
        if not p["motif_columns"]:
            lines.append(f"| {name} | no | motif in no aligned row | | | | | |")
            continue
        neff = " / ".join(f"{x:.0f}" for x in p["neff"].values())
        lines.append(
            f"| {name} | {'yes' if v['met'] else 'no'} | {p['motif_columns']} "
            f"({p['placement_share']:.0%}) | {p['motif_ranks']} of {p['sites']} | "
            f"{p['motif_in_top']} of {len(p['motif_columns'])} | {p['rank_auc']:.3f} | "
            f"{p['motif_pairs_significant']} of {p['motif_pairs']} / "
            f"{p['pairs_significant_touching_motif']} / {p['pairs_significant']} | {neff} |"
        )
    lines.append("")
    return lines
