"""Which SAE features changed across rounds: fold change, trend test, FDR, the `changed` call.

The unit of the trend test is the sequence: for every feature, the Spearman correlation between
a sequence's round index (0 = base, 1..R = rounds) and the fraction of that sequence's residues
on which the feature fires. Sequences are independent samples of their model, so under the null
"the feature fires alike in every round" the round labels are exchangeable and the test has a
real null. Features that fire in fewer than `min_firing_sequences` sequences are not tested
(their p-value is NaN and they do not count towards the Benjamini-Hochberg m): the number of
firing sequences does not depend on the round labels, so this filter keeps the FDR valid while
removing tests that could never reach significance.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats as sps

from plmdiff.core.errors import DataError
from plmdiff.core.stats import benjamini_hochberg

# Columns every diff table carries (wide per-model columns come on top).
KEY_COLUMNS = ("analysis", "feature")


@dataclass(frozen=True)
class DiffConfig:
    """The `diff` config section."""

    fdr: float = 0.05
    min_abs_log2_fold_change: float = 1.0
    min_direction_change: float = 0.1
    stability_cosine: float = 0.7
    min_stable_fraction: float = 0.5
    min_firing_sequences: int = 5
    top_n: int = 50
    top_examples: int = 5
    example_window: int = 12
    pseudocount: float = 1.0
    held_out: bool = True
    batch_tokens: int = 8192

    @classmethod
    def from_config(cls, section: Mapping[str, Any]) -> DiffConfig:
        known = cls.__dataclass_fields__
        return cls(**{k: v for k, v in section.items() if k in known})


# ----------------------------------------------------------------------------- statistics


def average_ranks(values: np.ndarray) -> np.ndarray:
    return sps.rankdata(values, method="average")


@dataclass(frozen=True)
class SpearmanResult:
    rho: np.ndarray
    p_value: np.ndarray
    n_nonzero: np.ndarray


def sparse_spearman(
    x: np.ndarray,
    seq_index: np.ndarray,
    feature: np.ndarray,
    value: np.ndarray,
    n_features: int,
) -> SpearmanResult:
    """Spearman correlation of `x` (one value per sequence) with every feature's sparse column.

    Feature j's column is `value` at rows `seq_index[feature == j]` and 0 elsewhere (values must
    be positive). Ranks use averages for ties, as scipy.stats.spearmanr, and so does the p-value
    (t distribution with n - 2 degrees of freedom); the work is O(non-zeros), never n x features.
    """
    x = np.asarray(x, dtype=float)
    n = x.size
    seq_index = np.asarray(seq_index, dtype=np.int64)
    feature = np.asarray(feature, dtype=np.int64)
    value = np.asarray(value, dtype=float)
    if np.any(value <= 0):
        raise ValueError("sparse_spearman needs strictly positive non-zero values")
    rx = average_ranks(x)
    rxc = rx - rx.mean()
    sxx = float(np.sum(rxc**2))

    nnz = np.bincount(feature, minlength=n_features).astype(float)
    zeros = n - nnz
    zero_rank = (zeros + 1) / 2
    frame = pd.DataFrame({"f": feature, "v": value})
    within = frame.groupby("f", sort=False)["v"].rank(method="average").to_numpy()
    rank = within + zeros[feature]
    cov = np.bincount(
        feature, weights=rxc[seq_index] * (rank - zero_rank[feature]), minlength=n_features
    )
    sum_sq = np.bincount(feature, weights=rank**2, minlength=n_features) + zeros * zero_rank**2
    syy = sum_sq - n * ((n + 1) / 2) ** 2
    with np.errstate(divide="ignore", invalid="ignore"):
        rho = cov / np.sqrt(sxx * syy)
    rho[(syy <= 1e-9) | (sxx <= 1e-9)] = np.nan
    rho = np.clip(rho, -1.0, 1.0)
    p = spearman_p_value(rho, n)
    return SpearmanResult(rho=rho, p_value=p, n_nonzero=nnz.astype(np.int64))


def spearman_p_value(rho: np.ndarray, n: int) -> np.ndarray:
    """Two-sided p-value of Spearman's rho (t approximation, as scipy.stats.spearmanr)."""
    rho = np.asarray(rho, dtype=float)
    if n < 3:
        return np.full(rho.shape, np.nan)
    dof = n - 2
    with np.errstate(divide="ignore", invalid="ignore"):
        t = rho * np.sqrt(dof / ((1.0 - rho) * (1.0 + rho)))
    p = 2 * sps.t.sf(np.abs(t), dof)
    return np.where(np.isnan(rho), np.nan, p)


