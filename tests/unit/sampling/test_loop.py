"""plmdiff.sampling.loop: reproducible per-sequence draws from a tiny model, whatever the batch."""

from __future__ import annotations

import contextlib
import math

import pytest
import torch

from plmdiff.core.errors import ConfigError
from plmdiff.models.text import prompt_ids
from plmdiff.sampling import loop
from plmdiff.testing.checkpoints import ZYMCTRL_FORMAT, ZYMCTRL_IDS
from tests.unit.sampling.drawing import SETTINGS, draw, never_ending, sampling_settings


def test_same_seed_same_samples_and_seed_matters(r0):
    a = draw(r0, range(12))
    b = draw(r0, range(12))
    assert [(s.sequence, s.ended, s.n_tokens) for s in a] == [
        (s.sequence, s.ended, s.n_tokens) for s in b
    ]
    assert [s.ppl for s in a if s.ended] == [s.ppl for s in b if s.ended]
    other = draw(r0, range(12), seed=8)
    assert [s.sequence for s in other] != [s.sequence for s in a]
    assert len({s.sequence for s in a}) > 6  # distinct streams per index


def test_batch_size_order_and_subset_invariance(r0):
    """Sequence i is the same whatever batch (and batch size) it is drawn in."""
    ref = {s.index: s for s in draw(r0, range(12))}
    for settings, indices in [
        (sampling_settings(max_length=80, batch_size=5), list(range(12))[::-1]),
        (sampling_settings(max_length=80, batch_size=1), [9, 2]),
    ]:
        for s in draw(r0, indices, settings):
            assert (s.sequence, s.ended, s.n_tokens) == (
                ref[s.index].sequence,
                ref[s.index].ended,
                ref[s.index].n_tokens,
            )
            if s.ended:
                assert s.ppl == pytest.approx(ref[s.index].ppl, rel=1e-5)


def test_lengths_ppl_and_stop_token(r0):
    model, tok = r0
    prompt = prompt_ids(tok, ZYMCTRL_FORMAT, ZYMCTRL_IDS)
    samples = draw(r0, range(16))
    ended = [s for s in samples if s.ended]
    assert ended, "the tiny checkpoint should end some sequences"
    for s in samples:
        assert s.n_tokens <= SETTINGS.max_length - len(prompt)
        if not s.ended:
            assert s.n_tokens == SETTINGS.max_length - len(prompt) and math.isnan(s.ppl)
        assert "<" not in s.sequence and " " not in s.sequence
    # ppl = exp(mean NLL of the generated tokens, <end> included) under the model's own distribution
    s = ended[0]
    ids = torch.tensor(
        [[*prompt, *tok.encode(s.sequence, add_special_tokens=False), ZYMCTRL_IDS.end]]
    )
    assert ids.shape[1] - len(prompt) == s.n_tokens
    with torch.no_grad():
        logp = torch.log_softmax(model(ids).logits[0, :-1].float(), -1)
    nll = -logp.gather(1, ids[0, 1:, None])[-s.n_tokens :].mean().item()
    assert s.ppl == pytest.approx(math.exp(nll), rel=1e-4)


def test_max_length_is_capped_and_checked(r0, caplog):
    out = draw(r0, [0], sampling_settings(max_length=10_000, batch_size=4))
    assert "exceeds the model's context" in caplog.text
    assert out[0].n_tokens <= 256
    with pytest.raises(ConfigError, match="leaves no room"):
        draw(r0, [0], sampling_settings(max_length=3))
    assert draw(r0, []) == []


def test_never_ending_model_truncates_everything(r0):
    model, tok = r0
    n_prompt = len(prompt_ids(tok, ZYMCTRL_FORMAT, ZYMCTRL_IDS))
    samples = draw(
        (never_ending(model), tok), range(6), sampling_settings(max_length=40, batch_size=4)
    )
    assert not any(s.ended for s in samples)
    assert all(math.isnan(s.ppl) and s.n_tokens == 40 - n_prompt for s in samples)


def test_auto_batch_size_fits_the_cpu_budget(r0):
    model, _ = r0
    n = loop.resolve_batch_size(sampling_settings(max_length=80), model, "cpu")
    assert 16 <= n <= loop.CPU_MAX_BATCH and n % 8 == 0
    assert loop.resolve_batch_size(sampling_settings(batch_size=7), model, "cpu") == 7


def test_dropout_is_off_while_sampling_and_mode_restored(r0):
    model, _ = r0
    model.train()
    try:
        a = draw(r0, range(4))
        assert model.training
    finally:
        model.eval()
    b = draw(r0, range(4))
    assert [s.sequence for s in a] == [s.sequence for s in b]


def test_cpu_decoding_uses_eager_attention_and_restores_the_model(r0, monkeypatch):
    """On a CPU the draw runs with eager attention (faster for one-token steps against a strided
    cache), gives what SDPA gives, and hands the model back with its own implementation."""
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    model, _ = r0
    assert model.config._attn_implementation == "sdpa"
    sdpa_calls = []
    real_sdpa = ALL_ATTENTION_FUNCTIONS["sdpa"]

    def counting_sdpa(*args, **kwargs):
        sdpa_calls.append(1)
        return real_sdpa(*args, **kwargs)

    monkeypatch.setitem(ALL_ATTENTION_FUNCTIONS._global_mapping, "sdpa", counting_sdpa)
    eager = draw(r0, range(12))
    assert not sdpa_calls
    assert model.config._attn_implementation == "sdpa"

    monkeypatch.setattr(loop, "decoding_attention", lambda m, d: contextlib.nullcontext())
    with_sdpa = draw(r0, range(12))
    assert sdpa_calls
    assert [s.sequence for s in with_sdpa] == [s.sequence for s in eager]
