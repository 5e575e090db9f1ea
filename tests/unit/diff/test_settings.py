"""The diff stage's settings come from the `diff` section; defaults only in the schema."""

from __future__ import annotations

import dataclasses

import pytest

from plmdiff.config.sections import section_defaults
from plmdiff.core.errors import ConfigError
from plmdiff.diff.settings import DiffConfig, FeatureStatsConfig


@pytest.mark.parametrize("cls", [DiffConfig, FeatureStatsConfig])
def test_settings_take_the_schema_defaults(cls):
    section = section_defaults("diff")
    cfg = cls.from_section(section)
    assert dataclasses.asdict(cfg) == {f.name: section[f.name] for f in dataclasses.fields(cls)}
    # no default is written twice: the dataclass has none of its own
    assert all(f.default is dataclasses.MISSING for f in dataclasses.fields(cls))


def test_a_set_key_wins_and_a_missing_key_is_named():
    assert DiffConfig.from_section({**section_defaults("diff"), "fdr": 0.1}).fdr == 0.1
    section = {k: v for k, v in section_defaults("diff").items() if k != "example_window"}
    with pytest.raises(ConfigError, match=r"diff\.example_window is missing"):
        FeatureStatsConfig.from_section(section)
