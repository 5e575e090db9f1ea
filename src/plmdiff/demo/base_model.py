"""The demo's base model: a small GPT-2 trained on the family in ZymCTRL's text format.

It stands in for a ZymCTRL model fine-tuned on a family: it must generate sequences that look
like the family (they end, with family-like lengths and composition), which `describe_samples`
measures against the family itself.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from plmdiff.core.errors import ConfigError
from plmdiff.demo.reward import RewardSpec, beta_helix_coverage, hexapeptide_density
from plmdiff.demo.settings import BaseModelConfig
from plmdiff.models.lm_training import LMTrainingConfig, mean_nll, train_causal_lm
from plmdiff.models.text import PromptFormat, SpecialIds, is_canonical
from plmdiff.models.zymctrl import gpt2_config, new_gpt2
from plmdiff.sampling.settings import Sample

log = logging.getLogger(__name__)

QUANTILES = (0.05, 0.25, 0.5, 0.75, 0.95)


def training_sequences(sequences: Sequence[str], cfg: BaseModelConfig) -> list[str]:
    """The family as the model sees it: cropped (tests only) and without over-long sequences."""
    if cfg.crop:
        sequences = [s[: cfg.crop] for s in sequences]
    kept = [s for s in sequences if 0 < len(s) <= cfg.max_train_length]
    if len(kept) < 2:
        raise ConfigError(
            f"demo.base.max_train_length = {cfg.max_train_length} leaves {len(kept)} of "
            f"{len(sequences)} family sequences; raise it"
        )
    return kept


def split_holdout(
    sequences: Sequence[str], fraction: float, seed: int
) -> tuple[list[str], list[str]]:
    """A seeded random (train, held-out) split; both sides keep at least one sequence."""
    n = len(sequences)
    n_holdout = min(n - 1, max(1, round(fraction * n)))
    order = np.random.default_rng(seed).permutation(n)
    holdout = {int(i) for i in order[:n_holdout]}
    train = [s for i, s in enumerate(sequences) if i not in holdout]
    return train, [s for i, s in enumerate(sequences) if i in holdout]


def build_base_model(cfg: BaseModelConfig, seed: int) -> Any:
    """A fresh GPT-2 with ZymCTRL's vocabulary. No dropout: the model sees each sequence only a
    few times, and dropout's masks cost a third of a CPU step; held-out perplexity checks fit."""
    config = gpt2_config(
        cfg.n_layer,
        cfg.n_embd,
        cfg.n_head,
        n_positions=cfg.n_positions,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
    )
    return new_gpt2(config, seed=seed)


def _quantiles(values: Sequence[float]) -> dict[str, float]:
    if not len(values):
        return {f"q{round(q * 100):02d}": math.nan for q in QUANTILES}
    qs = np.quantile(np.asarray(values, dtype=float), QUANTILES)
    return {f"q{round(q * 100):02d}": float(v) for q, v in zip(QUANTILES, qs, strict=True)}


def describe_samples(samples: Sequence[Sample], family: Sequence[str]) -> dict[str, Any]:
    """How family-like a model's samples are: ending, alphabet, length, hexapeptide density
    (the reward's proxy) and beta-helix repeat coverage, each against the family.

    Lengths, density and coverage are taken over samples that ended with canonical residues (what a
    user would keep); the KS statistic compares their length distribution with the family's.
    """
    from scipy.stats import ks_2samp

    ended = [s for s in samples if s.ended]
    kept = [s.sequence for s in ended if is_canonical(s.sequence)]
    lengths = [len(s) for s in kept]
    family_lengths = [len(s) for s in family]
    density = [hexapeptide_density(s) for s in kept]
    family_density = [hexapeptide_density(s) for s in family]
    coverage = [beta_helix_coverage(s) for s in kept]
    family_coverage = [beta_helix_coverage(s) for s in family]
    ppl = [s.ppl for s in ended if math.isfinite(s.ppl)]
    return {
        "n_samples": len(samples),
        "fraction_ended": len(ended) / len(samples) if samples else math.nan,
        "fraction_canonical": len(kept) / len(ended) if ended else math.nan,
        "sample_length": _quantiles(lengths),
        "family_length": _quantiles(family_lengths),
        "length_ks_statistic": float(ks_2samp(lengths, family_lengths).statistic)
        if lengths
        else math.nan,
        "sample_density_mean": float(np.mean(density)) if density else math.nan,
        "family_density_mean": float(np.mean(family_density)),
        "sample_coverage_mean": float(np.mean(coverage)) if coverage else math.nan,
        "family_coverage_mean": float(np.mean(family_coverage)),
        "sample_ppl_median": float(np.median(ppl)) if ppl else math.nan,
    }


@dataclass
class BaseModelReport:
    n_train: int
    n_holdout: int
    steps: int
    seconds: float
    final_loss: float
    train_perplexity: float
    holdout_perplexity: float
    family_median_length: float
    family_density: float
    config: dict[str, Any]

    def reward_spec(self, length_target: float | None = None) -> RewardSpec:
        return RewardSpec(
            length_target=self.family_median_length if length_target is None else length_target,
            family_density=self.family_density,
        )

    def to_json(self, samples: Mapping[str, Any]) -> dict[str, Any]:
        return {**asdict(self), "samples": dict(samples)}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> BaseModelReport:
        return cls(**{k: data[k] for k in cls.__dataclass_fields__})


def train_base_model(
    family: Sequence[str],
    tokenizer: Any,
    fmt: PromptFormat,
    special: SpecialIds,
    cfg: BaseModelConfig,
    seed: int,
    device: Any,
) -> tuple[Any, BaseModelReport]:
    """Train the base model on `family` (held-out split by `seed`); return it in eval mode."""
    sequences = training_sequences(family, cfg)
    family_spec = RewardSpec.from_family(sequences)
    train, holdout = split_holdout(sequences, cfg.holdout_fraction, seed)
    log.info(
        "base model: %d training, %d held-out sequences (%d family sequences)",
        len(train),
        len(holdout),
        len(family),
    )
    model = build_base_model(cfg, seed).to(device)
    started = time.perf_counter()
    losses = train_causal_lm(
        model,
        tokenizer,
        fmt,
        special,
        train,
        LMTrainingConfig(epochs=cfg.epochs, lr=cfg.lr, batch_size=cfg.batch_size, seed=seed),
    )
    seconds = time.perf_counter() - started
    # Train perplexity on as many training sequences as are held out: same cost, same noise.
    train_probe = train[: len(holdout)]
    report = BaseModelReport(
        n_train=len(train),
        n_holdout=len(holdout),
        steps=len(losses),
        seconds=round(seconds, 1),
        final_loss=float(np.mean(losses[-20:])),
        train_perplexity=math.exp(mean_nll(model, tokenizer, fmt, special, train_probe)),
        holdout_perplexity=math.exp(mean_nll(model, tokenizer, fmt, special, holdout)),
        family_median_length=family_spec.length_target,
        family_density=family_spec.family_density,
        config=asdict(cfg),
    )
    log.info(
        "trained %d steps in %.0f s: perplexity %.2f train, %.2f held-out",
        report.steps,
        seconds,
        report.train_perplexity,
        report.holdout_perplexity,
    )
    return model, report
