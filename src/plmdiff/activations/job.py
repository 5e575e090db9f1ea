"""The activations stage's rule entry functions: `extract`, `extract_tokens`, `gather_pooled`.

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
    activations_section: Mapping[str, Any],
    pooled_path: str | os.PathLike,
    device: str,
    allow_pickle: bool,
    threads: int | None,
) -> ExtractionSummary:
    """Rule `extract`: the pooled part `part` of a model's FASTA (every layer of
    activations.layers)."""
    return _extract_part(
        fasta_path=fasta_path,
        record_path=record_path,
        checkpoint_dir=checkpoint_dir,
        embedder=embedder,
        model=model,
        part=part,
        prompt_section=prompt_section,
        activations_section=activations_section,
        pooled_path=pooled_path,
        token_paths={},
        device=device,
        allow_pickle=allow_pickle,
        threads=threads,
    )


def extract_tokens(
    *,
    fasta_path: str | os.PathLike,
    record_path: str | os.PathLike,
    checkpoint_dir: str | os.PathLike,
    embedder: str,
    model: str,
    part: int,
    layer: int,
    prompt_section: Mapping[str, Any],
    activations_section: Mapping[str, Any],
    token_path: str | os.PathLike,
    device: str,
    allow_pickle: bool,
    threads: int | None,
) -> ExtractionSummary:
    """Rule `extract_tokens`: the token part `part` of one layer; the forward pass stops there."""
    return _extract_part(
        fasta_path=fasta_path,
        record_path=record_path,
        checkpoint_dir=checkpoint_dir,
        embedder=embedder,
        model=model,
        part=part,
        prompt_section=prompt_section,
        activations_section=activations_section,
        pooled_path=None,
        token_paths={int(layer): token_path},
        device=device,
        allow_pickle=allow_pickle,
        threads=threads,
    )


def _extract_part(
    *,
    fasta_path: str | os.PathLike,
    record_path: str | os.PathLike,
    checkpoint_dir: str | os.PathLike,
    embedder: str,
    model: str,
    part: int,
    prompt_section: Mapping[str, Any],
    activations_section: Mapping[str, Any],
    pooled_path: str | os.PathLike | None,
    token_paths: Mapping[int, str | os.PathLike],
    device: str,
    allow_pickle: bool,
    threads: int | None,
) -> ExtractionSummary:
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
        settings=ExtractionSettings.from_section(activations_section),
        pooled_path=pooled_path,
        token_paths=token_paths,
        device=resolve_device(device),
        allow_pickle=allow_pickle,
    )


def gather_pooled(parts: Sequence[str | os.PathLike], out: str | os.PathLike) -> int:
    """Rule `gather_pooled`: concatenate the pooled parts of one (embedder, model); the row count."""
    rows = gather_pooled_parts(list(parts), out)
    log.info("%d sequences in %s", rows, out)
    return rows
