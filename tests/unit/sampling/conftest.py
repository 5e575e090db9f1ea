"""Fixtures of the sampling tests: one torch thread, the tiny base checkpoint loaded once."""

from __future__ import annotations

import pytest
import torch

from plmdiff.models.checkpoints import load_model, load_tokenizer


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny models gain nothing from threads, and on a shared CI machine threads only wait."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def r0(tiny_checkpoints):
    path = tiny_checkpoints["r0"]
    return load_model(path), load_tokenizer(path)
