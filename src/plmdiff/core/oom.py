"""Survive CUDA out-of-memory by halving the batch and carrying on (sampling, extraction, KL).

Work is given as batches; a batch that runs out of memory is split in two and each half is
retried, down to single items. Results come back in input order, so callers whose per-item
results do not depend on batch composition (per-sequence RNG, per-sequence pooling) give the
same output whatever memory the GPU had.
"""

from __future__ import annotations

import gc
import logging
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import TypeVar

T = TypeVar("T")
R = TypeVar("R")

log = logging.getLogger(__name__)


def is_oom(exc: BaseException) -> bool:
    import torch

    if isinstance(exc, torch.cuda.OutOfMemoryError):
        return True
    return isinstance(exc, RuntimeError) and "out of memory" in str(exc).lower()


def _free_cuda_cache() -> None:
    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def map_with_oom_split(
    batches: Iterable[Sequence[T]],
    fn: Callable[[Sequence[T]], R],
    *,
    what: str = "batch",
) -> Iterator[R]:
    """Yield fn(batch) for each batch; on OOM, split the batch in halves and retry each.

    Yields one result per batch actually run (a split batch yields two or more results).
    Raises the original error when a single item does not fit.
    """
    for batch in batches:
        yield from _run(list(batch), fn, what)


def _run(batch: list[T], fn: Callable[[Sequence[T]], R], what: str) -> Iterator[R]:
    pending = [batch]
    while pending:
        current = pending.pop(0)
        try:
            result = fn(current)
        except Exception as exc:
            if not is_oom(exc) or len(current) <= 1:
                raise
            half = len(current) // 2
            log.warning(
                "CUDA out of memory with a %s of %d; halving to %d and continuing",
                what,
                len(current),
                half,
            )
            del exc
            _free_cuda_cache()
            pending[:0] = [current[:half], current[half:]]
            continue
        yield result
