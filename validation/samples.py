"""What a checkpoint samples, through the workflow's own sampling and filter (plmdiff.sampling),
so the suite measures and trains on the sequences the workflow's FASTA would hold."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from plmdiff.models.checkpoints import inspect_checkpoint, load_model, load_tokenizer
from plmdiff.models.text import PromptFormat
from plmdiff.sampling.filtering import (
    FilterSettings,
    RawSample,
    classify_samples,
    length_window,
)
from plmdiff.sampling.loop import sample_sequences
from plmdiff.sampling.rng import model_seed
from plmdiff.sampling.settings import SamplingSettings


def sample_kept(checkpoint: Path, model: str, config: Mapping[str, Any]) -> list[str]:
    """The sequences the workflow's filter keeps from `model`'s samples (validated `config`)."""
    import torch

    fmt = PromptFormat.from_section(config["prompt"])
    record = inspect_checkpoint(checkpoint, model, fmt)
    section = config["sampling"]
    settings = SamplingSettings.from_section(section)
    lm = load_model(record.path, device=torch.device("cpu"))
    samples = sample_sequences(
        lm,
        load_tokenizer(record.path),
        fmt,
        record.special_ids,
        range(section["n_sequences"]),
        settings,
        model_seed(section["seed"], model),
        torch.device("cpu"),
    )
    raw = [RawSample(f"{model}_{s.index}", s.index, s.sequence, s.ended, s.ppl) for s in samples]
    filter_settings = FilterSettings.from_section(config["filter"])
    kept = classify_samples(raw, length_window(filter_settings), filter_settings.dedupe).kept
    return [s.sequence for s in kept]
