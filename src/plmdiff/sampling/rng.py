"""Counter-based randomness of sampling: every draw is a function of (sequence key, step, token).

The draw is the Gumbel-max trick with noise from a stateless 32-bit hash, so sequence `index`
depends on (seed, model, index) alone: not on the batch it shares, on out-of-memory splitting or
on the number of shards (plmdiff.sampling.loop).
"""

from __future__ import annotations

from typing import Any

from plmdiff.core.runtime import derive_seed

_MASK32 = 0xFFFFFFFF
# Step and token salts of the hash (the golden ratio and MurmurHash2's multiplier): fixed
# forever, since changing either changes every sampled sequence.
_STEP_SALT = 0x9E3779B9
_TOKEN_SALT = 0x5BD1E995


def _mul32(x: Any, c: int) -> Any:
    """(x * c) mod 2**32 for x in [0, 2**32) held in int64, without int64 overflow."""
    lo = x & 0xFFFF
    hi = x >> 16
    return (lo * c + (((hi * c) & 0xFFFF) << 16)) & _MASK32


def _mix32(x: Any) -> Any:
    """A 32-bit integer hash with good avalanche (Wellons' lowbias32) on int64 tensors."""
    x = x ^ (x >> 16)
    x = _mul32(x, 0x7FEB352D)
    x = x ^ (x >> 15)
    x = _mul32(x, 0x846CA68B)
    return x ^ (x >> 16)


def model_seed(seed: int, model: str) -> int:
    """The seed of one model's sequence streams (sequence i: sequence_key(model_seed, i))."""
    return derive_seed(seed, "sample", model)


def sequence_key(seed: int, index: int) -> int:
    """The 32-bit key of sequence `index`'s random stream."""
    return derive_seed(seed, "sequence", index) & _MASK32


def token_hashes(vocab: int, device: Any) -> Any:
    """The per-token half of the noise hash, [vocab] int64, computed once per batch."""
    import torch

    return _mix32(torch.arange(vocab, device=device, dtype=torch.int64) ^ _TOKEN_SALT)


def gumbel_noise(keys: Any, step: int, token_hash: Any) -> Any:
    """Gumbel(0, 1) noise [rows, vocab] that depends only on (key, step, token)."""
    import torch

    row = _mix32((keys + step * _STEP_SALT) & _MASK32)
    bits = _mix32(row[:, None] ^ token_hash[None, :])
    # 24 bits fit a float32 mantissa exactly; the half-step keeps u strictly inside (0, 1).
    u = ((bits >> 8).to(torch.float32) + 0.5) * (1.0 / (1 << 24))
    return -torch.log(-torch.log(u))
