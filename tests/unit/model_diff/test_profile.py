"""The activation-difference profile finds a planted move: where along the sequence and how far."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from plmdiff.activations.writers import TokenWriter
from plmdiff.model_diff.agreement import agreement_summary, max_cosine
from plmdiff.model_diff.paired import PairedLayer
from plmdiff.model_diff.profile import build_profile

D = 6


def write_model(path, seqs, acts):
    with TokenWriter(path, layer=1, d_model=D, dtype="float32", metadata={}, row_group_rows=9) as w:
        w.write(list(seqs), list(seqs.values()), acts)


def test_profile_locates_a_move_in_the_second_half_of_every_sequence(tmp_path):
    rng = np.random.default_rng(0)
    seqs = {f"s{i}": "A" * (10 + 2 * i) for i in range(6)}
    base = rng.normal(size=(sum(map(len, seqs.values())), D)).astype(np.float32)
    pos = np.concatenate([np.arange(len(s)) for s in seqs.values()])
    rel = np.concatenate([np.arange(len(s)) / len(s) for s in seqs.values()])
    shift = np.zeros(D, dtype=np.float32)
    shift[0] = 3.0
    moved = base + (rel >= 0.5)[:, None] * shift
    dirs = {"base": tmp_path / "base", "r1": tmp_path / "r1"}
    write_model(dirs["base"] / "part-00000.parquet", seqs, base)
    write_model(dirs["r1"] / "part-00000.parquet", seqs, moved)
    kl = pd.DataFrame(
        {
            "set": ["base", "base", "own"],
            "seq_id": ["s0", "s1", "s0"],
            "length": [10, 30, 10],
            "kl_mean": [1.0, 2.0, 9.0],
        }
    )
    profile = build_profile({1: PairedLayer.open(dirs)}, 2, {"r1": kl})
    first, second = profile[profile["scope"] == "position"].itertuples()
    assert first.mean == pytest.approx(0.0) and second.mean == pytest.approx(3.0, rel=1e-5)
    whole = profile[profile["scope"] == "all"].iloc[0]
    assert whole["n_tokens"] == len(pos)
    assert whole["mean"] == pytest.approx(3.0 * (rel >= 0.5).mean(), rel=1e-5)
    assert whole["q95"] == pytest.approx(3.0, rel=1e-5) and whole["q05"] == pytest.approx(0.0)
    assert whole["kl_mean"] == pytest.approx((1.0 * 10 + 2.0 * 30) / 40)


def test_agreement_counts_matched_directions():
    eye = np.eye(4)
    views = {"a": eye[:2], "b": np.vstack([eye[0], eye[2], eye[3]]), "c": np.zeros((0, 4))}
    summary = agreement_summary(views, 0.9, model="r1", layer=1).set_index(["view", "other"])
    assert summary.loc[("a", "b"), "matched"] == 1
    assert summary.loc[("b", "a"), "matched_fraction"] == pytest.approx(1 / 3)
    assert summary.loc[("c", "a"), "directions"] == 0
    cos, which = max_cosine(eye[:1], np.vstack([eye[1], eye[0]]))
    assert cos[0] == pytest.approx(1.0) and which[0] == 1