def log2_fold_change(
    count_a: np.ndarray,
    tokens_a: float,
    count_b: np.ndarray,
    tokens_b: float,
    pseudocount: float,
) -> np.ndarray:
    """log2 of firing frequency in b over a, with `pseudocount` tokens added to each count."""
    freq_a = (np.asarray(count_a, dtype=float) + pseudocount) / (tokens_a + pseudocount)
    freq_b = (np.asarray(count_b, dtype=float) + pseudocount) / (tokens_b + pseudocount)
    return np.log2(freq_b / freq_a)


# ----------------------------------------------------------------------------- one analysis


@dataclass(frozen=True)
class RoundEvidence:
    """What one SAE says about one model's held-out sequences (from feature_stats outputs).

    `stats`: one row per feature (n_fire, n_tokens, frequency, mean_act, sequence_fraction,
    dec_cos_to_base, dec_norm_ratio); `sequences`: seq_index, seq_id, n_tokens of this model's
    sequences; `fires`: sparse (seq_index, feature, n_fire) restricted to those sequences.
    """

    model: str
    scheme: str
    stats: pd.DataFrame
    sequences: pd.DataFrame
    fires: pd.DataFrame


def analyse_rounds(
    evidence: Sequence[RoundEvidence],
    d_sae: int,
    cfg: DiffConfig,
    *,
    analysis: str,
    direction: Mapping[str, pd.DataFrame] | None = None,
) -> pd.DataFrame:
    """One row per feature: frequencies per round, log2FC last vs base, trend test, q, call.

    `evidence` is ordered by round (base first). `direction` maps a label (a round, or a pooled
    scheme) to the feature stats of a fine-tuned SAE: its decoder direction change (1 - cosine
    to the base SAE's row) and norm ratio become columns, and the last label's enter the call.
    """
    if len(evidence) < 2:
        raise DataError(f"analysis '{analysis}' needs the base and at least one round")
    table = pd.DataFrame({"analysis": analysis, "feature": np.arange(d_sae, dtype=np.int64)})
    xs, seqs, feats, rates = [], [], [], []
    offset = 0
    for r, ev in enumerate(evidence):
        st = _per_feature(ev.stats, d_sae, f"scheme '{ev.scheme}' for model '{ev.model}'")
        table[f"freq_{ev.model}"] = st["frequency"].to_numpy()
        table[f"mean_act_{ev.model}"] = st["mean_act"].to_numpy()
        table[f"seqfrac_{ev.model}"] = st["sequence_fraction"].to_numpy()
        seq = ev.sequences.reset_index(drop=True)
        local = pd.Series(np.arange(len(seq)), index=seq["seq_index"].to_numpy())
        fires = ev.fires[ev.fires["seq_index"].isin(local.index)]
        idx = local.loc[fires["seq_index"].to_numpy()].to_numpy()
        n_tok = seq["n_tokens"].to_numpy().astype(float)
        xs.append(np.full(len(seq), r, dtype=float))
        seqs.append(idx + offset)
        feats.append(fires["feature"].to_numpy())
        rates.append(fires["n_fire"].to_numpy() / n_tok[idx])
        offset += len(seq)

    base, last = evidence[0], evidence[-1]
    b = _per_feature(base.stats, d_sae, f"scheme '{base.scheme}' for model '{base.model}'")
    lst = _per_feature(last.stats, d_sae, f"scheme '{last.scheme}' for model '{last.model}'")
    table["log2_fold_change"] = log2_fold_change(
        b["n_fire"].to_numpy(),
        float(b["n_tokens"].iloc[0]),
        lst["n_fire"].to_numpy(),
        float(lst["n_tokens"].iloc[0]),
        cfg.pseudocount,
    )
    x = np.concatenate(xs)
    result = sparse_spearman(
        x, np.concatenate(seqs), np.concatenate(feats), np.concatenate(rates), d_sae
    )
    tested = result.n_nonzero >= cfg.min_firing_sequences
    p = np.where(tested, result.p_value, np.nan)
    table["n_sequences"] = len(x)
    table["n_firing_sequences"] = result.n_nonzero
    table["spearman_rho"] = result.rho
    table["p_value"] = p
    table["q_value"] = benjamini_hochberg(p)
    table["tested"] = tested & ~np.isnan(p)
    table["direction_change"] = np.nan
    table["norm_ratio"] = np.nan
    for label, frame in (direction or {}).items():
        rows = _per_feature(frame, d_sae, f"decoder stats of '{label}'")
        table[f"dir_change_{label}"] = 1.0 - rows["dec_cos_to_base"].to_numpy()
        table[f"norm_ratio_{label}"] = rows["dec_norm_ratio"].to_numpy()
        table["direction_change"] = table[f"dir_change_{label}"]
        table["norm_ratio"] = table[f"norm_ratio_{label}"]
    table["changed"] = call_changed(table, cfg, direction=bool(direction))
    return table


