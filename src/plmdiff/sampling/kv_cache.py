"""The KV cache of batched decoding: preallocated, grown by doubling, rows dropped as they finish.

transformers' DynamicLayer concatenates every new key and value onto the cache (`torch.cat`),
which copies the whole cache per token: quadratic in the length. The layer here writes into a
buffer that grows by doubling, and its row selection (finished rows leave the batch) copies only
the filled part.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch


def _growing_layer_class(capacity_hint: int) -> type:
    """The layer class, built on first use: it subclasses transformers' DynamicLayer, and
    importing transformers at module level would slow every import of plmdiff.sampling.
    `capacity_hint`: the length a buffer reallocated by a row selection is given at least."""
    from transformers.cache_utils import DynamicLayer

    class GrowingLayer(DynamicLayer):
        """A DynamicLayer that writes into a buffer grown by doubling instead of `torch.cat`
        at every step (which copies the whole cache per token: quadratic in the length)."""

        length = 0
        # The buffers; keys and values are views of their filled part.
        _k: torch.Tensor | None
        _v: torch.Tensor | None

        def lazy_initialization(self, key_states: Any, value_states: Any) -> None:
            super().lazy_initialization(key_states, value_states)
            self._k = self._v = None
            self.length = 0

        def _reserve(self, new_length: int, like: Any) -> None:
            import torch

            capacity = 0 if self._k is None else self._k.shape[-2]
            if new_length <= capacity:
                return
            capacity = max(new_length, 2 * capacity, 64)
            shape = (*like.shape[:-2], capacity, like.shape[-1])
            k = torch.empty(shape, dtype=like.dtype, device=like.device)
            v = torch.empty(shape, dtype=like.dtype, device=like.device)
            if self.length:
                assert self._k is not None and self._v is not None  # filled rows live there
                k[..., : self.length, :] = self._k[..., : self.length, :]
                v[..., : self.length, :] = self._v[..., : self.length, :]
            self._k, self._v = k, v

        def update(self, key_states: Any, value_states: Any, *args: Any, **kwargs: Any) -> Any:
            if not self.is_initialized:
                self.lazy_initialization(key_states, value_states)
            end = self.length + key_states.shape[-2]
            self._reserve(end, key_states)
            assert self._k is not None and self._v is not None  # allocated by _reserve
            self._k[..., self.length : end, :] = key_states
            self._v[..., self.length : end, :] = value_states
            self.length = end
            self.keys = self._k[..., :end, :]
            self.values = self._v[..., :end, :]
            return self.keys, self.values

        def get_seq_length(self) -> int:
            return self.length if self.is_initialized else 0

        def batch_repeat_interleave(self, repeats: int) -> None:
            self._select(lambda t: t.repeat_interleave(repeats, dim=0))

        def batch_select_indices(self, indices: Any) -> None:
            self._select(lambda t: t.index_select(0, indices))

        def _select(self, fn: Any) -> None:
            if not self.length:
                return
            # Only the filled part is copied; the copy gets head-room for the steps to come.
            keys, values = fn(self.keys), fn(self.values)
            self._k = self._v = None
            n, self.length = self.length, 0
            self._reserve(max(n, self._capacity_hint), keys)
            assert self._k is not None and self._v is not None  # allocated by _reserve
            self._k[..., :n, :] = keys
            self._v[..., :n, :] = values
            self.length = n
            self.keys = self._k[..., :n, :]
            self.values = self._v[..., :n, :]

        _capacity_hint = capacity_hint

    return GrowingLayer


def new_cache(total_length: int) -> Any:
    """An empty KV cache for sequences of at most `total_length` tokens."""
    from transformers.cache_utils import DynamicCache

    layer_class = _growing_layer_class(total_length)
    cache = DynamicCache()
    cache.layer_class_to_replicate = layer_class
    cache.layers = []
    return cache
