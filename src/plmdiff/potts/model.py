"""Potts models of an alignment: sequence weights, pseudo-likelihood fits, gauge, couplings, energy.

A model over L match columns and q = 21 states (gap + 20 residues) has fields h[i, a] and couplings
J[i, a, j, b] = J[j, b, i, a] (zero for i = j); the energy of a sequence x is
E(x) = -sum_i h[i, x_i] - sum_{i<j} J[i, x_i, j, x_j] (lower is more probable).

The fit maximises the symmetric pseudo-likelihood (plmc's objective, not the asymmetric per-site
variant): one joint problem over h and one symmetric J, so the fitted J is the model whose energies
are compared between rounds, with no averaging of J_ij and J_ji afterwards; in torch it costs the
same as the asymmetric fit. The couplings act through an embedding bag over the (site, state) rows
of the Lq x Lq coupling matrix, so a step costs N L (Lq) operations rather than the N (Lq)^2 of a
one-hot product.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from plmdiff.core.errors import DataError

log = logging.getLogger(__name__)

# State 0 is the gap: a deletion in a match column is a state like any residue (plmc's default).
ALPHABET = "-ACDEFGHIKLMNPQRSTVWY"
Q = len(ALPHABET)
GAP = 0
_CODE = np.full(256, GAP, dtype=np.int8)
for _k, _c in enumerate(ALPHABET):
    _CODE[ord(_c)] = _k
    _CODE[ord(_c.lower())] = _k


@dataclass(frozen=True)
class PottsModel:
    """Fields [L, q] and symmetric couplings [L, q, L, q] (float32 numpy)."""

    h: np.ndarray
    J: np.ndarray

    @property
    def length(self) -> int:
        return int(self.h.shape[0])


@dataclass(frozen=True)
class FitResult:
    """One set's fit in the zero-sum gauge, with its bootstrap refits."""

    model: PottsModel
    scores: np.ndarray  # [L, L] APC-corrected Frobenius norms
    boot_h: np.ndarray  # [B, L, q] gauge-fixed fields of the refits
    boot_scores: np.ndarray  # [B, L, L]


@dataclass(frozen=True)
class FitInfo:
    iterations: int
    objective: float
    seconds: float


def encode(aligned: Sequence[str]) -> np.ndarray:
    """Match-column rows (all of one length) as states [N, L] (int64); other letters (X, B, Z,
    '.') read as gaps, since the alignment keeps no insert states."""
    if not aligned:
        return np.zeros((0, 0), dtype=np.int64)
    lengths = {len(s) for s in aligned}
    if len(lengths) != 1:
        raise DataError(f"aligned rows differ in length ({sorted(lengths)[:5]}): not one alignment")
    raw = np.frombuffer("".join(aligned).encode("ascii", "replace"), dtype=np.uint8)
    return _CODE[raw].astype(np.int64).reshape(len(aligned), -1)


def decode(states: np.ndarray) -> list[str]:
    letters = np.array(list(ALPHABET))
    return ["".join(row) for row in letters[np.asarray(states)]]


def sequence_weights(
    states: np.ndarray, identity: float, device: Any, chunk: int = 2048
) -> np.ndarray:
    """1 / (number of rows at >= `identity` fraction of identical columns, itself included).

    Identity counts gaps as states over all L columns (plmc's `-t`): rows are compared as one-hot
    vectors, in chunks so memory stays N x chunk.
    """
    n, length = states.shape
    if n == 0:
        return np.zeros(0)
    onehot = torch.nn.functional.one_hot(torch.as_tensor(states, device=device), Q)
    flat = onehot.reshape(n, length * Q).to(torch.float32)
    need = identity * length - 1e-6
    counts = torch.zeros(n, device=device)
    for start in range(0, n, chunk):
        same = flat[start : start + chunk] @ flat.T
        counts[start : start + chunk] = (same >= need).sum(1).to(torch.float32)
    return (1.0 / counts).cpu().numpy().astype(np.float64)


def regularization(length: int, lambda_h: float, lambda_j: float) -> tuple[float, float]:
    """(lambda_h, lambda_J): the couplings' strength scales with (L - 1)(q - 1), the number of
    coupling parameters each field competes with (plmc / EVcouplings' `lambda_J_times_Lq`)."""
    return lambda_h, lambda_j * max(length - 1, 1) * (Q - 1)


def _coupling_mask(length: int, device: Any) -> torch.Tensor:
    site = torch.arange(length, device=device).repeat_interleave(Q)
    return (site[:, None] != site[None, :]).to(torch.float32)