def _per_feature(frame: pd.DataFrame, d_sae: int, what: str) -> pd.DataFrame:
    """The stats rows of one model, indexed 0..d_sae-1 (every feature present exactly once)."""
    rows = frame.set_index("feature").sort_index()
    if len(rows) != d_sae or not np.array_equal(rows.index.to_numpy(), np.arange(d_sae)):
        raise DataError(
            f"feature stats of {what} do not hold one row "
            f"per feature 0..{d_sae - 1} ({len(rows)} rows)"
        )
    return rows


def call_changed(table: pd.DataFrame, cfg: DiffConfig, *, direction: bool) -> np.ndarray:
    """Significant trend with a large enough fold change, or (fine-tuned SAEs) a moved decoder."""
    q = table["q_value"].to_numpy()
    lfc = table["log2_fold_change"].to_numpy()
    by_frequency = (q <= cfg.fdr) & (np.abs(lfc) >= cfg.min_abs_log2_fold_change)
    by_frequency &= ~np.isnan(q)
    if not direction:
        return by_frequency
    moved = table["direction_change"].to_numpy() >= cfg.min_direction_change
    return by_frequency | np.nan_to_num(moved, nan=False).astype(bool)


def change_kind(table: pd.DataFrame, cfg: DiffConfig) -> pd.Series:
    """'up', 'down', 'direction' or '' per feature, for tables people read."""
    q = table["q_value"].to_numpy()
    lfc = table["log2_fold_change"].to_numpy()
    freq = (q <= cfg.fdr) & (np.abs(lfc) >= cfg.min_abs_log2_fold_change)
    kind = np.where(freq & (lfc > 0), "up", np.where(freq & (lfc < 0), "down", ""))
    moved = np.nan_to_num(table["direction_change"].to_numpy(), nan=0.0)
    moved = moved >= cfg.min_direction_change
    kind = np.where((kind == "") & moved & table["changed"].to_numpy(), "direction", kind)
    return pd.Series(kind, index=table.index)


def rank_features(table: pd.DataFrame) -> pd.DataFrame:
    """Changed features first, then by |log2FC|, decoder direction change and q-value.

    Returns the table sorted, with a 1-based `rank` column (ties broken by feature index).
    """
    key = pd.DataFrame(
        {
            "changed": ~table["changed"].to_numpy(),
            "abs_lfc": -np.abs(table["log2_fold_change"].to_numpy()),
            "dir": -np.nan_to_num(table["direction_change"].to_numpy(), nan=0.0),
            "q": np.nan_to_num(table["q_value"].to_numpy(), nan=2.0),
            "feature": table["feature"].to_numpy(),
        }
    )
    order = np.lexsort([key[c].to_numpy() for c in ("feature", "q", "dir", "abs_lfc", "changed")])
    out = table.iloc[order].reset_index(drop=True)
    out.insert(0, "rank", np.arange(1, len(out) + 1))
    return out


# ----------------------------------------------------------------------------- a family


@dataclass(frozen=True)
class Analysis:
    """One comparison inside a diff family: which SAE scheme encodes each model's sequences.

    `reference` is the scheme whose decoders identify features across fold replicas (fine-tuned
    SAEs keep their base SAE's indices, so per_model is aligned through the base SAE).
    `direction` maps a label to the fine-tuned scheme whose decoder change it reports.
    """

    name: str
    evaluator: dict[str, str]
    reference: str
    direction: dict[str, str] = field(default_factory=dict)

    @property
    def schemes(self) -> list[str]:
        return list(
            dict.fromkeys([*self.evaluator.values(), self.reference, *self.direction.values()])
        )


