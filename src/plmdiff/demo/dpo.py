"""One DPO round of the demo, as the ZymCTRL lab's DPO loops (DPO_pLM) run it.

Round i samples from checkpoint i-1, scores the samples (reward.py), pairs the best against the
worst and trains with TRL's `DPOTrainer` against the *base* model as reference (DPO_pLM keeps the
original model as reference in every round), then saves checkpoint i.
"""

from __future__ import annotations

import logging
import math
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import pandas as pd

from plmdiff.core.errors import ConfigError
from plmdiff.demo.reward import RewardSpec, score_sequence
from plmdiff.demo.settings import DPOSettings, demo_seed
from plmdiff.models.text import PromptFormat, SpecialIds
from plmdiff.sampling.loop import sample_sequences
from plmdiff.sampling.settings import Sample, SamplingSettings

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ScoredSample:
    index: int
    sequence: str
    ended: bool
    n_tokens: int
    ppl: float
    valid: bool
    density: float
    proxy: float
    coverage: float
    length_term: float
    reward: float

    @property
    def length(self) -> int:
        return len(self.sequence)


def score_samples(samples: Sequence[Sample], spec: RewardSpec) -> list[ScoredSample]:
    out = []
    for s in samples:
        score = score_sequence(s.sequence, s.ended, spec)
        out.append(ScoredSample(s.index, s.sequence, s.ended, s.n_tokens, s.ppl, **asdict(score)))
    return out


@dataclass(frozen=True)
class PreferencePair:
    chosen: ScoredSample
    rejected: ScoredSample

    @property
    def margin(self) -> float:
        return self.chosen.reward - self.rejected.reward


