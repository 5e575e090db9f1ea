"""Stage settings with the schema's defaults and a few overrides, for tests and benchmarks."""

from __future__ import annotations

from typing import Any

from plmdiff.config.sections import section_defaults
from plmdiff.sae.training import SAESettings


def sae_settings(**overrides: Any) -> SAESettings:
    """SAESettings of config/schema.yaml's defaults, with `overrides` applied."""
    return SAESettings.from_section({**section_defaults("sae"), **overrides})