def family_analyses(family: str, schemes: Sequence[str], models: Sequence[str]) -> list[Analysis]:
    """What a family compares. Every round is encoded by ONE SAE, so that a frequency change
    is a change in the data, never a difference between SAEs (fine-tuning alone shifts firing
    rates): base: the base SAE; per_model: the SAE fine-tuned on the last round, with the
    decoder change of every round's fine-tuned SAE; pooled: each pooled SAE."""
    rounds = list(models[1:])
    if family == "base":
        return [Analysis("base", dict.fromkeys(models, "base"), "base")]
    if family == "per_model":
        missing = [m for m in rounds if f"ft_{m}" not in schemes]
        if missing:
            raise DataError(f"family per_model lacks the fine-tuned SAE of {', '.join(missing)}")
        last = f"ft_{rounds[-1]}"
        direction = {m: f"ft_{m}" for m in rounds}
        return [Analysis("per_model", dict.fromkeys(models, last), "base", direction)]
    if family == "pooled":
        pooled = [s for s in schemes if s == "pooled" or s.startswith("pooled_")]
        if not pooled:
            raise DataError("family pooled has no pooled SAE scheme")
        return [Analysis(s, dict.fromkeys(models, s), s, {s: s}) for s in pooled]
    raise DataError(f"unknown diff family '{family}'; accepted: base, per_model, pooled")


@dataclass
class FamilyResult:
    features: pd.DataFrame  # every feature of fold 0 of every analysis, ranked, + replication
    fold_tables: dict[tuple[str, int], pd.DataFrame]
    matchings: dict[tuple[str, int], Any]  # (analysis, fold) -> Matching of fold-0 features
    stability: pd.DataFrame


def diff_family(
    analyses: Sequence[Analysis],
    models: Sequence[str],
    folds: Sequence[int],
    stats: Mapping[tuple[str, int], Any],
    decoders: Mapping[tuple[str, int], np.ndarray],
    cfg: DiffConfig,
    *,
    union_decoders: Mapping[int, Sequence[np.ndarray]] | None = None,
) -> FamilyResult:
    """Diff every analysis of a family on every fold; fold 0 is the reference replica.

    `stats[(scheme, fold)]` is a `plmdiff.diff.feature_stats.FeatureStats`; `decoders[(scheme, fold)]`
    its SAE's decoder [d_sae, d_in]. `union_decoders[fold]`, when given, are the per-round
    fine-tuned decoders the pooled SAE is compared with.
    """
    from plmdiff.diff.alignment import hungarian_match

    folds = list(folds)
    ref_fold = folds[0]
    features, stability = [], []
    tables: dict[tuple[str, int], pd.DataFrame] = {}
    matchings: dict[tuple[str, int], Any] = {}
    by_reference: dict[tuple[str, int], Any] = {}
    for an in analyses:
        for fold in folds:
            evidence = []
            for model in models:
                fs = stats[(an.evaluator[model], fold)]
                evidence.append(
                    RoundEvidence(
                        model=model,
                        scheme=an.evaluator[model],
                        stats=fs.model_stats(model),
                        sequences=fs.model_sequences(model),
                        fires=fs.model_fires(model),
                    )
                )
            d_sae = stats[(an.reference, fold)].d_sae
            # Decoder stats are per SAE (the same rows for every model): any model's will do.
            direction = {
                label: stats[(scheme, fold)].model_stats(models[0])
                for label, scheme in an.direction.items()
            }
            tables[(an.name, fold)] = analyse_rounds(
                evidence, d_sae, cfg, analysis=an.name, direction=direction
            )
        ref = tables[(an.name, ref_fold)]
        for fold in folds[1:]:
            # Analyses that share a reference dictionary share its (costly) matching.
            if (an.reference, fold) not in by_reference:
                by_reference[(an.reference, fold)] = hungarian_match(
                    decoders[(an.reference, ref_fold)], decoders[(an.reference, fold)]
                )
            matchings[(an.name, fold)] = by_reference[(an.reference, fold)]
        table = add_replication(
            ref,
            [tables[(an.name, f)] for f in folds[1:]],
            [matchings[(an.name, f)] for f in folds[1:]],
            cfg,
        )
        table["change"] = change_kind(table, cfg)
        features.append(rank_features(table))
        stability += fold_stability_rows(an, folds, tables, matchings, cfg)
        stability += scheme_alignment_rows(an, ref_fold, decoders, cfg)
        if union_decoders and an.name.startswith("pooled"):
            stability += pooled_union_rows(an, folds, decoders, union_decoders, cfg)
    return FamilyResult(
        features=pd.concat(features, ignore_index=True),
        fold_tables=tables,
        matchings=matchings,
        stability=pd.DataFrame(stability, columns=STABILITY_COLUMNS),
    )


