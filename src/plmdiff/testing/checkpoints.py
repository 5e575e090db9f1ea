"""Small real checkpoints for tests and benchmarks, in the ZymCTRL layout.

They are trained for a few seconds on the shipped protein family, so that they generate
`<end>`-terminated sequences like a real model; random weights almost never end a sequence.
"""

from __future__ import annotations

import os
from pathlib import Path

from plmdiff.core.fasta import read_fasta
from plmdiff.models.lm_training import LMTrainingConfig, train_causal_lm
from plmdiff.models.text import PromptFormat, SpecialIds
from plmdiff.models.zymctrl import (
    SPECIAL_TOKENS,
    gpt2_config,
    load_zymctrl_tokenizer,
    new_gpt2,
    save_checkpoint,
)

REPO_ROOT = Path(__file__).resolve().parents[3]
FAMILY_FASTA = REPO_ROOT / "resources" / "gamma_ca_4.2.1.1.fasta"
ZYMCTRL_FORMAT = PromptFormat(format="zymctrl", label="4.2.1.1")
ZYMCTRL_IDS = SpecialIds(
    pad=SPECIAL_TOKENS["<pad>"],
    eos=SPECIAL_TOKENS["<|endoftext|>"],
    bos=SPECIAL_TOKENS["<|endoftext|>"],
    sep=SPECIAL_TOKENS["<sep>"],
    start=SPECIAL_TOKENS["<start>"],
    end=SPECIAL_TOKENS["<end>"],
)


def family_sequences(max_length: int | None = None, limit: int | None = None) -> list[str]:
    seqs = [e.sequence for e in read_fasta(FAMILY_FASTA)]
    if max_length is not None:
        seqs = [s for s in seqs if len(s) <= max_length]
    return seqs[:limit] if limit is not None else seqs


def make_tiny_checkpoint(
    directory: str | os.PathLike,
    *,
    n_layer: int = 2,
    n_embd: int = 32,
    n_head: int = 2,
    n_positions: int = 256,
    train_steps: int = 60,
    seed: int = 0,
    crop: int = 60,
) -> Path:
    """A tiny GPT-2 trained briefly on cropped family sequences (so it ends them, short).

    Sequences are cropped to `crop` residues so the model learns to emit `<end>` early and
    test sampling stays fast.
    """
    tokenizer = load_zymctrl_tokenizer()
    model = new_gpt2(gpt2_config(n_layer, n_embd, n_head, n_positions=n_positions), seed=seed)
    sequences = [s[:crop] for s in family_sequences(limit=256)]
    if train_steps > 0:
        train_causal_lm(
            model,
            tokenizer,
            ZYMCTRL_FORMAT,
            ZYMCTRL_IDS,
            sequences,
            LMTrainingConfig(epochs=100, lr=5e-3, batch_size=32, seed=seed, max_steps=train_steps),
        )
    return save_checkpoint(model, tokenizer, directory)
