"""Scores of one finished study, read from the workflow's outputs (never from its internals).

Per analysis (embedder x diff family x analysis): the feature that best matches what was
planted, found by encoding the last round's held-out token activations with the analysis's
fold-0 SAE, and where the diff put it: rank, changed, stable, change replication. Per study:
the null's stable changed features, probe margins, what the rounds' samples carry.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from plmdiff.activations.readers import iter_token_batches
from plmdiff.config import paths
from plmdiff.core.fasta import read_fasta
from plmdiff.diff.feature_stats import FeatureStats
from plmdiff.probes.baselines import LENGTH as LENGTH_BASELINE
from plmdiff.sae.training import load_sae

# Which SAE encodes the rounds in each analysis (plmdiff.diff.analyses.family_analyses).
FAMILIES = (paths.BASE_FAMILY, paths.PER_MODEL_FAMILY, paths.POOLED_FAMILY)


@dataclass(frozen=True)
class Target:
    """What a feature must show to count as the planted change, and how high it must rank
    (called changed and stable as well)."""

    top: int
    min_coverage: float
    min_enrichment: float = 0.0
    min_precision: float = 0.0


# The target for a planted motif: fires in >= half of the occurrences, its firings >= 5x
# enriched on motif positions, top 5.
MOTIF_TARGET = Target(top=5, min_coverage=0.5, min_enrichment=5.0)
# A residue-class feature, top 10. Enrichment cannot carry the bar here: K and R are 8% of the
# family's residues and ~20% of a round enriched at 12%, so even a feature firing only on them is
# < 5x enriched. Instead >= 80% of its firings are on the class, and it covers >= 25% of the
# class's residues (a feature for K alone or R alone covers part of the class, and counts).
CLASS_TARGET = Target(top=10, min_coverage=0.25, min_precision=0.8)


def target_for(kind: str) -> Target | None:
    """The feature-level target of a study kind (None: nothing residue-level is planted)."""
    return {"motif": MOTIF_TARGET, "composition": CLASS_TARGET}.get(kind)


@dataclass(frozen=True)
class TokenSet:
    """Residue tokens of some sequences: activations, and which are planted (occurrence id)."""

    act: np.ndarray  # [tokens, d_model]
    occurrence: np.ndarray  # [tokens] occurrence index, -1 where nothing is planted
    n_occurrences: int


def planted_occurrences(residues: Sequence[str], planted: str, kind: str) -> tuple[np.ndarray, int]:
    """Occurrence index of every residue (-1: not planted), over the concatenated sequences.

    A motif occurrence is every exact match of the motif (its positions share one index); for a
    residue class every residue of the class is its own occurrence.
    """
    occ_parts, n = [], 0
    for text in residues:
        occ = np.full(len(text), -1, dtype=np.int64)
        if kind == "motif" and planted:
            start = text.find(planted)
            while start >= 0:
                occ[start : start + len(planted)] = n
                n += 1
                start = text.find(planted, start + 1)
        elif kind == "composition" and planted:
            hits = np.array([i for i, r in enumerate(text) if r in planted], dtype=np.int64)
            occ[hits] = np.arange(n, n + len(hits))
            n += len(hits)
        occ_parts.append(occ)
    return (np.concatenate(occ_parts) if occ_parts else np.zeros(0, np.int64)), n


def read_tokens(layer_dir: str | Path, seq_ids: Sequence[str], planted: str, kind: str) -> TokenSet:
    """Token activations of `seq_ids` (file order) with their planted-occurrence labels."""
    acts, residues, current, text = [], [], None, []
    for batch in iter_token_batches([layer_dir], batch_rows=8192, seq_ids=seq_ids):
        acts.append(np.asarray(batch.act, dtype=np.float32))
        for sid, res in zip(
            np.asarray(batch.seq_id).astype(str), np.asarray(batch.residue).astype(str), strict=True
        ):
            if sid != current:
                if current is not None:
                    residues.append("".join(text))
                current, text = sid, []
            text.append(res)
    if current is not None:
        residues.append("".join(text))
    occurrence, n = planted_occurrences(residues, planted, kind)
    return TokenSet(act=np.concatenate(acts), occurrence=occurrence, n_occurrences=n)


@dataclass(frozen=True)
class FeatureMatch:
    """How well each feature's firing matches the planted positions."""

    coverage: np.ndarray  # share of occurrences where the feature fires on >= 1 planted residue
    precision: np.ndarray  # share of its firings on planted residues
    enrichment: np.ndarray  # precision / share of planted residues among all residues
    n_fire: np.ndarray
    n_occurrences: int