def add_replication(
    ref: pd.DataFrame, others: Sequence[pd.DataFrame], matchings: Sequence[Any], cfg: DiffConfig
) -> pd.DataFrame:
    """Per fold-0 feature: in how many folds it reappears, and in how many its change does.

    A feature reappears in fold j when its Hungarian partner there has decoder cosine >=
    `stability_cosine`; its change reappears when, in addition, the partner is called changed
    in the same direction (sign of log2FC; any call for a decoder-direction change).
    """
    out = ref.copy()
    k = 1 + len(others)
    out["n_folds"] = k
    if not others:
        for col in ("folds_present", "folds_changed"):
            out[col] = pd.array([pd.NA] * len(out), dtype="Int64")
        for col in ("mean_fold_cosine", "stability", "change_replication"):
            out[col] = np.nan
        out["stable"] = pd.array([pd.NA] * len(out), dtype="boolean")
        return out
    changed0 = ref["changed"].to_numpy()
    lfc0 = ref["log2_fold_change"].to_numpy()
    # A change called on the decoder direction alone has no sign to agree on.
    direction_only = change_kind(ref, cfg).to_numpy() == "direction"
    present = np.ones(len(ref), dtype=np.int64)
    changed = changed0.astype(np.int64)
    cosines = []
    for other, match in zip(others, matchings, strict=True):
        ok = match.matched(cfg.stability_cosine)
        partner = np.where(match.partner >= 0, match.partner, 0)
        other_changed = other["changed"].to_numpy()[partner]
        other_lfc = other["log2_fold_change"].to_numpy()[partner]
        same = (np.sign(other_lfc) == np.sign(lfc0)) | direction_only
        present += ok
        changed += ok & changed0 & other_changed & same
        cosines.append(np.where(match.partner >= 0, match.cosine, 0.0))
    out["folds_present"] = present
    out["folds_changed"] = changed
    out["mean_fold_cosine"] = np.mean(cosines, axis=0)
    out["stability"] = present / k
    out["change_replication"] = changed / k
    reappears = out["stability"].to_numpy() >= cfg.min_stable_fraction
    replicated = out["change_replication"].to_numpy() >= cfg.min_stable_fraction
    out["stable"] = pd.array(reappears & (replicated | ~changed0), dtype="boolean")
    return out


STABILITY_COLUMNS = [
    "analysis",
    "comparison",
    "a",
    "b",
    "n_a",
    "n_b",
    "cosine_threshold",
    "matched_a",
    "matched_b",
    "mean_cosine",
    "median_cosine",
    "identity_fraction",
    "n_changed_a",
    "changed_reappearing",
]


def fold_stability_rows(
    an: Analysis,
    folds: Sequence[int],
    tables: Mapping[tuple[str, int], pd.DataFrame],
    matchings: Mapping[tuple[str, int], Any],
    cfg: DiffConfig,
) -> list[list[Any]]:
    rows = []
    ref = tables[(an.name, folds[0])]
    changed0 = ref["changed"].to_numpy()
    for fold in folds[1:]:
        match = matchings[(an.name, fold)]
        other = tables[(an.name, fold)]
        ok = match.matched(cfg.stability_cosine)
        partner = np.where(match.partner >= 0, match.partner, 0)
        again = ok & other["changed"].to_numpy()[partner]
        n_changed = int(changed0.sum())
        rows.append(
            [
                an.name,
                "fold_replica",
                f"{an.reference}/fold_{folds[0]}",
                f"{an.reference}/fold_{fold}",
                len(ref),
                len(other),
                cfg.stability_cosine,
                float(ok.mean()),
                float(np.isin(np.arange(len(other)), match.partner[ok]).mean()),
                float(np.nanmean(match.cosine)),
                float(np.nanmedian(match.cosine)),
                match.identity_fraction(),
                n_changed,
                float(again[changed0].mean()) if n_changed else np.nan,
            ]
        )
    return rows


