"""DPO rounds move the model: two rounds on a tiny base raise the reward of fresh samples.

The tiny base (2 x 32, trained for a few seconds on the family's sequences of <= 200 residues)
ends its samples at family-like lengths but has a lower hexapeptide density than the family;
two rounds raise the density, hence the reward, by many standard errors. Checked stable over
base seeds (7 of 8 gain > 0.15, seed 0 gains ~0.5) and thread counts (identical outcome).
"""

from __future__ import annotations

import math

import pytest
import torch

from plmdiff.config.sections import section_defaults
from plmdiff.demo.base_model import train_base_model
from plmdiff.demo.dpo import ScoredSample, dpo_round, score_samples
from plmdiff.demo.reward import RewardSpec
from plmdiff.demo.settings import BaseModelConfig, DPOSettings
from plmdiff.models.checkpoints import load_model, load_tokenizer
from plmdiff.models.zymctrl import load_zymctrl_tokenizer, save_checkpoint
from plmdiff.sampling.loop import sample_sequences
from plmdiff.sampling.settings import SamplingSettings
from plmdiff.testing.checkpoints import ZYMCTRL_FORMAT, ZYMCTRL_IDS, family_sequences

pytestmark = pytest.mark.slow

BASE = BaseModelConfig.from_section(
    {
        **section_defaults("demo", "base"),
        **dict(n_layer=2, n_embd=32, n_head=2, n_positions=256, epochs=3, lr=5e-3),
        "max_train_length": 200,
    }
)
SAMPLING = SamplingSettings.from_section(
    {**section_defaults("sampling"), "max_length": 256, "batch_size": 64}
)
SPEC = RewardSpec(length_target=175, family_density=0.05)
SETTINGS = DPOSettings.from_section(
    {
        **section_defaults("demo", "dpo"),
        **dict(rounds=2, samples_per_round=64, pairs_per_round=24, beta=0.01, lr=1e-3),
        **dict(epochs=2, batch_size=8, sft_weight=1.0, seed=0),
    }
)
N_EVAL = 64


@pytest.fixture(scope="module")
def tiny_base(tmp_path_factory):
    tokenizer = load_zymctrl_tokenizer()
    model, _ = train_base_model(
        family_sequences(), tokenizer, ZYMCTRL_FORMAT, ZYMCTRL_IDS, BASE, 0, "cpu"
    )
    return save_checkpoint(model, tokenizer, tmp_path_factory.mktemp("demo") / "base")


def _fresh(model, tokenizer) -> list[ScoredSample]:
    samples = sample_sequences(
        model, tokenizer, ZYMCTRL_FORMAT, ZYMCTRL_IDS, range(N_EVAL), SAMPLING, 123, "cpu"
    )
    return score_samples(samples, SPEC)


def _mean(values) -> float:
    values = list(values)
    return sum(values) / len(values)


@pytest.fixture(scope="module")
def rounds(tiny_base):
    directory = tiny_base
    tokenizer = load_tokenizer(directory)
    base = load_model(directory)
    policy = load_model(directory)
    before = _fresh(base, tokenizer)
    results = [
        dpo_round(
            policy, base, tokenizer, ZYMCTRL_FORMAT, ZYMCTRL_IDS, i, SETTINGS, SAMPLING, SPEC, "cpu"
        )
        for i in (1, 2)
    ]
    after = _fresh(policy, tokenizer)
    return {"base": base, "policy": policy, "before": before, "after": after, "results": results}


def test_two_rounds_raise_the_mean_reward(rounds):
    before = _mean(s.reward for s in rounds["before"])
    after = _mean(s.reward for s in rounds["after"])
    sd = math.sqrt(_mean((s.reward - after) ** 2 for s in rounds["after"]))
    # About 1.78 -> 2.27 on 64 samples (standard error ~0.05).
    assert after - before > 0.25, (before, after)
    assert after - before > 3 * sd / math.sqrt(N_EVAL)
    # The mechanism: a higher hexapeptide density, while the samples still end.
    proxy_before = _mean(s.proxy for s in rounds["before"] if s.valid)
    proxy_after = _mean(s.proxy for s in rounds["after"] if s.valid)
    assert proxy_after - proxy_before > 0.2, (proxy_before, proxy_after)
    assert _mean(s.ended for s in rounds["after"]) > 0.9


def test_rounds_train_the_policy_against_a_frozen_base(rounds, tiny_base):
    pristine = load_model(tiny_base)
    base, policy = rounds["base"], rounds["policy"]
    for (name, p), q in zip(base.named_parameters(), pristine.parameters(), strict=True):
        assert torch.equal(p, q), f"the reference model changed ({name})"
    with torch.no_grad():
        moved = sum(
            float((p - q).abs().sum())
            for p, q in zip(policy.parameters(), pristine.parameters(), strict=True)
        )
    assert moved > 0


def test_round_records(rounds):
    for i, result in enumerate(rounds["results"], start=1):
        assert result.iteration == i
        assert len(result.scored) == SETTINGS.samples_per_round
        assert 1 <= len(result.pairs) <= SETTINGS.pairs_per_round
        assert all(p.chosen.reward > p.rejected.reward for p in result.pairs)
        record = result.training_record()
        assert record["steps"] >= 1 and math.isfinite(record["last_loss"])
        table = result.samples_table()
        assert (table["pair_role"] == "chosen").sum() == len(result.pairs)
        assert list(table["index"]) == list(range(SETTINGS.samples_per_round))
