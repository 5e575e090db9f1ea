"""The demo's config sections as typed settings, and its DAG-time checks (no heavy imports)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from plmdiff.core.errors import ConfigError
from plmdiff.core.runtime import derive_seed

# Keys of config.sampling that change what the demo draws (n_sequences, shards and seed belong
# to the sample stage; the per-sequence streams make batch_size irrelevant to the result).
SAMPLING_KEYS = ("top_k", "temperature", "repetition_penalty", "max_length")
# Keys of demo.dpo that a round does not depend on: adding a round or changing the summary must
# not retrain the rounds that exist.
NOT_ROUND_KEYS = ("rounds", "summary_samples")


def demo_sampling(sampling: Mapping[str, Any]) -> dict[str, Any]:
    return {k: sampling[k] for k in SAMPLING_KEYS if k in sampling}


def round_settings(dpo: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in dpo.items() if k not in NOT_ROUND_KEYS}


# Tokens of the scoring text besides the residues: label, <sep>, <start>, <end>, <|endoftext|>.
FORMAT_OVERHEAD = 16


@dataclass(frozen=True)
class BaseModelConfig:
    """`demo.base` of the config (see config/schema.yaml)."""

    n_layer: int = 6
    n_embd: int = 64
    n_head: int = 4
    n_positions: int = 1024
    epochs: float = 6.0
    lr: float = 3e-3
    batch_size: int = 16
    holdout_fraction: float = 0.1
    max_train_length: int = 300
    crop: int | None = None
    report_samples: int = 100

    @classmethod
    def from_config(cls, base_section: Mapping[str, Any]) -> BaseModelConfig:
        keys = cls.__dataclass_fields__
        cfg = cls(**{k: v for k, v in base_section.items() if k in keys})
        if cfg.n_embd % cfg.n_head:
            raise ConfigError(
                f"demo.base.n_head = {cfg.n_head} must divide demo.base.n_embd = {cfg.n_embd}"
            )
        longest = min(cfg.max_train_length, cfg.crop or cfg.max_train_length)
        if longest + FORMAT_OVERHEAD > cfg.n_positions:
            raise ConfigError(
                f"demo.base.n_positions = {cfg.n_positions} cannot hold a {longest}-residue "
                f"training text; use at least {longest + FORMAT_OVERHEAD} or lower "
                "demo.base.max_train_length"
            )
        return cfg


@dataclass(frozen=True)
class DPOSettings:
    """`demo.dpo` of the config (see config/schema.yaml)."""

    rounds: int = 3
    samples_per_round: int = 200
    pairs_per_round: int = 64
    beta: float = 0.01
    lr: float = 5e-4
    epochs: float = 3.0
    batch_size: int = 8
    sft_weight: float = 1.0
    summary_samples: int = 100
    length_target: float | None = None
    seed: int = 0

    @classmethod
    def from_config(cls, dpo_section: Mapping[str, Any]) -> DPOSettings:
        keys = cls.__dataclass_fields__
        settings = cls(**{k: v for k, v in dpo_section.items() if k in keys})
        if 2 * settings.pairs_per_round > settings.samples_per_round:
            raise ConfigError(
                f"demo.dpo.pairs_per_round = {settings.pairs_per_round} needs at least "
                f"{2 * settings.pairs_per_round} samples (best and worst are disjoint); "
                f"demo.dpo.samples_per_round is {settings.samples_per_round}"
            )
        return settings


def demo_seed(seed: int, what: str, iteration: int) -> int:
    """Per-purpose, per-round seeds, so that e.g. summary samples never reuse training samples."""
    return derive_seed(seed, "demo", what, iteration)


def resolve_family_fasta(path: str | os.PathLike, cwd: Path, basedir: Path) -> Path:
    """demo.family_fasta: relative paths are looked up in the working directory, then in the
    workflow's directory (where the shipped family lives), so `--directory elsewhere` works."""
    path = Path(path)
    candidates = [path] if path.is_absolute() else [cwd / path, basedir / path]
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    raise ConfigError(
        f"demo.family_fasta: '{path}' does not exist (looked in "
        f"{', '.join(str(c.parent) for c in candidates)}); give a FASTA of training sequences"
    )


def check_demo_config(config: Mapping[str, Any]) -> None:
    """DAG-time checks of the demo section (ConfigError, one line)."""
    if config["prompt"]["format"] != "zymctrl":
        raise ConfigError(
            f"prompt.format = '{config['prompt']['format']}': the demo builds ZymCTRL-format "
            "checkpoints, so it needs prompt.format 'zymctrl'"
        )
    BaseModelConfig.from_config(config["demo"]["base"])
    DPOSettings.from_config(config["demo"]["dpo"])