def scheme_alignment_rows(
    an: Analysis, fold: int, decoders: Mapping[tuple[str, int], np.ndarray], cfg: DiffConfig
) -> list[list[Any]]:
    """Hungarian alignment of every other scheme of the analysis with the base SAE (one fold).

    Fine-tuned SAEs start from the base SAE, so a high identity fraction says fine-tuning kept
    the features where they were; matched_a says how many base features survive at all.
    """
    from plmdiff.diff.alignment import hungarian_match

    rows = []
    if ("base", fold) not in decoders:
        return rows
    base = decoders[("base", fold)]
    for scheme in an.schemes:
        if scheme == "base" or (scheme, fold) not in decoders:
            continue
        match = hungarian_match(base, decoders[(scheme, fold)])
        ok = match.matched(cfg.stability_cosine)
        rows.append(
            [
                an.name,
                "scheme_alignment",
                f"base/fold_{fold}",
                f"{scheme}/fold_{fold}",
                len(base),
                len(decoders[(scheme, fold)]),
                cfg.stability_cosine,
                float(ok.mean()),
                float(np.isin(np.arange(len(decoders[(scheme, fold)])), match.partner[ok]).mean()),
                float(np.nanmean(match.cosine)),
                float(np.nanmedian(match.cosine)),
                match.identity_fraction(),
                np.nan,
                np.nan,
            ]
        )
    return rows


def pooled_union_rows(
    an: Analysis,
    folds: Sequence[int],
    decoders: Mapping[tuple[str, int], np.ndarray],
    union_decoders: Mapping[int, Sequence[np.ndarray]],
    cfg: DiffConfig,
) -> list[list[Any]]:
    """ "If we mix the data, does the union of the expected features emerge?"

    The union stacks every per-round fine-tuned SAE's features of a fold. matched_a: fraction
    of union features that the pooled SAE has (max cosine >= threshold); matched_b: fraction of
    pooled features found in the union. A second row restricts the union to the features that
    fine-tuning moved away from the base SAE (1 - cos >= min_direction_change): the
    round-specific features one hopes pooling recovers.
    """
    from plmdiff.diff.alignment import coverage, rowwise_cosine, union_rows

    rows = []
    for fold in folds:
        if fold not in union_decoders or (an.reference, fold) not in decoders:
            continue
        pooled = decoders[(an.reference, fold)]
        union = union_rows(union_decoders[fold])
        cov = coverage(union, pooled, cfg.stability_cosine)
        rows.append(_coverage_row(an, "pooled_vs_union", f"union_ft/fold_{fold}", fold, cov, cfg))
        base = decoders.get(("base", fold))
        if base is None:
            continue
        moved = np.concatenate(
            [
                d[(1 - rowwise_cosine(d, base)) >= cfg.min_direction_change]
                for d in union_decoders[fold]
            ]
        )
        name = f"union_ft_moved/fold_{fold}"
        if len(moved):
            cov = coverage(moved, pooled, cfg.stability_cosine)
            rows.append(_coverage_row(an, "pooled_vs_union_moved", name, fold, cov, cfg))
        else:
            rows.append(
                [
                    an.name,
                    "pooled_vs_union_moved",
                    name,
                    f"{an.reference}/fold_{fold}",
                    0,
                    len(pooled),
                    cfg.stability_cosine,
                    *[np.nan] * 7,
                ]
            )
    return rows


def _coverage_row(
    an: Analysis, kind: str, a: str, fold: int, cov: Any, cfg: DiffConfig
) -> list[Any]:
    return [
        an.name,
        kind,
        a,
        f"{an.reference}/fold_{fold}",
        cov.n_a,
        cov.n_b,
        cfg.stability_cosine,
        cov.a_in_b,
        cov.b_in_a,
        cov.mean_best_cosine_a,
        np.nan,
        np.nan,
        np.nan,
        np.nan,
    ]


# ----------------------------------------------------------------------------- the diff job


