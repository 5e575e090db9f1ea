"""plmdiff.sampling.rng: exact 32-bit arithmetic, noise keyed by (sequence, step, token)."""

from __future__ import annotations

import torch

from plmdiff.sampling.rng import _mix32, _mul32, gumbel_noise, model_seed, sequence_key


def test_mul32_is_exact_modular_multiplication():
    xs = [0, 1, 0xFFFF, 0x10000, 0x7FFFFFFF, 0x80000000, 0xFFFFFFFF, 123456789, 0xDEADBEEF]
    for c in (0x7FEB352D, 0x846CA68B, 0x9E3779B9):
        got = _mul32(torch.tensor(xs, dtype=torch.int64), c).tolist()
        assert got == [(x * c) % 2**32 for x in xs]
    assert _mix32(torch.arange(1000)).unique().numel() == 1000  # a bijection stays one


def test_noise_depends_only_on_key_step_token():
    token_hash = _mix32(torch.arange(50, dtype=torch.int64))
    a = gumbel_noise(torch.tensor([5, 9, 11]), 4, token_hash)
    b = gumbel_noise(torch.tensor([11, 5]), 4, token_hash)
    assert torch.equal(a[2], b[0]) and torch.equal(a[0], b[1])
    assert not torch.equal(a[0], gumbel_noise(torch.tensor([5]), 5, token_hash)[0])
    big = gumbel_noise(torch.arange(2000), 0, token_hash)
    assert abs(big.mean().item() - 0.5772) < 0.02  # Euler-Mascheroni: the Gumbel mean


def test_keys_are_32_bit_and_differ_by_model_and_index():
    keys = {sequence_key(model_seed(42, m), i) for m in ("r0", "r1") for i in range(100)}
    assert len(keys) == 200 and all(0 <= k < 2**32 for k in keys)
    assert sequence_key(model_seed(42, "r0"), 3) == sequence_key(model_seed(42, "r0"), 3)
