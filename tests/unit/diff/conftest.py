"""The planted-change study that the diff tests share (built once per test package)."""

from __future__ import annotations

import pytest

from tests.unit.diff.synthetic_features import PLANT, SEED, K, build_planted


@pytest.fixture(scope="package")
def planted(tmp_path_factory):
    return build_planted(tmp_path_factory.mktemp("planted"), PLANT, K, SEED)