@dataclass(frozen=True)
class DiffOutputs:
    features_tsv: str
    features_parquet: str
    examples_parquet: str
    examples_tsv: str
    stability_tsv: str
    volcano_png: str
    volcano_svg: str
    trajectories_png: str
    stability_png: str


def readable_features(features: pd.DataFrame, models: Sequence[str], top_n: int) -> pd.DataFrame:
    """The top_n ranked features of each analysis, with the columns a person reads first."""
    mark = np.where(
        features["changed"] & features["stable"].astype("boolean").eq(False).fillna(False),
        "UNSTABLE",
        np.where(features["changed"] & features["stable"].isna(), "single replica", ""),
    )
    out = features.assign(mark=mark)
    cols = [
        "rank",
        "analysis",
        "feature",
        "change",
        "mark",
        "q_value",
        "p_value",
        "log2_fold_change",
        "spearman_rho",
        *[f"freq_{m}" for m in models],
        "direction_change",
        "norm_ratio",
        "n_firing_sequences",
        "stability",
        "change_replication",
        "folds_present",
        "folds_changed",
    ]
    top = out[out["rank"] <= top_n]
    return top[[c for c in cols if c in top.columns]].reset_index(drop=True)


def write_table(frame: pd.DataFrame, path: str | os.PathLike) -> None:
    from plmdiff.core.runtime import atomic_path

    with atomic_path(path) as tmp:
        frame.to_csv(tmp, sep="\t", index=False, float_format="%.4g", na_rep="NA")


def write_parquet(frame: pd.DataFrame, path: str | os.PathLike) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    from plmdiff.core.runtime import atomic_path

    table = pa.Table.from_pandas(frame, preserve_index=False)
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp, compression="zstd")


def run_diff(
    family: str,
    models: Sequence[str],
    schemes: Sequence[str],
    folds: Sequence[int],
    stats_paths: Mapping[tuple[str, int], str],
    sae_paths: Mapping[tuple[str, int], str],
    cfg: DiffConfig,
    outputs: DiffOutputs,
    *,
    union_paths: Mapping[int, Sequence[str]] | None = None,
) -> FamilyResult:
    """The diff rule: read feature stats and SAE decoders, diff, write tables and figures."""
    from plmdiff.diff import figures as diff_figures
    from plmdiff.diff.examples import examples_tsv, select_examples
    from plmdiff.diff.feature_stats import FeatureStats, sae_decoder
    from plmdiff.sae.training import load_sae

    analyses = family_analyses(family, schemes, models)
    stats = {key: FeatureStats.open(path) for key, path in stats_paths.items()}
    ref_fold = next(iter(folds))
    # Decoders held in memory: every replica of each reference dictionary (fold matching),
    # and every scheme of the reference fold (scheme alignment); not all schemes x folds.
    wanted = {(an.reference, f) for an in analyses for f in folds}
    wanted |= {(s, ref_fold) for an in analyses for s in [*an.schemes, "base"]}
    decoders = {
        key: sae_decoder(load_sae(path)) for key, path in sae_paths.items() if key in wanted
    }
    union = None
    if union_paths:
        union = {f: [sae_decoder(load_sae(p)) for p in ps] for f, ps in union_paths.items()}
    result = diff_family(analyses, models, folds, stats, decoders, cfg, union_decoders=union)
    features = result.features
    write_parquet(features, outputs.features_parquet)
    write_table(readable_features(features, models, cfg.top_n), outputs.features_tsv)

    examples = []
    for an in analyses:
        ranked = features[(features["analysis"] == an.name) & (features["rank"] <= cfg.top_n)]
        by_scheme = {s: stats[(s, ref_fold)] for s in an.schemes}
        examples.append(select_examples(ranked, by_scheme, an.evaluator, models, cfg.top_examples))
    examples_frame = pd.concat(examples, ignore_index=True)
    write_parquet(examples_frame, outputs.examples_parquet)
    write_table(examples_tsv(examples_frame), outputs.examples_tsv)
    write_table(result.stability, outputs.stability_tsv)

    diff_figures.volcano(features, cfg, [outputs.volcano_png, outputs.volcano_svg])
    diff_figures.trajectories(
        features,
        result.fold_tables,
        result.matchings,
        models,
        folds,
        cfg,
        outputs.trajectories_png,
    )
    diff_figures.stability(features, result.matchings, models, cfg, outputs.stability_png)
    return result
