"""The activation-difference profile: where in depth and along the sequence each round moved.

For every layer, round and token of the shared sequences: the distance ||h_round - h_base|| and
the relative distance ||h_round - h_base|| / ||h_base||, summarised over all tokens and in bins
of relative position pos / length (the mean, quantiles of the distance, the mean relative
distance), next to the per-token KL of the round on the base model's samples (kl stage).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd

from plmdiff.activations.readers import open_parquet
from plmdiff.model_diff.paired import PairedLayer, iter_paired_rows
from plmdiff.model_diff.settings import PROFILE_QUANTILES


def sequence_lengths(layer: PairedLayer) -> dict[str, int]:
    """Embedded residues per sequence (max pos + 1) from the base model's token parts."""
    out: dict[str, int] = {}
    for part in layer.files:
        table = open_parquet(part[0]).read(columns=["seq_id", "pos"])
        frame = table.to_pandas()
        for seq_id, top in frame.groupby("seq_id", sort=False)["pos"].max().items():
            out[str(seq_id)] = max(out.get(str(seq_id), 0), int(top) + 1)
    return out


def token_distances(
    layer: PairedLayer, lengths: Mapping[str, int], bins: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(distance [n, rounds], relative distance [n, rounds], position bin [n]) of every token."""
    dist, rel, where = [], [], []
    for rows in iter_paired_rows(layer):
        base = rows.act[:, 0:1, :]
        delta = np.linalg.norm(rows.act[:, 1:, :] - base, axis=-1)
        dist.append(delta)
        rel.append(delta / np.maximum(np.linalg.norm(base, axis=-1), 1e-12))
        length = np.array([lengths[s] for s in rows.seq_id], dtype=np.float64)
        where.append(np.minimum((rows.pos / length * bins).astype(np.int64), bins - 1))
    if not dist:
        n_rounds = len(layer.models) - 1
        return np.empty((0, n_rounds)), np.empty((0, n_rounds)), np.empty(0, dtype=np.int64)
    return np.concatenate(dist), np.concatenate(rel), np.concatenate(where)


def _summary(dist: np.ndarray, rel: np.ndarray) -> dict[str, float]:
    row = {"n_tokens": len(dist), "mean": float(dist.mean()) if len(dist) else np.nan}
    for q in PROFILE_QUANTILES:
        row[f"q{round(q * 100):02d}"] = float(np.quantile(dist, q)) if len(dist) else np.nan
    row["mean_relative"] = float(rel.mean()) if len(rel) else np.nan
    return row


def layer_profile(
    layer_index: int, layer: PairedLayer, lengths: Mapping[str, int], bins: int
) -> pd.DataFrame:
    """Rows of one layer: per round, all tokens (`scope` all) and each position bin."""
    dist, rel, where = token_distances(layer, lengths, bins)
    rows = []
    for r, model in enumerate(layer.models[1:]):
        rows.append(
            {
                "layer": layer_index,
                "model": model,
                "scope": "all",
                "position_from": 0.0,
                "position_to": 1.0,
                **_summary(dist[:, r], rel[:, r]),
            }
        )
        for b in range(bins):
            sel = where == b
            rows.append(
                {
                    "layer": layer_index,
                    "model": model,
                    "scope": "position",
                    "position_from": b / bins,
                    "position_to": (b + 1) / bins,
                    **_summary(dist[sel, r], rel[sel, r]),
                }
            )
    return pd.DataFrame(rows)


def kl_on_shared(kl_tables: Mapping[str, pd.DataFrame], seq_ids: set[str]) -> dict[str, float]:
    """Per round, the mean per-token KL(round || base) over the base-model samples the kl stage
    scored that are also shared sequences (NaN when none are)."""
    out = {}
    for model, frame in kl_tables.items():
        sel = frame[(frame["set"] == "base") & frame["seq_id"].isin(seq_ids)]
        weights = sel["length"].to_numpy(dtype=float)
        out[model] = (
            float(np.average(sel["kl_mean"], weights=weights)) if weights.sum() > 0 else np.nan
        )
    return out


def build_profile(
    layers: Mapping[int, PairedLayer],
    bins: int,
    kl_tables: Mapping[str, pd.DataFrame] | None = None,
) -> pd.DataFrame:
    """The profile of every layer (layers ascending), with `kl_mean` on the `all` rows."""
    frames: list[pd.DataFrame] = []
    seq_ids: set[str] = set()
    for index in sorted(layers):
        lengths = sequence_lengths(layers[index])
        seq_ids |= set(lengths)
        frames.append(layer_profile(index, layers[index], lengths, bins))
    profile = pd.concat(frames, ignore_index=True)
    kl = kl_on_shared(kl_tables or {}, seq_ids)
    profile["kl_mean"] = [
        kl.get(m, np.nan) if s == "all" else np.nan
        for m, s in zip(profile["model"], profile["scope"], strict=True)
    ]
    return profile


def rounds_of(profile: pd.DataFrame) -> Sequence[str]:
    return list(dict.fromkeys(profile["model"]))
