"""Re-score finished studies offline with the statistics of `plmdiff.diff.evidence`.

    python -m validation.rescore --suite full

For every study and analysis this re-runs the diff's per-fold tables from the saved feature
stats and SAE decoders (`plmdiff.diff.family.diff_family`, unchanged), then replaces the call and
the ranking by the evidence-based ones (posterior fold change, sign agreement, evidence
order, a direction-change cut calibrated on the null studies' fine-tunes, fires in both
models), replicates the new call across folds exactly as the diff does (Hungarian partner with
decoder cosine >= stability_cosine, same sign), and reports where the planted feature lands and
how many stable changes each null study calls. Nothing in the workflow changes: this measures
what wiring the statistics in would give. Writes `rescore.json` and `rescore.md` next to
`scores.json`.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from plmdiff.config import paths
from plmdiff.config.sections import section_defaults
from plmdiff.diff.analyses import family_analyses
from plmdiff.diff.evidence import (
    call_by_evidence,
    clopper_pearson,
    evidence_order,
    fires_in_both,
    null_threshold,
    posterior_log2_fold_change,
    ranks_from_order,
)
from plmdiff.diff.family import FamilyResult, diff_family
from plmdiff.diff.feature_stats import FeatureStats, sae_decoder
from plmdiff.diff.settings import DiffConfig
from plmdiff.sae.training import load_sae
from validation.run import MODELS, WORK, lens_dirs
from validation.studies import SUITES, Suite


@dataclass(frozen=True)
class Proposal:
    """One variant of the new statistics: the prior weight and the effect the call requires."""

    name: str
    prior_count: float
    min_abs_log2_fold_change: float
    direction_alpha: float  # share of null fine-tune features whose direction change passes


PROPOSALS = (
    Proposal("shrunk_lfc>0", prior_count=10.0, min_abs_log2_fold_change=0.0, direction_alpha=0.001),
    Proposal(
        "shrunk_lfc>0.3", prior_count=10.0, min_abs_log2_fold_change=0.3, direction_alpha=0.001
    ),
)


def family_schemes(family: str, models: Sequence[str]) -> list[str]:
    if family == paths.BASE_FAMILY:
        return [paths.BASE_SCHEME]
    if family == paths.PER_MODEL_FAMILY:
        return [paths.BASE_SCHEME, *(paths.finetune_scheme(m) for m in models[1:])]
    return [paths.BASE_SCHEME, paths.pooled_scheme()]


def rediff(
    workdir: Path, embedder: str, layer: int, family: str, kfold: int
) -> tuple[FamilyResult, dict]:
    """The diff's fold tables and matchings, recomputed from the study's saved outputs."""
    lid = paths.layer_id(layer)
    schemes = family_schemes(family, MODELS)
    folds = list(range(kfold))
    stats = {
        (s, f): FeatureStats.open(workdir / paths.feature_stats(embedder, lid, s, f))
        for s in schemes
        for f in folds
    }
    decoders = {
        (s, f): sae_decoder(load_sae(workdir / paths.sae_dir(embedder, lid, s, f)))
        for s in schemes
        for f in folds
    }
    analyses = family_analyses(family, schemes, MODELS)
    return diff_family(
        analyses, MODELS, folds, stats, decoders, DiffConfig.from_section(section_defaults("diff"))
    ), stats


def counts(
    table: pd.DataFrame, stats: Mapping, scheme: str, fold: int
) -> tuple[np.ndarray, float, np.ndarray, float]:
    """Firing counts and token totals of base and last round in one fold table."""
    fs = stats[(scheme, fold)]
    out = []
    for model in (MODELS[0], MODELS[-1]):
        n_tok = float(fs.model_stats(model)["n_tokens"].iloc[0])
        out += [np.rint(table[f"freq_{model}"].to_numpy() * n_tok), n_tok]
    return out[0], out[1], out[2], out[3]


def evaluator(family: str, analysis: str) -> str:
    if family == paths.BASE_FAMILY:
        return paths.BASE_SCHEME
    if family == paths.PER_MODEL_FAMILY:
        return paths.finetune_scheme(MODELS[-1])
    return analysis


def new_call(
    table: pd.DataFrame, c: tuple, proposal: Proposal, dir_cut: float | None
) -> tuple[np.ndarray, np.ndarray]:
    """(called, posterior mean log2FC) of one fold table under a proposal."""
    ca, ta, cb, tb = c
    post = posterior_log2_fold_change(ca, ta, cb, tb, proposal.prior_count)
    called = call_by_evidence(
        table["q_value"].to_numpy(),
        table["spearman_rho"].to_numpy(),
        post,
        fdr=DiffConfig.from_section(section_defaults("diff")).fdr,
        min_abs_log2_fold_change=proposal.min_abs_log2_fold_change,
    )
    if dir_cut is not None and table["direction_change"].notna().any():
        moved = np.nan_to_num(table["direction_change"].to_numpy(), nan=0.0) > dir_cut
        called |= moved & fires_in_both(ca, cb, min_count=5)
    return called, post.mean


def replicate(
    result: FamilyResult,
    analysis: str,
    calls: Mapping[int, np.ndarray],
    lfcs: Mapping[int, np.ndarray],
    kfold: int,
) -> tuple[np.ndarray, np.ndarray]:
    """(stability, change replication) of fold-0 features under the new call, as the diff does."""
    cfg = DiffConfig.from_section(section_defaults("diff"))
    present = np.ones(len(calls[0]))
    again = calls[0].astype(float)
    for fold in range(1, kfold):
        match = result.matchings[(analysis, fold)]
        ok = match.matched(cfg.stability_cosine)
        partner = np.where(match.partner >= 0, match.partner, 0)
        same = np.sign(lfcs[fold][partner]) == np.sign(lfcs[0])
        present += ok
        again += ok & calls[0] & calls[fold][partner] & same
    return present / kfold, again / kfold


def null_direction_cut(
    root: Path, suite: Suite, alpha: float, finished: Collection[str]
) -> float | None:
    """Direction-change cut from the null studies' fine-tuned SAEs (fine-tuned on rounds that
    are the base model itself: the same budget with no change), features firing in both models."""
    values = []
    for study in suite.studies:
        if study.kind != "null" or study.name not in finished:
            continue
        for family in set(suite.families) - {paths.BASE_FAMILY}:
            result, stats = rediff(
                root / study.name,
                lens_dirs(study)[study.embedders[0]],
                suite.layer,
                family,
                suite.kfold,
            )
            for (analysis, fold), table in result.fold_tables.items():
                ca, _, cb, _ = counts(table, stats, evaluator(family, analysis), fold)
                both = fires_in_both(ca, cb, min_count=5)
                values.append(table["direction_change"].to_numpy()[both])
    return null_threshold(np.concatenate(values), alpha) if values else None


def rescore_study(
    root: Path, suite: Suite, name: str, saved: Mapping, dir_cuts: Mapping[str, float | None]
) -> list[dict]:
    rows = []
    study = next(s for s in suite.studies if s.name == name)
    best = {(a["embedder"], a["analysis"]): a for a in saved["analyses"]}
    for embedder, lens_dir in lens_dirs(study).items():
        for family in suite.families:
            result, stats = rediff(root / name, lens_dir, suite.layer, family, suite.kfold)
            for analysis in dict.fromkeys(a for a, _ in result.fold_tables):
                today = best[(embedder, analysis)]
                for proposal in PROPOSALS:
                    calls, lfcs = {}, {}
                    for fold in range(suite.kfold):
                        table = result.fold_tables[(analysis, fold)]
                        c = counts(table, stats, evaluator(family, analysis), fold)
                        calls[fold], lfcs[fold] = new_call(
                            table, c, proposal, dir_cuts[proposal.name]
                        )
                    stability, replication = replicate(result, analysis, calls, lfcs, suite.kfold)
                    stable = calls[0] & (stability >= 0.5) & (replication >= 0.5)
                    table0 = result.fold_tables[(analysis, 0)]
                    order = evidence_order(
                        calls[0], stable, table0["q_value"].to_numpy(), replication, lfcs[0]
                    )
                    ranks = ranks_from_order(order)
                    f = today["best_feature"]
                    row = {
                        "study": name,
                        "kind": study.kind,
                        "embedder": embedder,
                        "analysis": analysis,
                        "proposal": proposal.name,
                        "today_rank": today["best_rank"],
                        "today_called": today["best_changed"],
                        "today_stable": today["best_stable"],
                        "today_n_stable_changed": today["n_stable_changed"],
                        "n_called": int(calls[0].sum()),
                        "n_stable_called": int(stable.sum()),
                    }
                    if f >= 0:
                        row.update(
                            {
                                "best_feature": f,
                                "coverage": today["best_coverage"],
                                "enrichment": today["best_enrichment"],
                                "rank": int(ranks[f]),
                                "called": bool(calls[0][f]),
                                "stable": bool(stable[f]),
                                "change_replication": float(replication[f]),
                                "shrunk_lfc": float(lfcs[0][f]),
                            }
                        )
                    rows.append(row)
    return rows


COLUMNS = (
    "study",
    "embedder",
    "analysis",
    "proposal",
    "today_rank",
    "today_called",
    "today_stable",
    "today_n_stable_changed",
    "rank",
    "called",
    "stable",
    "change_replication",
    "shrunk_lfc",
    "n_called",
    "n_stable_called",
)


def markdown(
    rows: Sequence[dict], dir_cuts: Mapping[str, float | None], null_summary: Mapping[str, tuple]
) -> str:
    def fmt(v):
        if isinstance(v, bool):
            return "yes" if v else "no"
        if isinstance(v, float):
            return f"{v:.3g}"
        return "" if v is None else str(v)

    lines = ["| " + " | ".join(COLUMNS) + " |", "|---" * len(COLUMNS) + "|"]
    lines += ["| " + " | ".join(fmt(r.get(c)) for c in COLUMNS) + " |" for r in rows]
    lines += [
        "",
        "Direction-change cuts calibrated on the null fine-tunes: "
        + ", ".join(f"{k}: {fmt(v)}" for k, v in dir_cuts.items()),
    ]
    lines += [
        "",
        "Null studies calling >= 1 stable change (any analysis), with the 95% Clopper-Pearson interval: "
        + ", ".join(
            f"{k}: {v[0]}/{v[1]} [{v[2]:.2f}, {v[3]:.2f}]" for k, v in null_summary.items()
        ),
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--suite", choices=sorted(SUITES), default="full")
    parser.add_argument("--work", type=Path, default=WORK)
    args = parser.parse_args(argv)
    suite = SUITES[args.suite]()
    root = args.work / suite.name
    saved = json.loads((root / "scores.json").read_text())
    dir_cuts = {
        p.name: null_direction_cut(root, suite, p.direction_alpha, saved) for p in PROPOSALS
    }
    rows = []
    for name in saved:
        rows += rescore_study(root, suite, name, saved[name], dir_cuts)
    null_summary = {}
    nulls = [n for n in saved if saved[n]["kind"] == "null"]
    for proposal in ["today", *(p.name for p in PROPOSALS)]:
        key = "today_n_stable_changed" if proposal == "today" else "n_stable_called"
        hit = {
            r["study"]
            for r in rows
            if r["kind"] == "null"
            and r[key] > 0
            and (proposal == "today" or r["proposal"] == proposal)
        }
        if nulls:
            lo, hi = clopper_pearson(len(hit), len(nulls))
            null_summary[proposal] = (len(hit), len(nulls), lo, hi)
    (root / "rescore.json").write_text(
        json.dumps({"rows": rows, "direction_cuts": dir_cuts}, indent=1, default=float)
    )
    text = markdown(rows, dir_cuts, null_summary)
    (root / "rescore.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
