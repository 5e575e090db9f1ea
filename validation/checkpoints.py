"""Tiny checkpoints the suite trains itself: a base model on the shipped family, then rounds
fine-tuned, each from the previous one, on the family transformed by a study (a planted motif,
an enriched residue class, shorter sequences), so the answer is known by construction.

Two formats: GPT-2 in the ZymCTRL layout (`{label}<sep><start>SEQ<end><|endoftext|>`) and a
LLaMA-style decoder in the plain format (BOS + SEQ + EOS, same character-level tokenizer).
"""

from __future__ import annotations

import math
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from plmdiff.models.lm_training import LMTrainingConfig, train_causal_lm
from plmdiff.models.zymctrl import (
    SPECIAL_TOKENS,
    gpt2_config,
    load_zymctrl_tokenizer,
    new_gpt2,
    save_checkpoint,
)
from plmdiff.testing.checkpoints import ZYMCTRL_FORMAT, ZYMCTRL_IDS

Architecture = Literal["gpt2", "llama"]
PROMPT_FORMAT: dict[str, str] = {"gpt2": "zymctrl", "llama": "plain"}


@dataclass(frozen=True)
class ModelShape:
    """Depth and width of the study's models (small enough to train in a minute on 2 cores)."""

    n_layer: int
    n_embd: int
    n_head: int
    n_positions: int


def new_model(arch: Architecture, shape: ModelShape, seed: int) -> Any:
    """A randomly initialised decoder with ZymCTRL's vocabulary and special-token ids."""
    import torch

    if arch == "gpt2":
        return new_gpt2(
            gpt2_config(shape.n_layer, shape.n_embd, shape.n_head, n_positions=shape.n_positions),
            seed=seed,
        )
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=458,
        hidden_size=shape.n_embd,
        intermediate_size=2 * shape.n_embd,
        num_hidden_layers=shape.n_layer,
        num_attention_heads=shape.n_head,
        # Grouped-query attention, so the KV-cache sizing sees n_kv_heads != n_heads.
        num_key_value_heads=max(1, shape.n_head // 2),
        max_position_embeddings=shape.n_positions,
        bos_token_id=SPECIAL_TOKENS["<|endoftext|>"],
        eos_token_id=SPECIAL_TOKENS["<|endoftext|>"],
        pad_token_id=SPECIAL_TOKENS["<pad>"],
        tie_word_embeddings=False,
    )
    return LlamaForCausalLM(config).eval()


def _plain_batches(encoded: list[list[int]], batch_size: int, pad: int, generator: Any) -> Any:
    import torch

    order = torch.randperm(len(encoded), generator=generator).tolist()
    for i in range(0, len(order), batch_size):
        chunk = [encoded[j] for j in order[i : i + batch_size]]
        width = max(map(len, chunk))
        ids = torch.full((len(chunk), width), pad, dtype=torch.long)
        labels = torch.full((len(chunk), width), -100, dtype=torch.long)
        mask = torch.zeros((len(chunk), width), dtype=torch.long)
        for row, seq in enumerate(chunk):
            ids[row, : len(seq)] = torch.tensor(seq)
            labels[row, : len(seq)] = torch.tensor(seq)
            mask[row, : len(seq)] = 1
        yield ids, mask, labels


def train_plain(
    model: Any, tokenizer: Any, sequences: Sequence[str], cfg: LMTrainingConfig
) -> None:
    """Causal-LM training on BOS + SEQ + EOS.

    plmdiff's plain scoring text has no end token (extraction never needs one), but a sampled
    plain model stops at EOS, so it must learn to emit it: hence this loop rather than
    `train_causal_lm` with the plain format.
    """
    import torch

    bos = eos = SPECIAL_TOKENS["<|endoftext|>"]
    encoded = [[bos, *tokenizer.encode(s, add_special_tokens=False), eos] for s in sequences]
    total = cfg.max_steps or max(1, round(cfg.epochs * math.ceil(len(encoded) / cfg.batch_size)))
    warmup = max(1, int(cfg.warmup_fraction * total))
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)

    def schedule(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
    generator = torch.Generator().manual_seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    model.train()
    step = 0
    while step < total:
        for ids, mask, labels in _plain_batches(
            encoded, cfg.batch_size, SPECIAL_TOKENS["<pad>"], generator
        ):
            model(input_ids=ids, attention_mask=mask, labels=labels).loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            if step >= total:
                break
    model.eval()


def train(
    model: Any, arch: Architecture, tokenizer: Any, sequences: Sequence[str], cfg: LMTrainingConfig
) -> None:
    """Train in place in the architecture's text format."""
    if arch == "gpt2":
        train_causal_lm(model, tokenizer, ZYMCTRL_FORMAT, ZYMCTRL_IDS, sequences, cfg)
    else:
        train_plain(model, tokenizer, sequences, cfg)


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
    tokenizer = load_zymctrl_tokenizer()
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
) -> list[Path]:
    """The base checkpoint's copy and one checkpoint per round, each round fine-tuned from the
    one before (as DPO rounds are). A round whose data is None is a copy of the base (null).

    Existing checkpoint directories are reused, so a re-run only re-runs the workflow.
    """
    out = [directory / f"round{i}" for i in range(len(round_data) + 1)]
    if all(p.is_dir() for p in out):
        return out
    for p in out:  # a half-built study is rebuilt from scratch
        if p.exists():
            shutil.rmtree(p)
    shutil.copytree(base, out[0])
    tokenizer = load_zymctrl_tokenizer()
    model = load_model(base)
    for i, data in enumerate(round_data, start=1):
        if data is None:
            shutil.copytree(base, out[i])
            continue
        train(
            model, arch, tokenizer, data, LMTrainingConfig(**{**cfg.__dict__, "seed": cfg.seed + i})
        )
        save_checkpoint(model, tokenizer, out[i])
    return out