def build_pairs(scored: Sequence[ScoredSample], n_pairs: int) -> list[PreferencePair]:
    """Pair the k-th best sample with the k-th worst (k = 1..n_pairs), by reward.

    Best and worst are disjoint, so a sample is used once; pairs whose rewards tie carry no
    preference and are dropped. Ties in the ranking break by sample index (deterministic).
    Truncated samples take part: they score 0, so they are rejected first, which is the signal
    that keeps DPO from trading the end of a sequence for a higher proxy.
    """
    ranked = sorted(scored, key=lambda s: (-s.reward, s.index))
    k = min(n_pairs, len(ranked) // 2)
    pairs = [PreferencePair(ranked[i], ranked[len(ranked) - 1 - i]) for i in range(k)]
    return [p for p in pairs if p.margin > 0]


def completion_text(sample: ScoredSample, fmt: PromptFormat) -> str:
    """What the model generated after the prompt: residues and, if it ended, the stop tokens.

    (TRL appends its EOS token to a completion that lacks it, so a truncated sample is trained
    on as its residues followed by <|endoftext|>; one token of a few hundred.)
    """
    if not sample.ended:
        return sample.sequence
    return fmt.scoring_text(sample.sequence)[len(fmt.generation_prompt()) :]


def preference_rows(pairs: Sequence[PreferencePair], fmt: PromptFormat) -> list[dict[str, str]]:
    """TRL's standard preference format: plain-string prompt, chosen and rejected."""
    prompt = fmt.generation_prompt()
    return [
        {
            "prompt": prompt,
            "chosen": completion_text(p.chosen, fmt),
            "rejected": completion_text(p.rejected, fmt),
        }
        for p in pairs
    ]


def train_dpo(
    policy: Any,
    reference: Any,
    tokenizer: Any,
    rows: Sequence[Mapping[str, str]],
    settings: DPOSettings,
    seed: int,
    device: Any,
) -> list[dict[str, float]]:
    """Train `policy` in place with TRL's DPOTrainer; returns the trainer's log history.

    `reference` is frozen and passed explicitly: with ref_model=None TRL would rebuild the
    reference from the policy's name or path, i.e. the previous round, not the base model.
    """
    import torch
    from datasets import Dataset
    from transformers import PrinterCallback, TrainerCallback
    from trl import DPOConfig, DPOTrainer

    class LogToLogging(TrainerCallback):
        # The trainer prints its logs to stdout; a rule's log file is where they belong.
        def on_log(self, args: Any, state: Any, control: Any, logs: Any = None, **kw: Any) -> None:
            log.info("dpo step %d: %s", state.global_step, logs)

    for p in reference.parameters():
        p.requires_grad_(False)
    reference.eval()
    use_cpu = torch.device(device).type == "cpu"
    with tempfile.TemporaryDirectory(prefix="plmdiff-dpo-") as workdir:
        args = DPOConfig(
            output_dir=workdir,
            per_device_train_batch_size=settings.batch_size,
            num_train_epochs=settings.epochs,
            learning_rate=settings.lr,
            beta=settings.beta,
            # RPO (Pang et al. 2024): an NLL term on the chosen completions keeps DPO from
            # winning only by pushing the rejected ones down, which on small models scatters
            # probability mass (lengths drift) instead of moving it toward the chosen.
            loss_type=["sigmoid", "sft"] if settings.sft_weight else ["sigmoid"],
            loss_weights=[1.0, settings.sft_weight] if settings.sft_weight else None,
            seed=seed,
            data_seed=seed,
            use_cpu=use_cpu,
            # TRL's defaults (bf16, gradient checkpointing) are for large GPU models.
            bf16=False,
            fp16=False,
            activation_checkpointing=False,  # transformers 5's name of gradient_checkpointing
            max_length=policy.config.n_positions,
            save_strategy="no",
            report_to="none",
            logging_steps=1,
            disable_tqdm=True,
            dataloader_num_workers=0,
        )
        trainer = DPOTrainer(
            model=policy,
            ref_model=reference,
            args=args,
            train_dataset=Dataset.from_list(list(rows)),
            processing_class=tokenizer,
        )
        trainer.remove_callback(PrinterCallback)
        trainer.add_callback(LogToLogging())
        trainer.train()
        history = [dict(h) for h in trainer.state.log_history]
    policy.eval()
    return history


@dataclass
class RoundResult:
    iteration: int
    scored: list[ScoredSample]
    pairs: list[PreferencePair]
    history: list[dict[str, float]]

    def samples_table(self) -> pd.DataFrame:
        role = {p.chosen.index: "chosen" for p in self.pairs}
        role.update({p.rejected.index: "rejected" for p in self.pairs})
        table = pd.DataFrame([asdict(s) for s in self.scored])
        table.insert(0, "iteration", self.iteration)
        table.insert(3, "length", [s.length for s in self.scored])
        table["pair_role"] = [role.get(s.index, "") for s in self.scored]
        return table

    def training_record(self) -> dict[str, Any]:
        steps = [h for h in self.history if "loss" in h]
        final = self.history[-1] if self.history else {}
        valid = [s for s in self.scored if s.valid]
        return {
            "iteration": self.iteration,
            "samples": len(self.scored),
            "ended": sum(s.ended for s in self.scored),
            "valid": len(valid),
            "mean_reward": _mean([s.reward for s in self.scored]),
            "pairs": len(self.pairs),
            "mean_pair_margin": _mean([p.margin for p in self.pairs]),
            "steps": len(steps),
            "first_loss": steps[0]["loss"] if steps else math.nan,
            "last_loss": steps[-1]["loss"] if steps else math.nan,
            "last_reward_accuracy": steps[-1].get("rewards/accuracies", math.nan)
            if steps
            else math.nan,
            "last_reward_margin": steps[-1].get("rewards/margins", math.nan) if steps else math.nan,
            "train_seconds": final.get("train_runtime", math.nan),
            "log_history": self.history,
        }


def _mean(values: Sequence[float]) -> float:
    return float(sum(values) / len(values)) if values else math.nan


def dpo_round(
    policy: Any,
    reference: Any,
    tokenizer: Any,
    fmt: PromptFormat,
    special: SpecialIds,
    iteration: int,
    settings: DPOSettings,
    sampling: SamplingSettings,
    spec: RewardSpec,
    device: Any,
) -> RoundResult:
    """Sample from `policy` (checkpoint iteration-1), score, pair, and DPO-train it in place."""
    if iteration < 1:
        raise ValueError(f"DPO rounds are numbered from 1, got {iteration}")
    samples = sample_sequences(
        policy,
        tokenizer,
        fmt,
        special,
        range(settings.samples_per_round),
        sampling,
        demo_seed(settings.seed, "round-samples", iteration),
        device,
    )
    scored = score_samples(samples, spec)
    pairs = build_pairs(scored, settings.pairs_per_round)
    log.info(
        "round %d: %d samples (%d ended, %d valid), mean reward %.3f, %d pairs (mean margin %.3f)",
        iteration,
        len(scored),
        sum(s.ended for s in scored),
        sum(s.valid for s in scored),
        _mean([s.reward for s in scored]),
        len(pairs),
        _mean([p.margin for p in pairs]),
    )
    if not pairs:
        raise ConfigError(
            f"demo round {iteration}: no preference pairs (of {len(scored)} samples "
            f"{sum(s.ended for s in scored)} ended); raise sampling.max_length or train the base "
            "model longer (demo.base.epochs) so that it ends sequences"
        )
    history = train_dpo(
        policy,
        reference,
        tokenizer,
        preference_rows(pairs, fmt),
        settings,
        demo_seed(settings.seed, "dpo", iteration),
        device,
    )
    return RoundResult(iteration, scored, pairs, history)
