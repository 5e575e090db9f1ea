"""Settings of the Potts stage, built from the validated `potts` config section.

Defaults live in config/schema.yaml only (`plmdiff.config.sections`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from plmdiff.config.sections import from_section


@dataclass(frozen=True)
class PottsConfig:
    enabled: bool
    family: str | None
    columns: tuple[int, int] | None
    min_coverage: float
    min_sequences: int
    max_sequences: int
    profile_iterations: int
    profile_sequences: int
    identity: float
    lambda_h: float
    lambda_j: float
    max_iterations: int
    bootstrap: int
    fdr: float
    min_neff_per_column: float
    seed: int

    @classmethod
    def from_section(cls, section: Mapping[str, Any]) -> PottsConfig:
        return from_section(
            cls, section, "potts", convert={"columns": lambda c: tuple(c) if c else None}
        )
