"""The activations stage's rule entry functions: `extract` (rules extract, extract_tokens),
`gather_pooled`.

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
    settings: ExtractionSettings,
    pooled_path: str | os.PathLike | None = None,
    token_paths: Mapping[int, str | os.PathLike] | None = None,
    device: str,
    allow_pickle: bool,
    threads: int | None,
) -> ExtractionSummary:
    """Part `part` of a FASTA through one checkpoint: the pooled part (`pooled_path`, every
    layer of settings.layers) and the token part of each layer of `token_paths`; the forward
    pass stops at the last layer needed.

    Rule `extract` writes the pooled part, rule `extract_tokens` one token layer, and
    model_diff_extract both at model_diff's layers.
    """
    import torch

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
        settings=settings,
        pooled_path=pooled_path,
        token_paths=token_paths or {},
        device=resolve_device(device),
        allow_pickle=allow_pickle,
    )


def gather_pooled(parts: Sequence[str | os.PathLike], out: str | os.PathLike) -> int:
    """Rule `gather_pooled`: concatenate the pooled parts of one (embedder, model); the row count."""
    rows = gather_pooled_parts(list(parts), out)
    log.info("%d sequences in %s", rows, out)
    return rows
