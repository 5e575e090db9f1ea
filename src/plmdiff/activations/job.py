"""The activations stage's rule entry functions: `extract` and `gather_pooled`.

Each takes what its rule script unpacks from `snakemake` (paths, wildcards, validated config
sections) and runs the stage's logic (plmdiff.activations.extraction, .writers); the output
paths come from plmdiff.config.paths through rules/activations.smk.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from typing import Any

from plmdiff.activations.extraction import ExtractionSettings, ExtractionSummary, extract_part
from plmdiff.activations.writers import gather_pooled_parts
from plmdiff.core.errors import DataError
from plmdiff.core.runtime import resolve_device
from plmdiff.models.checkpoints import CheckpointRecord
from plmdiff.models.text import PromptFormat

log = logging.getLogger(__name__)


def extract(
    *,
    fasta_path: str | os.PathLike,
    record_path: str | os.PathLike,
    checkpoint_dir: str | os.PathLike,
    embedder: str,
    model: str,
    part: int,
    prompt_section: Mapping[str, Any],
    activations_section: Mapping[str, Any],
    pooled_path: str | os.PathLike,
    token_layers: Sequence[int],
    token_paths: Sequence[str | os.PathLike],
    device: str,
    allow_pickle: bool,
    threads: int | None,
) -> ExtractionSummary:
    """Rule `extract`: embed part `part` of a model's FASTA; one pooled part and one token part
    per layer of `token_layers` (`token_paths`, in the same order)."""
    import torch

    if len(token_layers) != len(token_paths):
        raise DataError(
            f"extract: {len(token_paths)} token outputs for token layers {list(token_layers)}; "
            "the rule must list one output per layer of activations.token_layers"
        )
    if threads:
        torch.set_num_threads(threads)
    return extract_part(
        fasta_path=fasta_path,
        record=CheckpointRecord.read(record_path),
        checkpoint_dir=checkpoint_dir,
        embedder=embedder,
        model=model,
        part=part,
        fmt=PromptFormat.from_section(prompt_section),
        settings=ExtractionSettings.from_section(activations_section),
        pooled_path=pooled_path,
        token_paths=dict(zip(token_layers, token_paths, strict=True)),
        device=resolve_device(device),
        allow_pickle=allow_pickle,
    )


def gather_pooled(parts: Sequence[str | os.PathLike], out: str | os.PathLike) -> int:
    """Rule `gather_pooled`: concatenate the pooled parts of one (embedder, model); the row count."""
    rows = gather_pooled_parts(list(parts), out)
    log.info("%d sequences in %s", rows, out)
    return rows
