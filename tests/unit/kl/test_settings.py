"""The KL stage's settings come from the `kl` section; defaults only in the schema."""

from __future__ import annotations

import dataclasses

import pytest

from plmdiff.config.sections import section_defaults
from plmdiff.core.errors import ConfigError
from plmdiff.kl.settings import KLConfig


def test_settings_take_the_schema_defaults():
    section = section_defaults("kl")
    assert dataclasses.asdict(KLConfig.from_section(section)) == section
    assert all(f.default is dataclasses.MISSING for f in dataclasses.fields(KLConfig))
    with pytest.raises(ConfigError, match=r"kl\.top_sequences is missing"):
        KLConfig.from_section({"max_sequences": 5, "batch_tokens": 10})
