"""Settings of the KL stage, built from the validated `kl` config section.

Defaults live in config/schema.yaml only (`plmdiff.config.sections`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from plmdiff.config.sections import from_section


@dataclass(frozen=True)
class KLConfig:
    max_sequences: int
    batch_tokens: int
    top_sequences: int

    @classmethod
    def from_section(cls, section: Mapping[str, Any]) -> KLConfig:
        return from_section(cls, section, "kl")
