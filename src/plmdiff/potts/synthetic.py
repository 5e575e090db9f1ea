"""Potts models with known parameters and Gibbs samples of them: the ground truth of the stage's
validation (tests/unit/potts, validation/potts_recovery.py)."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from plmdiff.potts.model import PottsModel, Q, zero_sum_gauge


def planted_model(
    length: int,
    n_pairs: int,
    *,
    seed: int,
    field_scale: float = 1.0,
    coupling_scale: float = 0.5,
) -> tuple[PottsModel, list[tuple[int, int]]]:
    """Random fields and `n_pairs` distinct coupled pairs (i < j) with Gaussian 21 x 21 blocks,
    in the zero-sum gauge; every other block is zero. Returns the model and its pairs."""
    rng = np.random.default_rng(seed)
    i, j = np.triu_indices(length, k=1)
    chosen = rng.choice(len(i), size=n_pairs, replace=False)
    pairs = sorted((int(i[c]), int(j[c])) for c in chosen)
    h = rng.normal(0.0, field_scale, size=(length, Q))
    J = np.zeros((length, Q, length, Q))
    for a, b in pairs:
        block = rng.normal(0.0, coupling_scale, size=(Q, Q))
        J[a, :, b, :] = block
        J[b, :, a, :] = block.T
    model = zero_sum_gauge(PottsModel(h=h.astype(np.float32), J=J.astype(np.float32)))
    return model, pairs


def gibbs_sample(
    model: PottsModel, n: int, *, sweeps: int, seed: int, device: Any = "cpu"
) -> np.ndarray:
    """`n` independent chains from uniform random states, `sweeps` sequential sweeps each; the
    final states [n, L]. Each site's conditional sums only its partners' blocks (the sites whose
    coupling block is non-zero), so a sparse planted model samples in N x partners x q per site."""
    length = model.length
    gen = torch.Generator(device=device).manual_seed(seed)
    h = torch.as_tensor(model.h, device=device, dtype=torch.float32)
    J = torch.as_tensor(model.J, device=device, dtype=torch.float32)
    partners = [
        torch.nonzero(J[i].abs().sum(dim=(0, 2)) > 0).flatten().tolist() for i in range(length)
    ]
    x = torch.randint(0, Q, (n, length), generator=gen, device=device)
    for _ in range(sweeps):
        for i in range(length):
            logits = h[i].expand(n, Q).clone()
            for j in partners[i]:
                logits += J[i, :, j, :].T[x[:, j]]
            cdf = torch.cumsum(torch.softmax(logits, dim=1), dim=1)
            u = torch.rand(n, 1, generator=gen, device=device)
            x[:, i] = (cdf < u).sum(1).clamp(max=Q - 1)
    return x.cpu().numpy()
