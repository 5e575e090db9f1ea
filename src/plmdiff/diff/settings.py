"""Settings of the diff stage, built from the validated `diff` config section.

Defaults live in config/schema.yaml only (`plmdiff.config.sections`): the rules feature_stats
and diff read the same section, each taking the keys it uses.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from plmdiff.config.sections import from_section


@dataclass(frozen=True)
class DiffConfig:
    """What the diff rule needs of the `diff` section: calls, stability, listed features."""

    fdr: float
    min_abs_log2_fold_change: float
    prior_count: float
    min_direction_change: float
    direction_null_quantile: float
    stability_cosine: float
    min_stable_fraction: float
    min_firing_sequences: int
    top_n: int
    top_examples: int
    pseudocount: float
    length_effect_ratio: float

    @classmethod
    def from_section(cls, section: Mapping[str, Any]) -> DiffConfig:
        return from_section(cls, section, "diff")


@dataclass(frozen=True)
class FeatureStatsConfig:
    """What the feature_stats rule needs of the `diff` section: encoding and top examples."""

    batch_tokens: int
    top_examples: int
    example_window: int
    held_out: bool
    position_bin: int

    @classmethod
    def from_section(cls, section: Mapping[str, Any]) -> FeatureStatsConfig:
        return from_section(cls, section, "diff")
