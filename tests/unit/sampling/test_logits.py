"""plmdiff.sampling.logits: HF-equivalent logits processing and Gumbel-max draws."""

from __future__ import annotations

import torch

from plmdiff.sampling.logits import apply_repetition_penalty, choose_tokens, top_k_filter
from plmdiff.sampling.rng import token_hashes
from tests.unit.sampling.drawing import sampling_settings


def test_processors_match_transformers():
    from transformers import (
        LogitsProcessorList,
        RepetitionPenaltyLogitsProcessor,
        TemperatureLogitsWarper,
        TopKLogitsWarper,
    )

    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(6, 40, generator=gen) * 3
    input_ids = torch.randint(0, 40, (6, 12), generator=gen)
    seen = torch.zeros(6, 40, dtype=torch.bool)
    seen[torch.arange(6)[:, None], input_ids] = True
    hf = LogitsProcessorList(
        [RepetitionPenaltyLogitsProcessor(1.3), TemperatureLogitsWarper(0.7), TopKLogitsWarper(5)]
    )(input_ids, logits.clone())
    ours = top_k_filter(apply_repetition_penalty(logits, seen, 1.3) / 0.7, 5)
    assert torch.equal(torch.isinf(ours), torch.isinf(hf))
    torch.testing.assert_close(ours[~torch.isinf(ours)], hf[~torch.isinf(hf)])


def test_gumbel_max_draws_follow_softmax():
    """Frequencies of the Gumbel-max draw match softmax(top-k of penalised logits / T)."""
    n, vocab = 40000, 6
    logits = torch.tensor([[2.0, 1.0, 0.5, -0.5, -1.0, -3.0]]).expand(n, vocab)
    seen = torch.zeros(n, vocab, dtype=torch.bool)
    seen[:, 0] = True  # penalised: 2.0 / 1.2
    settings = sampling_settings(top_k=4, temperature=0.8, repetition_penalty=1.2)
    token_hash = token_hashes(vocab, "cpu")
    draws = choose_tokens(logits, seen, torch.arange(n, dtype=torch.int64), 3, token_hash, settings)
    expected = torch.softmax(
        top_k_filter(torch.tensor([2.0 / 1.2, 1.0, 0.5, -0.5, -1.0, -3.0]) / 0.8, 4), -1
    )
    observed = torch.bincount(draws, minlength=vocab).double() / n
    assert observed[4:].sum() == 0  # outside the top 4
    # 4 binomial standard errors at n = 40000 is < 0.01
    assert torch.allclose(observed, expected.double(), atol=0.01), (observed, expected)
