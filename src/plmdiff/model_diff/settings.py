"""Settings of the model_diff stage, built from the validated `model_diff` config section.

Defaults live in config/schema.yaml only (`plmdiff.config.sections`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from plmdiff.config.sections import from_section

# Quantiles of the per-token distance ||h_round - h_base|| reported by the profile.
PROFILE_QUANTILES = (0.05, 0.25, 0.5, 0.75, 0.95)


@dataclass(frozen=True)
class ModelDiffSettings:
    """The `model_diff` section (ARCHITECTURE.md, "Model diffing")."""

    max_sequences: int
    shards: int
    eval_fraction: float
    position_bins: int
    expansion: int
    k: int
    diff_expansion: int
    diff_k: int
    lr: float
    batch_size: int
    training_tokens: int
    shuffle_buffer: int
    aux_penalty: float
    dead_tokens: int
    exclusive_cut: float
    shared_width: float
    nu_max: float
    min_firings: int
    top_latents: int
    top_examples: int
    match_cosine: float
    seed: int

    @classmethod
    def from_section(cls, section: Mapping[str, Any]) -> ModelDiffSettings:
        return from_section(cls, section, "model_diff")
