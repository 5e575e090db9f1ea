"""plmdiff.sampling.settings: SamplingSettings from the validated `sampling` section."""

from __future__ import annotations

import pytest

from plmdiff.config.schema import SCHEMA_PATH, load_schema, validate_schema
from plmdiff.config.sections import section_defaults
from plmdiff.core.errors import ConfigError
from plmdiff.sampling.settings import SamplingSettings


def test_from_config_takes_every_field_from_the_section():
    section = {**section_defaults("sampling"), "top_k": 5, "batch_size": 8}
    s = SamplingSettings.from_section(section)
    assert (s.top_k, s.batch_size, s.temperature, s.repetition_penalty, s.max_length) == (
        5,
        8,
        1.0,
        1.2,
        1024,
    )
    assert SamplingSettings.from_section(section_defaults("sampling")).batch_size == "auto"


def test_from_config_names_a_missing_key():
    section = {k: v for k, v in section_defaults("sampling").items() if k != "temperature"}
    with pytest.raises(ConfigError, match=r"sampling\.temperature is missing"):
        SamplingSettings.from_section(section)


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("batch_size", "big"),
        ("batch_size", 0),
        ("temperature", 0),
        ("top_k", -1),
        ("max_length", 1),
    ],
)
def test_the_schema_rejects_what_the_settings_no_longer_check(key, value):
    """The dataclass trusts the validated section: the schema must refuse these values."""
    schema = load_schema(SCHEMA_PATH)["properties"]["sampling"]
    with pytest.raises(ConfigError, match=key):
        validate_schema({**section_defaults("sampling"), key: value}, schema)
