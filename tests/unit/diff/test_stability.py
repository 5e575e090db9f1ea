"""Replication across fold replicas: a feature reappears, and so does its change (same sign of
the posterior log2 fold change)."""

from __future__ import annotations

import numpy as np
import pandas as pd

from plmdiff.diff.alignment import Matching
from plmdiff.diff.stability import add_replication
from tests.unit.diff.synthetic_features import diff_config


def _table(changed, lfc):
    return pd.DataFrame(
        {
            "feature": np.arange(len(changed)),
            "changed": changed,
            "posterior_log2_fold_change": lfc,
            "posterior_log2_fold_change_sd": 0.1,
            "spearman_rho": np.sign(lfc) * 0.5,
            "q_value": 0.01,
            "direction_change": np.nan,
            "direction_cut": np.nan,
            "fires_in_both": True,
        }
    )


def test_changes_replicate_only_on_a_matched_partner_with_the_same_sign():
    ref = _table([True, True, False], [2.0, 2.0, 0.0])
    # fold 1 holds the same features in another order: f0 -> row 1, f1 -> row 0, f2 -> row 2
    other = _table([True, True, False], [-2.0, 2.0, 0.0])
    match = Matching(partner=np.array([1, 0, 2]), cosine=np.array([0.9, 0.95, 0.5]))
    out = add_replication(
        ref, [other], [match], diff_config(stability_cosine=0.7, min_stable_fraction=0.75)
    )
    assert out["folds_present"].tolist() == [2, 2, 1]  # f2's partner is too far away
    assert out["folds_changed"].tolist() == [2, 1, 0]  # f1's partner changed the other way
    assert out["change_replication"].tolist() == [1.0, 0.5, 0.0]
    assert out["stable"].tolist() == [True, False, False]
    assert out["mean_fold_cosine"].tolist() == [0.9, 0.95, 0.5]


def test_one_replica_leaves_stability_unknown():
    out = add_replication(_table([True], [2.0]), [], [], diff_config())
    assert out["n_folds"].tolist() == [1]
    assert out["stable"].isna().all() and out["folds_present"].isna().all()
    assert np.isnan(out["stability"]).all()
