"""The Potts stage's settings come from the `potts` section; defaults only in the schema."""

from __future__ import annotations

import dataclasses

import pytest

from plmdiff.config.sections import section_defaults
from plmdiff.core.errors import ConfigError
from plmdiff.potts.settings import PottsConfig


def test_settings_take_the_schema_defaults():
    section = section_defaults("potts")
    cfg = PottsConfig.from_section(section)
    assert dataclasses.asdict(cfg) == section
    assert cfg.bootstrap >= 20 and cfg.identity == 0.8 and cfg.min_coverage == 0.8
    assert all(f.default is dataclasses.MISSING for f in dataclasses.fields(PottsConfig))
    with pytest.raises(ConfigError, match=r"potts\.seed is missing"):
        PottsConfig.from_section({k: v for k, v in section.items() if k != "seed"})


def test_columns_become_a_tuple():
    cfg = PottsConfig.from_section({**section_defaults("potts"), "columns": [3, 9]})
    assert cfg.columns == (3, 9)