def match_features(codes: np.ndarray, tokens: TokenSet) -> FeatureMatch:
    """Coverage, precision and enrichment of every feature (codes: [tokens, d_sae])."""
    fires = codes > 0
    planted = tokens.occurrence >= 0
    n_fire = fires.sum(0)
    on_planted = fires[planted].sum(0)
    base_rate = planted.mean() if planted.size else 0.0
    covered = np.zeros((max(tokens.n_occurrences, 1), codes.shape[1]), dtype=bool)
    if tokens.n_occurrences:
        np.logical_or.at(covered, tokens.occurrence[planted], fires[planted])
    with np.errstate(divide="ignore", invalid="ignore"):
        precision = np.where(n_fire > 0, on_planted / np.maximum(n_fire, 1), 0.0)
        enrichment = precision / base_rate if base_rate > 0 else np.zeros_like(precision)
    coverage = covered.mean(0) if tokens.n_occurrences else np.zeros(codes.shape[1])
    return FeatureMatch(
        coverage=coverage,
        precision=precision,
        enrichment=enrichment,
        n_fire=n_fire,
        n_occurrences=tokens.n_occurrences,
    )


def encode(sae_path: str | Path, act: np.ndarray) -> np.ndarray:
    import torch

    sae = load_sae(sae_path)
    with torch.inference_mode():
        return sae.encode(torch.from_numpy(act).to(sae.W_dec.dtype)).float().numpy()


@dataclass(frozen=True)
class AnalysisScore:
    study: str
    embedder: str
    family: str
    analysis: str
    n_features: int
    n_changed: int
    n_stable_changed: int
    best_feature: int
    best_rank: int
    best_coverage: float
    best_enrichment: float
    best_precision: float
    best_changed: bool
    best_change: str
    best_stable: bool
    best_stability: float
    best_change_replication: float
    best_log2_fold_change: float
    best_q_value: float
    qualifying: int  # features meeting the coverage and enrichment targets
    qualifying_best_rank: int  # best rank among them (0: none)
    # a qualifying feature in the target's top (5; 10 for a class), called and stable
    first_changed_rank_in_target: bool
    n_occurrences: int = 0  # planted occurrences in the held-out sequences scored
    # frequency calls that do not hold at matched positions (plmdiff.diff.statistics)
    n_length_effects: int = 0
    # The fold change the call reads (gamma-Poisson posterior, plmdiff.diff.evidence).
    best_posterior_log2_fold_change: float = np.nan
    layer: int = -1  # the SAE's layer (-1: not given)


def stable_changed(table: pd.DataFrame) -> np.ndarray:
    """Changed and stable (the workflow's own `stable`: reappears and replicates its change),
    and not a length effect (the diff already leaves those out of `changed`; said here so the
    verdicts never count one)."""
    stable = table["stable"].astype("boolean").fillna(False).to_numpy(dtype=bool)
    return table["changed"].to_numpy(dtype=bool) & stable & ~length_effects(table)


def length_effects(table: pd.DataFrame) -> np.ndarray:
    """The diff's length effects (none for diffs written before the column existed)."""
    if "length_effect" not in table:
        return np.zeros(len(table), dtype=bool)
    return table["length_effect"].to_numpy(dtype=bool)


