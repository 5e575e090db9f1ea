"""From next-token logits to the next token, as transformers' logits processors do it.

The repetition penalty (divide positive, multiply negative logits of every token already in the
sequence, prompt included), then the temperature, then top-k; the draw is Gumbel-max with the
counter-based noise of plmdiff.sampling.rng.
"""

from __future__ import annotations

from typing import Any

from plmdiff.sampling.rng import gumbel_noise
from plmdiff.sampling.settings import SamplingSettings


def apply_repetition_penalty(logits: Any, seen: Any, penalty: float) -> Any:
    """transformers' RepetitionPenaltyLogitsProcessor on a [rows, vocab] mask of tokens seen."""
    if penalty == 1.0:
        return logits
    penalised = logits.where(logits < 0, logits / penalty)
    penalised = penalised.where(logits >= 0, logits * penalty)
    return logits.where(~seen, penalised)


def top_k_filter(logits: Any, k: int) -> Any:
    """transformers' TopKLogitsWarper: keep the k best (ties with the k-th kept), others -inf."""
    import torch

    if k <= 0 or k >= logits.shape[-1]:
        return logits
    kth = torch.topk(logits, k, dim=-1).values[..., -1:]
    return logits.masked_fill(logits < kth, float("-inf"))


def choose_tokens(
    logits: Any, seen: Any, keys: Any, step: int, token_hash: Any, settings: SamplingSettings
) -> Any:
    """Next token per row: penalty, temperature, top-k, then a Gumbel-max draw."""
    scores = apply_repetition_penalty(logits, seen, settings.repetition_penalty)
    if settings.temperature != 1.0:
        scores = scores / settings.temperature
    scores = top_k_filter(scores, settings.top_k)
    return (scores + gumbel_noise(keys, step, token_hash)).argmax(dim=-1)