def _symmetric(w: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return 0.5 * (w + w.T) * mask


def _site_logits(
    h: torch.Tensor, jmat: torch.Tensor, rows: torch.Tensor, length: int
) -> torch.Tensor:
    """[N, L, q]: h_i(a) + sum_j J_ij(a, x_j) for every row, site and state."""
    summed = torch.nn.functional.embedding_bag(rows, jmat, mode="sum")
    return h.unsqueeze(0) + summed.view(-1, length, Q)


def _initial_fields(states: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    onehot = torch.nn.functional.one_hot(states, Q).to(torch.float32)
    freq = (weights[:, None, None] * onehot).sum(0) + 0.5
    logf = torch.log(freq / freq.sum(1, keepdim=True))
    return logf - logf.mean(1, keepdim=True)


def fit_pseudolikelihood(
    states: np.ndarray,
    weights: np.ndarray,
    *,
    lambda_h: float,
    lambda_j: float,
    max_iterations: int,
    device: Any,
    tolerance: float = 1e-6,
) -> tuple[PottsModel, FitInfo]:
    """Minimise -sum_n w_n log PL(x_n) + lambda_h |h|^2 + lambda_J sum_{i<j} |J_ij|^2 with
    L-BFGS (strong Wolfe line search), the objective divided by sum w so tolerances do not
    depend on the sample size. `lambda_*` are the scaled strengths of `regularization`."""
    n, length = states.shape
    if n == 0 or length == 0:
        raise DataError("cannot fit a Potts model to an empty alignment")
    t0 = time.perf_counter()
    x = torch.as_tensor(states, device=device, dtype=torch.long)
    w = torch.as_tensor(weights, device=device, dtype=torch.float32)
    total = float(w.sum())
    rows = x + torch.arange(length, device=device) * Q
    mask = _coupling_mask(length, device)
    h = _initial_fields(x, w).requires_grad_(True)
    wmat = torch.zeros(length * Q, length * Q, device=device, requires_grad=True)
    opt = torch.optim.LBFGS(
        [h, wmat],
        lr=1.0,
        max_iter=max_iterations,
        history_size=10,
        tolerance_grad=tolerance,
        tolerance_change=tolerance * 1e-3,
        line_search_fn="strong_wolfe",
    )

    def objective() -> torch.Tensor:
        opt.zero_grad()
        jmat = _symmetric(wmat, mask)
        logits = _site_logits(h, jmat, rows, length)
        logp = torch.log_softmax(logits, dim=2).gather(2, x.unsqueeze(2)).squeeze(2)
        nll = -(w * logp.sum(1)).sum()
        penalty = lambda_h * h.pow(2).sum() + 0.5 * lambda_j * jmat.pow(2).sum()
        loss = (nll + penalty) / total
        loss.backward()
        return loss

    opt.step(objective)
    loss = objective()  # step() returns the first evaluation's loss, not the last
    state = opt.state[opt._params[0]]
    with torch.no_grad():
        jmat = _symmetric(wmat, mask)
    model = PottsModel(
        h=h.detach().cpu().numpy().astype(np.float32),
        J=jmat.cpu().numpy().astype(np.float32).reshape(length, Q, length, Q),
    )
    info = FitInfo(
        iterations=int(state.get("n_iter", 0)),
        objective=float(loss.detach()),
        seconds=time.perf_counter() - t0,
    )
    if not math.isfinite(info.objective):
        raise DataError("the pseudo-likelihood fit diverged (non-finite objective)")
    return model, info


def zero_sum_gauge(model: PottsModel) -> PottsModel:
    """The same distribution with sum_a h_i(a) = 0 and every row and column of J_ij summing to
    0: the gauge in which parameters of two fits can be compared entry by entry."""
    J = model.J.astype(np.float64)
    h = model.h.astype(np.float64)
    row = J.mean(axis=3, keepdims=True)  # J_ij(a, .)
    col = J.mean(axis=1, keepdims=True)  # J_ij(., b)
    both = J.mean(axis=(1, 3), keepdims=True)
    J0 = J - row - col + both
    # The mean over b moves into h_i (the diagonal blocks are zero, so i = j adds nothing).
    h0 = h + (row - both).sum(axis=2)[:, :, 0]
    h0 = h0 - h0.mean(axis=1, keepdims=True)
    return PottsModel(h=h0.astype(np.float32), J=J0.astype(np.float32))


def frobenius(model: PottsModel, *, ignore_gap: bool = True) -> np.ndarray:
    """[L, L] Frobenius norms of the zero-sum-gauge coupling blocks (gap rows and columns left
    out, as in plmDCA and EVcouplings, so a shared indel does not read as a contact)."""
    J = zero_sum_gauge(model).J.astype(np.float64)
    if ignore_gap:
        J = J[:, 1:, :, 1:]
    fn = np.sqrt((J**2).sum(axis=(1, 3)))
    np.fill_diagonal(fn, 0.0)
    return fn


def apc(fn: np.ndarray) -> np.ndarray:
    """Average-product correction: F_ij - F_i. F_.j / F_.. over the off-diagonal entries."""
    length = fn.shape[0]
    if length < 3:
        return fn.copy()
    off = ~np.eye(length, dtype=bool)
    row = (fn * off).sum(1) / (length - 1)
    mean = fn[off].mean()
    corrected = fn - np.outer(row, row) / (mean if mean > 0 else 1.0)
    np.fill_diagonal(corrected, 0.0)
    return corrected


def coupling_scores(model: PottsModel) -> np.ndarray:
    """APC-corrected Frobenius norms [L, L]: the contact-map score of a fit."""
    return apc(frobenius(model))


def energies(model: PottsModel, states: np.ndarray, chunk: int = 4096) -> np.ndarray:
    """E(x) = -sum_i h_i(x_i) - sum_{i<j} J_ij(x_i, x_j) of every row [N]."""
    n, length = states.shape
    out = np.empty(n)
    idx = np.arange(length)
    jflat = model.J.reshape(length * Q, length * Q).astype(np.float64)
    for start in range(0, n, chunk):
        x = states[start : start + chunk]
        field = model.h[idx[None, :], x].sum(1)
        rows = idx[None, :] * Q + x
        pair = jflat[rows[:, :, None], rows[:, None, :]].sum(axis=(1, 2)) / 2.0
        out[start : start + chunk] = -(field + pair)
    return out


def top_pairs(scores: np.ndarray, k: int, min_separation: int = 1) -> list[tuple[int, int]]:
    """The k pairs i < j (j - i >= min_separation) with the highest score."""
    i, j = np.triu_indices(scores.shape[0], k=min_separation)
    order = np.argsort(-scores[i, j], kind="stable")[:k]
    return [(int(i[o]), int(j[o])) for o in order]


def fit_with_bootstrap(
    states: np.ndarray,
    weights: np.ndarray,
    *,
    lambda_h: float,
    lambda_j: float,
    max_iterations: int,
    bootstrap: int,
    seed: int,
    device: Any,
) -> tuple[FitResult, FitInfo]:
    """The fit of all rows, and `bootstrap` refits on rows resampled with replacement.

    A resampled row keeps its full-data weight (a drawn duplicate must not shrink the weights of
    its copies, or every refit would see fewer effective sequences than the fit it is compared
    with). Refits start where the fit started, not from its solution: a refit stopped early would
    otherwise stay near the fit and understate the spread.
    """
    t0 = time.perf_counter()
    lh, lj = regularization(states.shape[1], lambda_h, lambda_j)
    full, info = fit_pseudolikelihood(
        states, weights, lambda_h=lh, lambda_j=lj, max_iterations=max_iterations, device=device
    )
    gauged = zero_sum_gauge(full)
    rng = np.random.default_rng(seed)
    n = len(states)
    boot_h, boot_scores = [], []
    for b in range(bootstrap):
        counts = rng.multinomial(n, np.full(n, 1.0 / n))
        keep = counts > 0
        refit, _ = fit_pseudolikelihood(
            states[keep],
            weights[keep] * counts[keep],
            lambda_h=lh,
            lambda_j=lj,
            max_iterations=max_iterations,
            device=device,
        )
        boot_h.append(zero_sum_gauge(refit).h)
        boot_scores.append(coupling_scores(refit))
        log.info("bootstrap refit %d/%d", b + 1, bootstrap)
    length = states.shape[1]
    result = FitResult(
        model=gauged,
        scores=coupling_scores(full),
        boot_h=np.stack(boot_h) if boot_h else np.zeros((0, length, Q), np.float32),
        boot_scores=np.stack(boot_scores) if boot_scores else np.zeros((0, length, length)),
    )
    total = FitInfo(info.iterations, info.objective, time.perf_counter() - t0)
    return result, total