def score_analysis(
    study: str,
    embedder: str,
    family: str,
    table: pd.DataFrame,
    match: FeatureMatch | None,
    target: Target | None,
    layer: int = -1,
) -> AnalysisScore:
    """The best-matching feature's place in one analysis's ranked feature table."""
    table = table.sort_values("feature").reset_index(drop=True)
    sc = stable_changed(table)
    base = dict(
        study=study,
        embedder=embedder,
        family=family,
        analysis=str(table["analysis"].iloc[0]),
        layer=layer,
        n_features=len(table),
        n_changed=int(table["changed"].sum()),
        n_stable_changed=int(sc.sum()),
        n_length_effects=int(length_effects(table).sum()),
    )
    if match is None or target is None:
        return AnalysisScore(
            **base,
            best_feature=-1,
            best_rank=0,
            best_coverage=np.nan,
            best_enrichment=np.nan,
            best_precision=np.nan,
            best_changed=False,
            best_change="",
            best_stable=False,
            best_stability=np.nan,
            best_change_replication=np.nan,
            best_log2_fold_change=np.nan,
            best_q_value=np.nan,
            qualifying=0,
            qualifying_best_rank=0,
            first_changed_rank_in_target=False,
        )
    # Best match: fires on most occurrences AND mostly on them (coverage x precision).
    best = int(np.argmax(match.coverage * match.precision))
    ok = (
        (match.coverage >= target.min_coverage)
        & (match.enrichment >= target.min_enrichment)
        & (match.precision >= target.min_precision)
    )
    ranks = table["rank"].to_numpy()
    row = table.iloc[best]
    met = ok & (ranks <= target.top) & sc
    return AnalysisScore(
        **base,
        best_feature=best,
        best_rank=int(row["rank"]),
        best_coverage=float(match.coverage[best]),
        best_enrichment=float(match.enrichment[best]),
        best_precision=float(match.precision[best]),
        best_changed=bool(row["changed"]),
        best_change=str(row.get("change", "")),
        best_stable=bool(sc[best]),
        best_stability=float(row["stability"]),
        best_change_replication=float(row["change_replication"]),
        best_log2_fold_change=float(row["log2_fold_change"]),
        best_q_value=float(row["q_value"]),
        qualifying=int(ok.sum()),
        qualifying_best_rank=int(ranks[ok].min()) if ok.any() else 0,
        first_changed_rank_in_target=bool(met.any()),
        n_occurrences=match.n_occurrences,
        best_posterior_log2_fold_change=float(row.get("posterior_log2_fold_change", np.nan)),
    )


def evaluator_scheme(family: str, analysis: str, last: str) -> str:
    """The SAE that encodes every round in an analysis (plmdiff.diff.analyses.family_analyses)."""
    if family == paths.BASE_FAMILY:
        return paths.BASE_SCHEME
    if family == paths.PER_MODEL_FAMILY:
        return paths.finetune_scheme(last)
    return analysis


def score_embedder(
    workdir: Path,
    study: str,
    embedder: str,
    layer: int,
    models: Sequence[str],
    planted: str,
    kind: str,
    families: Sequence[str] = FAMILIES,
    lens: str = "",
) -> list[AnalysisScore]:
    """Every analysis of one embedder directory (`embedder`: 'self' or the embedding model's
    name, as the workflow resolves 'base'); `lens` labels it in the scores."""
    lid = paths.layer_id(layer)
    last = models[-1]
    scores = []
    for family in families:
        features = pd.read_parquet(
            workdir / paths.diff_file(embedder, lid, family, "features.parquet")
        )
        for analysis, table in features.groupby("analysis", sort=False):
            match = None
            if planted:
                scheme = evaluator_scheme(family, str(analysis), last)
                fs = FeatureStats.open(workdir / paths.feature_stats(embedder, lid, scheme, 0))
                ids = fs.model_sequences(last)["seq_id"].tolist()
                tokens = read_tokens(
                    workdir / paths.token_layer_dir(embedder, last, lid), ids, planted, kind
                )
                codes = encode(workdir / paths.sae_dir(embedder, lid, scheme, 0), tokens.act)
                match = match_features(codes, tokens)
            scores.append(
                score_analysis(
                    study, lens or embedder, family, table, match, target_for(kind), layer
                )
            )
    return scores


