"""The demo's config sections as typed settings, and its DAG-time checks (no heavy imports).

`check_demo_config` is the one place the demo's cross-key rules are checked; `rules/demo.smk`
calls it when the DAG is built, so a job never starts with a config it would refuse."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from plmdiff.config.sections import from_section
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
    """`demo.base` of the config; defaults and meanings in config/schema.yaml."""

    n_layer: int
    n_embd: int
    n_head: int
    n_positions: int
    epochs: float
    lr: float
    batch_size: int
    holdout_fraction: float
    max_train_length: int
    crop: int | None
    report_samples: int

    @classmethod
    def from_section(cls, base_section: Mapping[str, Any]) -> BaseModelConfig:
        return from_section(cls, base_section, "demo.base")


@dataclass(frozen=True)
class DPOSettings:
    """`demo.dpo` of the config; defaults and meanings in config/schema.yaml."""

    rounds: int
    samples_per_round: int
    pairs_per_round: int
    beta: float
    lr: float
    epochs: float
    batch_size: int
    sft_weight: float
    summary_samples: int
    length_target: float | None
    seed: int

    @classmethod
    def from_section(cls, dpo_section: Mapping[str, Any]) -> DPOSettings:
        return from_section(cls, dpo_section, "demo.dpo")


def demo_seed(seed: int, what: str, iteration: int) -> int:
    """Per-purpose, per-round seeds, so that e.g. summary samples never reuse training samples."""
    return derive_seed(seed, "demo", what, iteration)


def resolve_family_fasta(path: str | os.PathLike, cwd: Path, basedir: Path) -> Path:
    """demo.family_fasta: relative paths are looked up in the working directory, then in the
    workflow's directory (where the shipped family lives), so `--directory elsewhere` works.

    Found in the working directory, the path stays relative: it is the demo's first input, and
    an absolute one would make Snakemake rerun the whole demo once the run directory is moved
    or copied ("set of input files has changed")."""
    path = Path(path)
    if path.is_absolute():
        candidates = [(path, path)]
    else:  # (where to look, what to return)
        candidates = [(cwd / path, path), (basedir / path, basedir / path)]
    for candidate, found in candidates:
        if candidate.is_file():
            return found
    raise ConfigError(
        f"demo.family_fasta: '{path}' does not exist (looked in "
        f"{', '.join(str(c.parent) for c, _ in candidates)}); give a FASTA of training sequences"
    )


def check_demo_config(config: Mapping[str, Any]) -> None:
    """DAG-time checks of the demo section (ConfigError, one line)."""
    if config["prompt"]["format"] != "zymctrl":
        raise ConfigError(
            f"prompt.format = '{config['prompt']['format']}': the demo builds ZymCTRL-format "
            "checkpoints, so it needs prompt.format 'zymctrl'"
        )
    base = BaseModelConfig.from_section(config["demo"]["base"])
    if base.n_embd % base.n_head:
        raise ConfigError(
            f"demo.base.n_head = {base.n_head} must divide demo.base.n_embd = {base.n_embd}"
        )
    longest = min(base.max_train_length, base.crop or base.max_train_length)
    if longest + FORMAT_OVERHEAD > base.n_positions:
        raise ConfigError(
            f"demo.base.n_positions = {base.n_positions} cannot hold a {longest}-residue "
            f"training text; use at least {longest + FORMAT_OVERHEAD} or lower "
            "demo.base.max_train_length"
        )
    dpo = DPOSettings.from_section(config["demo"]["dpo"])
    if 2 * dpo.pairs_per_round > dpo.samples_per_round:
        raise ConfigError(
            f"demo.dpo.pairs_per_round = {dpo.pairs_per_round} needs at least "
            f"{2 * dpo.pairs_per_round} samples (best and worst are disjoint); "
            f"demo.dpo.samples_per_round is {dpo.samples_per_round}"
        )
