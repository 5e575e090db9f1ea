"""Which SAE features changed across rounds: fold change, trend test, FDR, the call, the rank.

The unit of the trend test is the sequence: for every feature, the Spearman correlation between
a sequence's round index (0 = base, 1..R = rounds) and the fraction of that sequence's residues
on which the feature fires. Sequences are independent samples of their model, so under the null
"the feature fires alike in every round" the round labels are exchangeable and the test has a
real null. Features that fire in fewer than `min_firing_sequences` sequences are not tested
(their p-value is NaN and they do not count towards the Benjamini-Hochberg m): the number of
firing sequences does not depend on the round labels, so this filter keeps the FDR valid while
removing tests that could never reach significance.

The call (ARCHITECTURE.md, "Feature diffs"): a feature changed in frequency when its trend's
q <= fdr, the trend and the posterior log2 fold change (last round vs base, gamma-Poisson with
`prior_count` firings of prior, `plmdiff.diff.evidence`) agree in sign, and that posterior's
95% credible interval of |log2 fold change| clears `min_abs_log2_fold_change`. A raw fold change
would favour rare features (3 -> 12 firings is log2 2 by chance); the posterior shrinks them.
A fine-tuned SAE's feature changed in direction when its decoder moved beyond the null
fine-tune's quantile (and the floor) and it fires in both the base and the last round.

Rates per sequence cannot tell "a feature lost its positions" from "a feature changed": a latent
that fires once near residue 60 of every 64-residue base sequence never fires in a round whose
sequences are 34 long. `matched_log2_fold_change` compares the base and the last round at the
same positions (direct standardisation of both rates to the last round's tokens per position
bin, over the bins both cover); a frequency call whose matched change does not hold (opposite
sign, or under `length_effect_ratio` of the raw log2 fold change) is a `length_effect`, listed
apart and not counted as changed.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import stats as sps

from plmdiff.core.errors import DataError
from plmdiff.core.stats import average_ranks, benjamini_hochberg
from plmdiff.diff.evidence import (
    PosteriorFoldChange,
    call_by_evidence,
    direction_cut,
    evidence_order,
    fires_in_both,
    posterior_log2_fold_change,
    sign_agreement,
)
from plmdiff.diff.feature_stats import PositionCounts
from plmdiff.diff.settings import DiffConfig


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


def matched_log2_fold_change(
    base: PositionCounts, other: PositionCounts, d_sae: int, pseudocount: float
) -> np.ndarray:
    """log2 fold change of `other` over `base` at matched positions, per feature.

    Direct standardisation to `other`'s token distribution over the position bins both models
    hold tokens in: `other`'s observed firings there, O = sum_b fire_o[b], against the firings
    the base would have on the same tokens, E = sum_b tokens_o[b] * fire_base[b] / tokens_base[b].
    Both standardised rates share the denominator T = sum_b tokens_o[b], so with the raw fold
    change's pseudocount, log2(((O + pc) / (T + pc)) / ((E + pc) / (T + pc))) = log2((O + pc) /
    (E + pc)). Bins only one model covers (positions the shorter model's sequences lack) drop out.
    """
    if base.bin_width != other.bin_width:
        raise DataError(
            f"position bins differ between models ({base.bin_width} vs {other.bin_width} "
            "residues): recompute the feature stats with one diff.position_bin"
        )
    n = max(len(base.tokens), len(other.tokens))
    tb = np.zeros(n)
    to = np.zeros(n)
    tb[: len(base.tokens)] = base.tokens
    to[: len(other.tokens)] = other.tokens
    common = (tb > 0) & (to > 0)
    scale = np.where(common, to / np.where(tb > 0, tb, 1.0), 0.0)
    bf = base.fires
    expected = np.bincount(
        bf["feature"].to_numpy(dtype=np.int64),
        weights=bf["n_fire"].to_numpy(dtype=float) * scale[bf["bin"].to_numpy(dtype=np.int64)],
        minlength=d_sae,
    )
    of = other.fires
    observed = np.bincount(
        of["feature"].to_numpy(dtype=np.int64),
        weights=of["n_fire"].to_numpy(dtype=float) * common[of["bin"].to_numpy(dtype=np.int64)],
        minlength=d_sae,
    )
    return np.log2((observed + pseudocount) / (expected + pseudocount))


def length_effect(raw: np.ndarray, matched: np.ndarray, ratio: float) -> np.ndarray:
    """The change does not hold at matched positions: the matched log2 fold change has the
    other sign than the raw one, or keeps less than `ratio` of it (NaN matched: never)."""
    raw = np.asarray(raw, dtype=float)
    matched = np.asarray(matched, dtype=float)
    known = ~np.isnan(matched)
    m = np.nan_to_num(matched)
    flipped = np.sign(m) != np.sign(raw)
    shrunk = np.abs(m) < ratio * np.abs(raw)
    return known & (flipped | shrunk)


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
    # Tokens and firing tokens per position bin (None: feature stats written before them).
    positions: PositionCounts | None = None


def analyse_rounds(
    evidence: Sequence[RoundEvidence],
    d_sae: int,
    cfg: DiffConfig,
    *,
    analysis: str,
    direction: Mapping[str, pd.DataFrame] | None = None,
    null_direction: np.ndarray | None = None,
) -> pd.DataFrame:
    """One row per feature: frequencies per round, fold changes last vs base, trend test, q, call.

    `evidence` is ordered by round (base first). `direction` maps a label (a round, or a pooled
    scheme) to the feature stats of a fine-tuned SAE: its decoder direction change (1 - cosine
    to the base SAE's row) and norm ratio become columns, and the last label's enter the call.
    `null_direction` is the same statistic of the null fine-tune (firing features only), whose
    `direction_null_quantile` becomes the direction cut (never below `min_direction_change`).
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
    count_b, tokens_b = b["n_fire"].to_numpy(), float(b["n_tokens"].iloc[0])
    count_l, tokens_l = lst["n_fire"].to_numpy(), float(lst["n_tokens"].iloc[0])
    table["log2_fold_change"] = log2_fold_change(
        count_b, tokens_b, count_l, tokens_l, cfg.pseudocount
    )
    posterior = posterior_log2_fold_change(count_b, tokens_b, count_l, tokens_l, cfg.prior_count)
    table["posterior_log2_fold_change"] = posterior.mean
    table["posterior_log2_fold_change_sd"] = posterior.sd
    table["posterior_abs_log2_fold_change_lower"] = posterior.lower_abs()
    table["matched_log2_fold_change"] = np.nan
    if base.positions is not None and last.positions is not None:
        table["matched_log2_fold_change"] = matched_log2_fold_change(
            base.positions, last.positions, d_sae, cfg.pseudocount
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
    table["sign_agreement"] = sign_agreement(result.rho, posterior.mean)
    table["fires_in_both"] = fires_in_both(
        b["n_firing_sequences"].to_numpy(),
        lst["n_firing_sequences"].to_numpy(),
        cfg.min_firing_sequences,
    )
    table["direction_change"] = np.nan
    table["norm_ratio"] = np.nan
    table["direction_cut"] = np.nan
    for label, frame in (direction or {}).items():
        rows = _per_feature(frame, d_sae, f"decoder stats of '{label}'")
        table[f"dir_change_{label}"] = 1.0 - rows["dec_cos_to_base"].to_numpy()
        table[f"norm_ratio_{label}"] = rows["dec_norm_ratio"].to_numpy()
        table["direction_change"] = table[f"dir_change_{label}"]
        table["norm_ratio"] = table[f"norm_ratio_{label}"]
    if direction:
        table["direction_cut"] = direction_cut(
            null_direction, cfg.direction_null_quantile, cfg.min_direction_change
        )
    moved = direction_call(table)
    frequency = frequency_call(table, cfg)
    # A direction change stands on the decoder, whatever the positions: it stays changed.
    table["length_effect"] = (
        frequency
        & ~moved
        & length_effect(
            table["log2_fold_change"].to_numpy(),
            table["matched_log2_fold_change"].to_numpy(),
            cfg.length_effect_ratio,
        )
    )
    table["changed"] = (frequency & ~table["length_effect"].to_numpy()) | moved
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


def frequency_call(table: pd.DataFrame, cfg: DiffConfig) -> np.ndarray:
    """Significant trend, its sign shared by the posterior fold change, whose credible interval
    clears `min_abs_log2_fold_change` (plmdiff.diff.evidence.call_by_evidence)."""
    posterior = PosteriorFoldChange(
        mean=table["posterior_log2_fold_change"].to_numpy(),
        sd=table["posterior_log2_fold_change_sd"].to_numpy(),
    )
    return call_by_evidence(
        table["q_value"].to_numpy(),
        table["spearman_rho"].to_numpy(),
        posterior,
        fdr=cfg.fdr,
        min_abs_log2_fold_change=cfg.min_abs_log2_fold_change,
    )


def direction_call(table: pd.DataFrame) -> np.ndarray:
    """A fine-tuned SAE's decoder row moved beyond the null-calibrated cut, for a feature that
    fires in both the base and the last round (a latent nobody uses moves for no reason)."""
    moved = np.nan_to_num(table["direction_change"].to_numpy(dtype=float), nan=0.0)
    # No direction statistic (the base family): the cut is NaN and nothing compares above it.
    over = moved > table["direction_cut"].to_numpy(dtype=float)
    return over & table["fires_in_both"].to_numpy(dtype=bool)


def change_kind(table: pd.DataFrame, cfg: DiffConfig) -> pd.Series:
    """'up', 'down', 'direction' or '' per feature, for tables people read (a length effect
    is '': it has its own column)."""
    freq = frequency_call(table, cfg)
    if "length_effect" in table:
        freq &= ~table["length_effect"].to_numpy(dtype=bool)
    lfc = table["posterior_log2_fold_change"].to_numpy()
    kind = np.where(freq & (lfc > 0), "up", np.where(freq & (lfc < 0), "down", ""))
    kind = np.where((kind == "") & direction_call(table), "direction", kind)
    return pd.Series(kind, index=table.index)


def rank_features(table: pd.DataFrame) -> pd.DataFrame:
    """Rank by evidence (plmdiff.diff.evidence.evidence_order): changed and stable first, then
    changed, then the rest; inside, by capped -log10 q x change replication, then by the
    posterior |log2 fold change|. Returns the table sorted, with a 1-based `rank` column."""
    stable = table["stable"].astype("boolean").fillna(False).to_numpy(dtype=bool)
    order = evidence_order(
        table["changed"].to_numpy(dtype=bool),
        stable,
        table["q_value"].to_numpy(dtype=float),
        table["change_replication"].to_numpy(dtype=float),
        table["posterior_log2_fold_change"].to_numpy(dtype=float),
    )
    out = table.iloc[order].reset_index(drop=True)
    out.insert(0, "rank", np.arange(1, len(out) + 1))
    return out
