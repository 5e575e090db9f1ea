"""Tiny checkpoints the suite trains itself: a base model on the shipped family, then rounds
fine-tuned, each from the previous one, on the family transformed by a study (a planted motif,
an enriched residue class, shorter sequences), so the answer is known by construction.

Two formats: GPT-2 in the ZymCTRL layout (`{label}<sep><start>SEQ<end><|endoftext|>`) and a
LLaMA-style decoder in the plain format (BOS + SEQ + EOS, a per-residue tokenizer), both built by
plmdiff.testing.checkpoints and trained by plmdiff.models.lm_training.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Literal

from plmdiff.models.lm_training import LMTrainingConfig, train_causal_lm
from plmdiff.models.zymctrl import (
    gpt2_config,
    load_zymctrl_tokenizer,
    new_gpt2,
    save_checkpoint,
)
from plmdiff.testing.checkpoints import (
    PLAIN_FORMAT,
    ZYMCTRL_FORMAT,
    ZYMCTRL_IDS,
    decoder_config,
    new_decoder,
    residue_tokenizer,
    special_ids_of,
)

Architecture = Literal["gpt2", "llama"]
PROMPT_FORMAT: dict[str, str] = {"gpt2": "zymctrl", "llama": "plain"}


@dataclass(frozen=True)
class ModelShape:
    """Depth and width of the study's models (small enough to train in a minute on 2 cores)."""

    n_layer: int
    n_embd: int
    n_head: int
    n_positions: int


def tokenizer_for(arch: Architecture) -> Any:
    """ZymCTRL's tokenizer for GPT-2; the per-residue tokenizer (distinct BOS and EOS, so a tiny
    model learns to end sequences) for the plain-format LLaMA."""
    return load_zymctrl_tokenizer() if arch == "gpt2" else residue_tokenizer()


def new_model(arch: Architecture, shape: ModelShape, seed: int) -> Any:
    """A randomly initialised decoder of `arch` for its tokenizer (plmdiff.testing.checkpoints)."""
    if arch == "gpt2":
        return new_gpt2(
            gpt2_config(shape.n_layer, shape.n_embd, shape.n_head, n_positions=shape.n_positions),
            seed=seed,
        )
    tokenizer = residue_tokenizer()
    config = decoder_config(
        "llama",
        special_ids_of(tokenizer),
        vocab_size=len(tokenizer.get_vocab()),
        n_layer=shape.n_layer,
        n_embd=shape.n_embd,
        n_head=shape.n_head,
        n_positions=shape.n_positions,
    )
    return new_decoder(config, seed=seed)


def train(
    model: Any, arch: Architecture, tokenizer: Any, sequences: Sequence[str], cfg: LMTrainingConfig
) -> None:
    """Train in place in the architecture's text format (plain text ends with EOS)."""
    if arch == "gpt2":
        train_causal_lm(model, tokenizer, ZYMCTRL_FORMAT, ZYMCTRL_IDS, sequences, cfg)
    else:
        train_causal_lm(model, tokenizer, PLAIN_FORMAT, special_ids_of(tokenizer), sequences, cfg)


def build_base(
    directory: Path,
    arch: Architecture,
    shape: ModelShape,
    sequences: Sequence[str],
    cfg: LMTrainingConfig,
) -> Path:
    """The base checkpoint, trained on the family; shared by every study of one architecture
    (the studies differ in their rounds), reused when it exists."""
    if directory.is_dir():
        return directory
    tokenizer = tokenizer_for(arch)
    model = new_model(arch, shape, cfg.seed)
    train(model, arch, tokenizer, sequences, cfg)
    return save_checkpoint(model, tokenizer, directory)


def load_model(checkpoint: Path) -> Any:
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(checkpoint).eval()


def build_rounds(
    directory: Path,
    base: Path,
    arch: Architecture,
    round_data: Sequence[Sequence[str] | None],
    cfg: LMTrainingConfig,
    from_base: bool = False,
) -> list[Path]:
    """The base checkpoint's copy and one checkpoint per round. A round is fine-tuned from the
    one before (as DPO rounds are) or, with `from_base`, from the base on its own data, so its
    samples reflect its round's rate rather than the sum of every earlier round's training. A
    round whose data is None is a copy of the base (null).

    Checkpoints are reused when they were built from the same data and settings (`built.json`
    records a fingerprint of both), so a re-run only re-runs the workflow.
    """
    out = [directory / f"round{i}" for i in range(len(round_data) + 1)]
    stamp = directory / "built.json"
    key = build_key(base, round_data, cfg, from_base)
    if all(p.is_dir() for p in out) and stamp.is_file() and json.loads(stamp.read_text()) == key:
        return out
    for p in [*out, stamp]:  # a half-built or differently built study is rebuilt from scratch
        if p.is_dir():
            shutil.rmtree(p)
        elif p.exists():
            p.unlink()
    shutil.copytree(base, out[0])
    tokenizer = tokenizer_for(arch)
    model = None
    for i, data in enumerate(round_data, start=1):
        if data is None:
            shutil.copytree(base, out[i])
            continue
        if model is None or from_base:
            model = load_model(base)
        train(model, arch, tokenizer, data, replace(cfg, seed=cfg.seed + i))
        save_checkpoint(model, tokenizer, out[i])
    stamp.write_text(json.dumps(key))
    return out


def build_key(
    base: Path,
    round_data: Sequence[Sequence[str] | None],
    cfg: LMTrainingConfig,
    from_base: bool,
) -> dict[str, Any]:
    """What a study's checkpoints depend on: the base's weights, every round's data, the
    settings (not where they lie: a moved work directory is reused)."""
    data = hashlib.sha256()
    for seqs in round_data:
        data.update(b"\0null" if seqs is None else "\n".join(seqs).encode() + b"\0")
    return {
        "base": hashlib.sha256((base / "model.safetensors").read_bytes()).hexdigest(),
        "data": data.hexdigest(),
        "training": asdict(cfg),
        "from_base": from_base,
    }
