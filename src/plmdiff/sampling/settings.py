"""What sampling is told (`SamplingSettings`, the `sampling` config section) and what it returns
(`Sample`). Defaults live in config/schema.yaml only (plmdiff.config.sections)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from plmdiff.config.sections import from_section


@dataclass(frozen=True)
class SamplingSettings:
    """How sequences are drawn (the ZymCTRL lab's settings by default, see config/schema.yaml).

    `batch_size` is an integer >= 1 or 'auto'; `top_k` 0 and `repetition_penalty` 1.0 disable
    those steps.
    """

    top_k: int
    temperature: float
    repetition_penalty: float
    max_length: int
    batch_size: int | str

    @classmethod
    def from_section(cls, sampling_section: Mapping[str, Any]) -> SamplingSettings:
        """From the validated `sampling` section (its other keys are the jobs' business)."""
        return from_section(cls, sampling_section, "sampling")


@dataclass
class Sample:
    """One drawn sequence. `n_tokens` counts generated tokens, the stop token included;
    `ppl` is exp(mean negative log-likelihood of those tokens) under the generating model
    (its own distribution, before penalty, temperature and top-k), nan when not ended."""

    index: int
    sequence: str
    ended: bool
    n_tokens: int
    ppl: float
