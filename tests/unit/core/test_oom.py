"""OOM handling: a batch that does not fit is halved and the work continues, in order."""

from __future__ import annotations

import logging

import pytest
import torch

from plmdiff.core.oom import is_oom, map_with_oom_split


def _fits_at_most(limit: int):
    calls: list[int] = []

    def fn(batch):
        calls.append(len(batch))
        if len(batch) > limit:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return list(batch)

    return fn, calls


def test_halves_until_it_fits_and_keeps_order(caplog):
    fn, calls = _fits_at_most(3)
    with caplog.at_level(logging.WARNING):
        out = list(map_with_oom_split([list(range(10)), [10, 11]], fn, what="sampling batch"))
    assert [x for chunk in out for x in chunk] == list(range(12))
    assert calls[:3] == [10, 5, 2]
    assert max(len(chunk) for chunk in out) <= 3
    assert "halving to 5" in caplog.text and "sampling batch" in caplog.text


def test_runtime_error_with_oom_message_counts():
    assert is_oom(RuntimeError("CUDA error: out of memory"))
    assert not is_oom(RuntimeError("shape mismatch"))


def test_other_errors_propagate():
    def fn(batch):
        raise ValueError("bad input")

    with pytest.raises(ValueError, match="bad input"):
        list(map_with_oom_split([[1, 2]], fn))


def test_single_item_that_does_not_fit_raises():
    fn, _ = _fits_at_most(0)
    with pytest.raises(torch.cuda.OutOfMemoryError):
        list(map_with_oom_split([[1, 2, 3]], fn))
