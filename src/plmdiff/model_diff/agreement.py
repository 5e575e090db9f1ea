"""Agreement of the three views of what a round changed, by matched decoder directions.

- the crosscoder's round-only latents that survive latent scaling, as d_round - d_base;
- the latents of the SAE on activation differences of that round (fire on held-out tokens);
- the per-round SAE diff's changed features (family `base`: the base SAE encodes every round),
  as the base SAE's decoder rows.

A direction matches another view when its largest cosine to that view's directions reaches
match_cosine. The SAE diff works on standardised tokens (sae.normalisation unit_norm), the
others on raw activations (the crosscoder's directions taken back to raw units); a per-token
standardisation removes the component along the all-ones vector, so its cosines are a slight
underestimate.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import pandas as pd


def unit_rows(matrix: np.ndarray) -> np.ndarray:
    matrix = np.asarray(matrix, dtype=np.float64)
    if matrix.ndim != 2 or len(matrix) == 0:
        return np.zeros((0, matrix.shape[-1] if matrix.ndim == 2 else 0))
    return matrix / np.maximum(np.linalg.norm(matrix, axis=1, keepdims=True), 1e-12)


def max_cosine(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For each row of a: the largest cosine to a row of b and that row (-1 when b is empty)."""
    if len(a) == 0:
        return np.zeros(0), np.zeros(0, dtype=np.int64)
    if len(b) == 0:
        return np.full(len(a), np.nan), np.full(len(a), -1, dtype=np.int64)
    cos = unit_rows(a) @ unit_rows(b).T
    best = cos.argmax(axis=1)
    return cos[np.arange(len(a)), best], best


def agreement_summary(
    views: Mapping[str, np.ndarray], match_cosine: float, *, model: str, layer: int
) -> pd.DataFrame:
    """One row per ordered pair of views: how many directions of `view` match in `other`."""
    rows = []
    for name, a in views.items():
        for other, b in views.items():
            if name == other:
                continue
            cos, _ = max_cosine(a, b)
            rows.append(
                {
                    "layer": layer,
                    "model": model,
                    "view": name,
                    "other": other,
                    "directions": len(a),
                    "other_directions": len(b),
                    "matched": int(np.sum(cos >= match_cosine)) if len(b) else 0,
                    "matched_fraction": float(np.mean(cos >= match_cosine))
                    if len(a) and len(b)
                    else np.nan,
                    "median_max_cosine": float(np.median(cos)) if len(a) and len(b) else np.nan,
                }
            )
    return pd.DataFrame(rows)
