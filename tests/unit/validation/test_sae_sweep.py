"""The SAE sweep's summary: the best latent per residue set and the composition bar."""

from __future__ import annotations

import numpy as np
import torch

from validation.sae_sweep import shuffled_batches, summarise
from validation.scoring import FeatureMatch


def test_the_best_latent_maximises_precision_times_coverage_and_the_bar_counts():
    match = FeatureMatch(
        coverage=np.array([1.0, 0.9, 0.2, 0.3, 0.0]),
        precision=np.array([0.1, 0.85, 1.0, 0.8, 0.0]),
        enrichment=np.zeros(5),
        n_fire=np.array([900, 120, 10, 40, 0]),
        n_occurrences=100,
    )
    row = summarise(match, "K")
    assert (row.best, row.alive) == (1, 4)
    assert (row.precision, row.coverage) == (0.85, 0.9)
    # Latent 2 is precise but covers too little; latent 3 sits exactly at both bars.
    assert row.qualifying == 2


def test_batches_are_whole_seeded_epochs_over_the_tokens():
    x = torch.arange(10, dtype=torch.float32).repeat(3, 1).T  # 10 tokens x 3
    first = shuffled_batches(x, 4, seed=0, standardize=False)
    epoch = [next(first) for _ in range(2)]  # 2 whole batches per epoch (8 of 10 tokens)
    seen = torch.cat(epoch)[:, 0]
    assert all(b.shape == (4, 3) for b in epoch) and len(set(seen.tolist())) == 8
    again = shuffled_batches(x, 4, seed=0, standardize=False)
    assert all(torch.equal(a, next(again)) for a in epoch)
    unit = next(shuffled_batches(x + torch.tensor([0.0, 1.0, 2.0]), 4, 0, standardize=True))
    assert torch.allclose(unit.mean(-1), torch.zeros(4), atol=1e-5)
