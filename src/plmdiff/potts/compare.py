"""Round against base: field shifts, coupling changes with bootstrap intervals, energies.

Both fits are in the zero-sum gauge, so fields and couplings of the two are compared entry by
entry. A round's change at a pair is the difference of APC-corrected Frobenius norms; its
uncertainty comes from the B bootstrap refits of each model (sequences resampled with their
full-data weights). The bootstrap sets of the two models are independent, so the b-th
difference pairs the b-th refit of each; the standard error of the difference is the root sum of
the two bootstrap variances, which with B = 20 supports a normal (Wald) p-value where a
percentile p could not go below 1/21. BH over the pairs i < j gives the q-values.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import pandas as pd
from scipy import stats as sps

from plmdiff.core.errors import DataError
from plmdiff.core.stats import benjamini_hochberg, percentile_interval
from plmdiff.potts.model import ALPHABET, FitResult


def _check_shapes(base: FitResult, other: FitResult) -> None:
    if base.model.h.shape != other.model.h.shape:
        raise DataError(
            f"Potts fits over different columns ({base.model.h.shape} vs {other.model.h.shape}):"
            " both must come from one profile"
        )
    if len(base.boot_scores) != len(other.boot_scores) or len(base.boot_scores) < 2:
        raise DataError(
            f"bootstrap refits differ or are too few ({len(base.boot_scores)} vs "
            f"{len(other.boot_scores)}; potts.bootstrap)"
        )


def field_shifts(base: FitResult, other: FitResult) -> pd.DataFrame:
    """Per site: |h_round - h_base| (L2 over states) with a 95% bootstrap interval, and the
    state whose field moved most (up or down)."""
    _check_shapes(base, other)
    delta = other.model.h.astype(np.float64) - base.model.h
    shift = np.linalg.norm(delta, axis=1)
    boot = np.linalg.norm(other.boot_h.astype(np.float64) - base.boot_h, axis=2)
    low, high = percentile_interval(boot.T, 0.95) if boot.size else (shift, shift)
    top = np.abs(delta).argmax(axis=1)
    frame = pd.DataFrame(
        {
            "site": np.arange(1, len(shift) + 1),
            "field_shift": shift,
            "ci_low": np.asarray(low).reshape(-1),
            "ci_high": np.asarray(high).reshape(-1),
            "top_state": [ALPHABET[k] for k in top],
            "top_state_change": delta[np.arange(len(top)), top],
        }
    )
    frame["rank"] = frame["field_shift"].rank(ascending=False, method="min").astype(int)
    return frame.sort_values("site", kind="stable").reset_index(drop=True)


def coupling_changes(base: FitResult, other: FitResult, fdr: float) -> pd.DataFrame:
    """Per pair i < j (1-based profile columns): base and round APC-FN, their difference with
    a 95% bootstrap interval, Wald p, BH q and whether q < fdr; sorted by q then |change|."""
    _check_shapes(base, other)
    length = base.scores.shape[0]
    i, j = np.triu_indices(length, k=1)
    delta = other.scores[i, j] - base.scores[i, j]
    boot = other.boot_scores[:, i, j].astype(np.float64) - base.boot_scores[:, i, j]
    low, high = percentile_interval(boot.T, 0.95)
    se = np.sqrt(
        base.boot_scores[:, i, j].var(axis=0, ddof=1)
        + other.boot_scores[:, i, j].var(axis=0, ddof=1)
    )
    with np.errstate(divide="ignore", invalid="ignore"):
        z = np.where(se > 0, delta / se, 0.0)
    p = 2.0 * sps.norm.sf(np.abs(z))
    q = benjamini_hochberg(p)
    frame = pd.DataFrame(
        {
            "site_i": i + 1,
            "site_j": j + 1,
            "base_score": base.scores[i, j],
            "round_score": other.scores[i, j],
            "change": delta,
            "ci_low": np.asarray(low).reshape(-1),
            "ci_high": np.asarray(high).reshape(-1),
            "se": se,
            "p_value": p,
            "q_value": q,
            "significant": q < fdr,
        }
    )
    order = np.lexsort((-np.abs(frame["change"].to_numpy()), frame["q_value"].to_numpy()))
    return frame.iloc[order].reset_index(drop=True)


def change_matrix(changes: pd.DataFrame, length: int) -> np.ndarray:
    """[L, L] symmetric matrix of the pair changes (for the contact-map figure)."""
    out = np.zeros((length, length))
    i = changes["site_i"].to_numpy() - 1
    j = changes["site_j"].to_numpy() - 1
    out[i, j] = changes["change"].to_numpy()
    out[j, i] = out[i, j]
    return out


def energy_band(reference: np.ndarray, level: float = 0.95) -> tuple[float, float]:
    """The central `level` interval (2.5-97.5% by default) of the reference set's energies."""
    if len(reference) == 0:
        raise DataError("no reference energies for the energy band")
    tail = (1.0 - level) / 2.0
    low, high = np.quantile(reference, [tail, 1.0 - tail])
    return float(low), float(high)


def energy_summary(energies: Mapping[str, np.ndarray], reference: str, scorer: str) -> pd.DataFrame:
    """Per set: energies under the `scorer` model, and the fraction inside the reference set's
    2.5-97.5% band."""
    low, high = energy_band(energies[reference])
    rows = []
    for name, values in energies.items():
        inside = (values >= low) & (values <= high)
        rows.append(
            {
                "set": name,
                "model": scorer,
                "reference": reference,
                "sequences": len(values),
                "energy_mean": float(values.mean()) if len(values) else float("nan"),
                "energy_median": float(np.median(values)) if len(values) else float("nan"),
                "band_low": low,
                "band_high": high,
                "fraction_in_band": float(inside.mean()) if len(values) else float("nan"),
            }
        )
    return pd.DataFrame(rows)
