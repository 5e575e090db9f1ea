"""Fixtures of the sampling tests: one torch thread, the tiny base checkpoint loaded once."""

from __future__ import annotations

import pytest

from plmdiff.models.checkpoints import load_model, load_tokenizer
from tests.unit.threads import one_torch_thread  # noqa: F401  (an autouse fixture)


@pytest.fixture(scope="module")
def r0(tiny_checkpoints):
    path = tiny_checkpoints["r0"]
    return load_model(path), load_tokenizer(path)
