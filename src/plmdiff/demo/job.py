"""What the demo's rule scripts do, one function per rule, so that the scripts stay thin."""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Mapping, Sequence
from typing import Any

from plmdiff.core.fasta import read_fasta
from plmdiff.core.runtime import read_json, resolve_device, seed_everything, write_json
from plmdiff.core.tables import write_table
from plmdiff.demo.base_model import (
    BaseModelReport,
    describe_samples,
    train_base_model,
    training_sequences,
)
from plmdiff.demo.dpo import dpo_round, score_samples
from plmdiff.demo.reward import RewardSpec
from plmdiff.demo.settings import BaseModelConfig, DPOSettings, demo_seed
from plmdiff.demo.summary import plot_summary, samples_long_table, summarise
from plmdiff.models.checkpoints import load_model, load_tokenizer, special_token_ids
from plmdiff.models.text import PromptFormat, SpecialIds
from plmdiff.models.zymctrl import load_zymctrl_tokenizer, save_checkpoint
from plmdiff.sampling.loop import sample_sequences
from plmdiff.sampling.settings import SamplingSettings

log = logging.getLogger(__name__)


def _sampling_settings(sampling: Mapping[str, Any]) -> SamplingSettings:
    """The validated `sampling` section (the rule scripts complete the rerun-defining keys of
    params with the config's)."""
    return SamplingSettings.from_section(sampling)


def _special(tokenizer: Any, fmt: PromptFormat) -> SpecialIds:
    return SpecialIds.from_record({"special_tokens": special_token_ids(tokenizer, fmt)})


def _dpo_job(
    dpo: Mapping[str, Any], prompt: Mapping[str, Any], device: str
) -> tuple[DPOSettings, PromptFormat, Any]:
    """The settings, prompt format and device of a job over DPO rounds."""
    return DPOSettings.from_section(dpo), PromptFormat.from_section(prompt), resolve_device(device)


def reward_spec(base_report: str | os.PathLike, settings: DPOSettings) -> RewardSpec:
    """The reward's reference values: the family's, recorded by demo_train_base."""
    report = BaseModelReport.from_json(read_json(base_report))
    return report.reward_spec(settings.length_target)


def run_train_base(
    family_fasta: str | os.PathLike,
    checkpoint_dir: str | os.PathLike,
    report_path: str | os.PathLike,
    base: Mapping[str, Any],
    seed: int,
    prompt: Mapping[str, Any],
    sampling: Mapping[str, Any],
    device: str,
) -> None:
    """Rule demo_train_base: train, describe report_samples samples, save checkpoint + JSON."""
    cfg = BaseModelConfig.from_section(base)
    fmt = PromptFormat.from_section(prompt)
    torch_device = resolve_device(device)
    seed_everything(seed)
    tokenizer = load_zymctrl_tokenizer()
    special = _special(tokenizer, fmt)
    family = [e.sequence for e in read_fasta(family_fasta)]
    model, report = train_base_model(family, tokenizer, fmt, special, cfg, seed, torch_device)
    samples = sample_sequences(
        model,
        tokenizer,
        fmt,
        special,
        range(cfg.report_samples),
        _sampling_settings(sampling),
        demo_seed(seed, "base-report", 0),
        torch_device,
    )
    described = describe_samples(samples, training_sequences(family, cfg))
    log.info("base model samples: %s", json.dumps(described))
    save_checkpoint(model.cpu(), tokenizer, checkpoint_dir)
    write_json(report_path, _finite(report.to_json(described)))


def run_dpo_round(
    previous_dir: str | os.PathLike,
    reference_dir: str | os.PathLike,
    base_report: str | os.PathLike,
    iteration: int,
    checkpoint_dir: str | os.PathLike,
    samples_tsv: str | os.PathLike,
    training_json: str | os.PathLike,
    dpo: Mapping[str, Any],
    prompt: Mapping[str, Any],
    sampling: Mapping[str, Any],
    device: str,
) -> None:
    """Rule demo_dpo_round: checkpoint `iteration` from `iteration - 1`, base as reference."""
    settings, fmt, torch_device = _dpo_job(dpo, prompt, device)
    seed_everything(demo_seed(settings.seed, "round", iteration))
    tokenizer = load_tokenizer(previous_dir)
    policy = load_model(previous_dir, device=torch_device)
    reference = load_model(reference_dir, device=torch_device)
    result = dpo_round(
        policy,
        reference,
        tokenizer,
        fmt,
        _special(tokenizer, fmt),
        iteration,
        settings,
        _sampling_settings(sampling),
        reward_spec(base_report, settings),
        torch_device,
    )
    save_checkpoint(policy.cpu(), tokenizer, checkpoint_dir)
    write_table(result.samples_table(), samples_tsv)
    write_json(training_json, _finite(result.training_record()))


def run_summary(
    checkpoint_dirs: Sequence[str | os.PathLike],
    base_report: str | os.PathLike,
    summary_tsv: str | os.PathLike,
    summary_png: str | os.PathLike,
    samples_tsv: str | os.PathLike,
    dpo: Mapping[str, Any],
    prompt: Mapping[str, Any],
    sampling: Mapping[str, Any],
    device: str,
) -> None:
    """Rule demo_summary: the same fresh draws from every checkpoint, scored and compared."""
    settings, fmt, torch_device = _dpo_job(dpo, prompt, device)
    spec = reward_spec(base_report, settings)
    sampling_settings = _sampling_settings(sampling)
    rounds = []
    for i, directory in enumerate(checkpoint_dirs):
        tokenizer = load_tokenizer(directory)
        model = load_model(directory, device=torch_device)
        samples = sample_sequences(
            model,
            tokenizer,
            fmt,
            _special(tokenizer, fmt),
            range(settings.summary_samples),
            sampling_settings,
            # One seed for all rounds: common random numbers (see plmdiff.demo.summary).
            demo_seed(settings.seed, "summary", 0),
            torch_device,
        )
        rounds.append(score_samples(samples, spec))
        log.info("round %d: mean reward %.4f", i, sum(s.reward for s in rounds[-1]) / len(samples))
    table = summarise(rounds)
    write_table(table, summary_tsv)
    write_table(samples_long_table(rounds), samples_tsv)
    plot_summary(table, summary_png, spec.length_target)


def _finite(data: Any) -> Any:
    """JSON has no NaN: write null instead, so that strict readers (jq, JavaScript) accept it."""
    if isinstance(data, float):
        return data if math.isfinite(data) else None
    if isinstance(data, Mapping):
        return {k: _finite(v) for k, v in data.items()}
    if isinstance(data, list | tuple):
        return [_finite(v) for v in data]
    return data