def carried(sequences: Sequence[str], planted: str, kind: str) -> dict[str, float]:
    """What a model's kept sequences carry: count, mean length, and the share carrying the
    motif / the residue class's share of residues."""
    row = {"n": len(sequences), "mean_length": float(np.mean([len(s) for s in sequences]))}
    if kind == "motif":
        row["motif_share"] = float(np.mean([planted in s for s in sequences]))
    if kind == "composition":
        text = "".join(sequences)
        row["class_share"] = float(sum(text.count(c) for c in planted) / max(1, len(text)))
    return row


def sample_summary(
    workdir: Path, models: Sequence[str], planted: str, kind: str
) -> dict[str, dict[str, float]]:
    """Per model: what its kept sequences (the workflow's FASTA) carry (`carried`)."""
    return {
        model: carried(
            [e.sequence for e in read_fasta(workdir / paths.fasta(model))], planted, kind
        )
        for model in models
    }


def probe_margins(workdir: Path, lenses: Mapping[str, str]) -> list[dict[str, float | str]]:
    """Per lens x pooling: the best layer's balanced accuracy against chance, the permutation
    mean and the best baseline; the length baseline's accuracy and its bootstrap CI; the
    smallest family-wise p of any layer's margin over the best baseline (`lenses`: label ->
    embedder directory). The `self` lens has no probes: its rounds are embedded by different
    models."""
    rows: list[dict[str, float | str]] = []
    for label, embedder in lenses.items():
        for pooling in ("last", "mean"):
            path = workdir / paths.probe_file(embedder, pooling, "accuracy.tsv")
            if path.is_file():
                rows.append(
                    {
                        "embedder": label,
                        "pooling": pooling,
                        **probe_row(pd.read_csv(path, sep="\t")),
                    }
                )
    return rows


def probe_row(acc: pd.DataFrame) -> dict[str, float | str]:
    """What the scores read from one probes accuracy table (plmdiff.probes.probes)."""
    layers = acc[acc["layer"].notna()]
    best = layers.loc[layers["balanced_accuracy"].idxmax()]
    length = acc[acc["features"] == LENGTH_BASELINE]
    return {
        "layer": int(best["layer"]),
        "accuracy": float(best["balanced_accuracy"]),
        "chance": float(best["chance"]),
        "permutation_mean": float(best["permutation_mean"]),
        "margin": float(best["balanced_accuracy"] - best["permutation_mean"]),
        "baseline": str(best["best_baseline"]),
        "baseline_margin": float(best["margin"]),
        "baseline_margin_p_fwer": float(best["margin_p_fwer"]),
        "min_baseline_margin_p_fwer": float(layers["margin_p_fwer"].min()),
        "length_accuracy": float(length["balanced_accuracy"].iloc[0]) if len(length) else np.nan,
        "length_ci_low": (
            float(length["balanced_accuracy_ci_low"].iloc[0]) if len(length) else np.nan
        ),
    }


def sae_fit(workdir: Path, lenses: Mapping[str, str], layer: int) -> list[dict[str, float | str]]:
    """The base SAE's held-out fit (fold 0): a change of fit must not pass for a change of features."""
    rows = []
    for label, embedder in lenses.items():
        path = workdir / paths.sae_metrics(embedder, paths.layer_id(layer), paths.BASE_SCHEME, 0)
        metrics = json.loads(path.read_text())
        rows.append(
            {
                "embedder": label,
                "layer": layer,
                **{k: metrics.get(k) for k in ("fvu", "l0", "dead_fraction")},
            }
        )
    return rows


def as_dicts(scores: Sequence[AnalysisScore]) -> list[dict]:
    return [asdict(s) for s in scores]
