"""The position-matched fold change and the length effect (ARCHITECTURE.md, "Feature diffs")."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from plmdiff.core.errors import DataError
from plmdiff.diff.feature_stats import PositionCounts
from plmdiff.diff.statistics import (
    RoundEvidence,
    analyse_rounds,
    change_kind,
    length_effect,
    matched_log2_fold_change,
)
from tests.unit.diff.synthetic_features import diff_config

WIDTH = 8


def _counts(tokens, fires) -> PositionCounts:
    """fires: (bin, feature, n_fire) triples."""
    frame = pd.DataFrame(fires, columns=["bin", "feature", "n_fire"])
    return PositionCounts(bin_width=WIDTH, tokens=np.asarray(tokens), fires=frame)


def test_matched_fold_change_by_hand():
    base = _counts([10, 10, 5], [(0, 0, 1), (1, 0, 4), (2, 0, 5), (2, 1, 5), (0, 2, 2)])
    other = _counts([20, 4], [(0, 0, 3), (1, 0, 2), (0, 2, 8)])
    lfc = matched_log2_fold_change(base, other, 4, pseudocount=1.0)
    # Feature 0: the base's rates 1/10 and 4/10 on the round's 20 and 4 tokens of bins 0 and 1
    # (bin 2 only the base covers): E = 20 * 0.1 + 4 * 0.4 = 3.6 firings where the round has O = 5.
    # Standardised rates (O + 1) / 25 and (E + 1) / 25.
    assert lfc[0] == pytest.approx(np.log2((5 + 1) / 25 / ((3.6 + 1) / 25)))
    # Feature 1 fires only at positions the round lacks: no change at matched positions.
    assert lfc[1] == pytest.approx(0.0)
    # Feature 2: base rate 2/10 in bin 0 -> E = 4; the round fires 8 times there.
    assert lfc[2] == pytest.approx(np.log2(9 / 5))
    assert lfc[3] == pytest.approx(0.0)  # never fires
    with pytest.raises(DataError, match="position bins differ"):
        matched_log2_fold_change(base, PositionCounts(4, other.tokens, other.fires), 4, 1.0)


def test_length_effect_rule():
    raw = np.array([-4.8, 1.0, 1.0, 1.0, 2.0])
    matched = np.array([0.0, 0.9, 0.4, -0.5, np.nan])
    assert length_effect(raw, matched, 0.5).tolist() == [True, False, True, True, False]


def _round(model, lengths, fire_at, offset, rng) -> RoundEvidence:
    """Sequences of `lengths` residues, one token each; `fire_at(rng, length)` -> [length, d_sae]
    booleans: which tokens each feature fires on."""
    seq_rows, fire_rows, pos_rows = [], [], []
    for i, n in enumerate(lengths):
        fire = fire_at(rng, n)
        seq_rows.append({"seq_index": offset + i, "seq_id": f"{model}_{i}", "n_tokens": n})
        tok, feat = np.nonzero(fire)
        pos_rows.append(pd.DataFrame({"bin": tok // WIDTH, "feature": feat}))
        per = np.bincount(feat, minlength=fire.shape[1])
        for f in np.flatnonzero(per):
            fire_rows.append({"seq_index": offset + i, "feature": f, "n_fire": per[f]})
    seqs = pd.DataFrame(seq_rows).assign(model=model)
    fires = pd.DataFrame(fire_rows, columns=["seq_index", "feature", "n_fire"])
    d_sae = 3
    n_fire = fires.groupby("feature")["n_fire"].sum().reindex(range(d_sae), fill_value=0)
    n_seqs = fires.groupby("feature").size().reindex(range(d_sae), fill_value=0)
    n_tokens = int(seqs["n_tokens"].sum())
    stats = pd.DataFrame(
        {
            "feature": np.arange(d_sae),
            "model": model,
            "n_tokens": n_tokens,
            "n_fire": n_fire.to_numpy(),
            "frequency": n_fire.to_numpy() / n_tokens,
            "mean_act": 1.0,
            "n_firing_sequences": n_seqs.to_numpy(),
            "sequence_fraction": n_seqs.to_numpy() / len(seqs),
            "dec_cos_to_base": 1.0,
            "dec_norm_ratio": 1.0,
        }
    )
    binned = pd.concat(pos_rows).groupby(["bin", "feature"]).size().rename("n_fire")
    tokens = np.bincount(np.concatenate([np.arange(n) // WIDTH for n in lengths]))
    positions = PositionCounts(WIDTH, tokens, binned.reset_index())
    return RoundEvidence(model, "base", stats, seqs, fires, positions)


def _firing(position_60: bool, rate: float):
    def fire_at(rng, n):
        fire = np.zeros((n, 3), dtype=bool)
        # Feature 0: once per sequence at residue 60, in 98% of the sequences that reach it.
        if position_60 and n > 60:
            fire[60, 0] = rng.random() < 0.98
        fire[:, 1] = rng.random(n) < rate  # per-position rate, set per model
        fire[:, 2] = rng.random(n) < 0.1  # flat
        return fire

    return fire_at


def test_a_feature_of_lost_positions_is_a_length_effect_and_a_real_change_is_not():
    rng = np.random.default_rng(0)
    ev = [
        _round("r0", [64] * 150, _firing(True, 0.06), 0, rng),
        _round("r1", [48] * 150, _firing(True, 0.12), 1000, rng),
        _round("r2", [34] * 150, _firing(True, 0.12), 2000, rng),
    ]
    cfg = diff_config()
    # Without positions the per-sequence comparison calls the position feature changed.
    blind = analyse_rounds(
        [RoundEvidence(e.model, e.scheme, e.stats, e.sequences, e.fires) for e in ev],
        3,
        cfg,
        analysis="base",
    )
    assert blind["changed"].tolist() == [True, True, False]
    assert np.isnan(blind["matched_log2_fold_change"]).all()
    assert not blind["length_effect"].any()

    table = analyse_rounds(ev, 3, cfg, analysis="base")
    assert table.loc[0, "log2_fold_change"] < -4
    assert table.loc[0, "matched_log2_fold_change"] == pytest.approx(0.0)
    assert table["length_effect"].tolist() == [True, False, False]
    # The per-position rate doubled: still changed, and the matched change holds (about log2 2).
    assert table["changed"].tolist() == [False, True, False]
    assert table.loc[1, "matched_log2_fold_change"] == pytest.approx(1.0, abs=0.25)
    assert change_kind(table, cfg).tolist() == ["", "up", ""]
