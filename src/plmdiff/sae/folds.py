"""K-fold assignment of sequences, shared by SAE replicas and the diff stage.

A sequence's fold depends only on its ID, k and the seed (a stable hash), never on which other
sequences exist: the same sequence lands in the same fold in every model, layer and scheme, and
adding sequences to a study does not move the ones already assigned. Folds are therefore close
to, not exactly, equal in size.
"""

from __future__ import annotations

from collections.abc import Sequence

from plmdiff.core.runtime import derive_seed


def _check_k(k: int) -> None:
    if k < 1:
        raise ValueError(f"k = {k}: the number of folds must be >= 1")


def sequence_fold(seq_id: str, k: int, seed: int) -> int:
    """The fold (0..k-1) of one sequence."""
    _check_k(k)
    return derive_seed(seed, "fold", seq_id) % k


def fold_split(seq_ids: Sequence[str], k: int, seed: int, fold: int) -> tuple[list[str], list[str]]:
    """(train IDs = every fold but `fold`, held-out IDs = fold `fold`), in input order.

    k == 1 means no held-out data: (all IDs, []).
    """
    _check_k(k)
    if not 0 <= fold < k:
        raise ValueError(f"fold = {fold} is outside 0..{k - 1} (k = {k})")
    if k == 1:
        return list(seq_ids), []
    train: list[str] = []
    held_out: list[str] = []
    for seq_id in seq_ids:
        (held_out if sequence_fold(seq_id, k, seed) == fold else train).append(seq_id)
    return train, held_out
