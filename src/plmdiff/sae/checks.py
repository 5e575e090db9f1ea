"""Warnings about an SAE's training data and dictionary, written to the job log and the metrics.

- `epochs_over_unique_tokens`: training tokens asked for (sae.training_tokens or
  finetune_tokens) over the unique tokens the replica may train on. Above MAX_EPOCHS the SAE
  sees each token that many times and its features fit the sample, not the distribution (the
  paper-scale template asks 100M tokens of ~300k: ~330 epochs); the fix is more sequences
  (sae.base.sequences) or fewer training tokens.
- `dead_fraction_flag`: more than DEAD_FRACTION_FLAG of the features never fire on the held-out
  tokens; the report marks such an SAE.
"""

from __future__ import annotations

import math

# Documented in config/schema.yaml (sae.training_tokens) and ARCHITECTURE.md "SAEs".
MAX_EPOCHS = 10.0
DEAD_FRACTION_FLAG = 0.5


def epochs_over_unique_tokens(training_tokens: int, unique_tokens: int) -> float:
    """How often the training sees each unique token (inf without any)."""
    return training_tokens / unique_tokens if unique_tokens > 0 else math.inf


def epochs_warning(training_tokens: int, unique_tokens: int, *, key: str) -> str | None:
    """The warning when `key`'s tokens exceed MAX_EPOCHS passes over the unique tokens."""
    ratio = epochs_over_unique_tokens(training_tokens, unique_tokens)
    if ratio <= MAX_EPOCHS:
        return None
    return (
        f"{key} = {training_tokens} asks for {ratio:.1f} epochs over {unique_tokens} unique "
        f"tokens (more than {MAX_EPOCHS:g}): the SAE may fit these sequences rather than the "
        "distribution; add sequences (sae.base.sequences) or lower the token count"
    )


def dead_fraction_flag(dead_fraction: float | None) -> bool:
    """True when more than DEAD_FRACTION_FLAG of the features are dead (None: unknown, False)."""
    return dead_fraction is not None and dead_fraction > DEAD_FRACTION_FLAG
