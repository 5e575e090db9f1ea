"""plmdiff.sae.checks: the epochs-over-unique-tokens warning and the dead-fraction flag."""

from __future__ import annotations

import math

import pytest

from plmdiff.sae.checks import (
    DEAD_FRACTION_FLAG,
    MAX_EPOCHS,
    dead_fraction_flag,
    epochs_over_unique_tokens,
    epochs_warning,
)


def test_the_template_asks_for_hundreds_of_epochs_and_is_warned():
    """100M training tokens from ~300k unique ones (the paper-scale template's base model)."""
    assert epochs_over_unique_tokens(100_000_000, 300_000) == pytest.approx(333.33, abs=0.01)
    message = epochs_warning(100_000_000, 300_000, key="sae.training_tokens")
    assert message is not None
    assert "sae.training_tokens = 100000000" in message and "333.3 epochs" in message
    assert "300000 unique tokens" in message and "sae.base.sequences" in message


def test_up_to_the_documented_ratio_is_not_warned():
    assert MAX_EPOCHS == 10
    assert epochs_warning(1_000_000, 100_000, key="sae.finetune_tokens") is None  # exactly 10
    assert epochs_warning(1_000_001, 100_000, key="sae.finetune_tokens") is not None
    assert epochs_warning(5_000, 20_000, key="sae.training_tokens") is None  # a quarter epoch


def test_no_unique_tokens_is_infinitely_many_epochs():
    assert math.isinf(epochs_over_unique_tokens(10, 0))
    assert "inf epochs" in epochs_warning(10, 0, key="sae.training_tokens")


@pytest.mark.parametrize(
    ("dead", "flagged"), [(0.0, False), (0.5, False), (0.5001, True), (1.0, True), (None, False)]
)
def test_dead_fraction_above_one_half_is_flagged(dead, flagged):
    assert DEAD_FRACTION_FLAG == 0.5
    assert dead_fraction_flag(dead) is flagged
