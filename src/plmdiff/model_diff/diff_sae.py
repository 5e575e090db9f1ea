"""The SAE on activation differences: a BatchTopK SAE trained on h_round - h_base per token.

The crosscoder with one activation space (plmdiff.model_diff.crosscoder, M = 1) fed the
differences of the paired rows, one per (layer, round): diffing-toolkit's second method. Its
latents are directions the round added or removed on the shared tokens.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

from plmdiff.model_diff.paired import PairedRows


def difference_batches(batches: Iterator[Any], round_index: int) -> Iterator[Any]:
    """[B, M, d] paired batches -> [B, 1, d] differences h_round - h_base."""
    for batch in batches:
        yield (batch[:, round_index] - batch[:, 0]).unsqueeze(1)


def difference_rows(rows: Iterable[PairedRows], round_index: int) -> Iterator[PairedRows]:
    for chunk in rows:
        delta = chunk.act[:, round_index] - chunk.act[:, 0]
        yield PairedRows(chunk.seq_id, chunk.pos, chunk.residue, delta[:, None, :])
