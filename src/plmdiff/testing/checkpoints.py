"""Small real checkpoints for tests and benchmarks, in the ZymCTRL layout and in other decoder
families (LLaMA-style with grouped-query attention, GPT-NeoX, OPT) for `prompt.format: plain`,
and a GPT-2 with a BPE tokenizer whose tokens hold several residues (ProtGPT2's kind).

They are trained for a few seconds on the shipped protein family, so that they generate
terminated sequences like a real model; random weights almost never end a sequence.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal, TypedDict

from plmdiff.config.schema import REPO_ROOT
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

FAMILY_FASTA = REPO_ROOT / "resources" / "gamma_ca_4.2.1.1.fasta"
ZYMCTRL_FORMAT = PromptFormat(format="zymctrl", label="4.2.1.1")
PLAIN_FORMAT = PromptFormat(format="plain", label="")
ZYMCTRL_IDS = SpecialIds(
    pad=SPECIAL_TOKENS["<pad>"],
    eos=SPECIAL_TOKENS["<|endoftext|>"],
    bos=SPECIAL_TOKENS["<|endoftext|>"],
    sep=SPECIAL_TOKENS["<sep>"],
    start=SPECIAL_TOKENS["<start>"],
    end=SPECIAL_TOKENS["<end>"],
)

# Decoder families of the plain-format test checkpoints, by config.json `model_type`. The
# LLaMA-style ones share one config recipe (their configs name the same keys).
Family = Literal["llama", "mistral", "qwen2", "gpt_neox", "opt"]
LLAMA_STYLE: tuple[Family, ...] = ("llama", "mistral", "qwen2")
FAMILIES: tuple[Family, ...] = (*LLAMA_STYLE, "gpt_neox", "opt")

# The per-residue tokenizer's vocabulary: specials first (ids 0..3), then one token per letter,
# so non-canonical residues (X, B, Z, U, O) encode as themselves rather than as <unk>.
RESIDUE_SPECIALS = {"pad": "<pad>", "bos": "<s>", "eos": "</s>", "unk": "<unk>"}
RESIDUE_LETTERS = "ABCDEFGHIKLMNOPQRSTUVWXYZ"


def family_sequences(max_length: int | None = None, limit: int | None = None) -> list[str]:
    seqs = [e.sequence for e in read_fasta(FAMILY_FASTA)]
    if max_length is not None:
        seqs = [s for s in seqs if len(s) <= max_length]
    return seqs[:limit] if limit is not None else seqs


def _train_briefly(
    model: Any,
    tokenizer: Any,
    fmt: PromptFormat,
    ids: SpecialIds,
    *,
    train_steps: int,
    seed: int,
    crop: int,
) -> None:
    """Train on family sequences cropped to `crop` residues, so the model learns to end them
    early and test sampling stays fast."""
    if train_steps <= 0:
        return
    sequences = [s[:crop] for s in family_sequences(limit=256)]
    train_causal_lm(
        model,
        tokenizer,
        fmt,
        ids,
        sequences,
        LMTrainingConfig(epochs=100, lr=5e-3, batch_size=32, seed=seed, max_steps=train_steps),
    )


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
    """A tiny GPT-2 in the ZymCTRL layout, trained briefly on cropped family sequences."""
    tokenizer = load_zymctrl_tokenizer()
    model = new_gpt2(gpt2_config(n_layer, n_embd, n_head, n_positions=n_positions), seed=seed)
    _train_briefly(
        model, tokenizer, ZYMCTRL_FORMAT, ZYMCTRL_IDS, train_steps=train_steps, seed=seed, crop=crop
    )
    return save_checkpoint(model, tokenizer, directory)


def residue_tokenizer() -> Any:
    """A one-token-per-residue tokenizer with distinct <pad>, <s> (BOS), </s> (EOS) and <unk>,
    built offline with the `tokenizers` library (the layout of LLaMA-style protein LMs)."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {token: i for i, token in enumerate(RESIDUE_SPECIALS.values())}
    vocab.update({letter: len(vocab) + i for i, letter in enumerate(RESIDUE_LETTERS)})
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token=RESIDUE_SPECIALS["unk"]))
    backend.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    backend.decoder = decoders.Fuse()
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        **{f"{role}_token": token for role, token in RESIDUE_SPECIALS.items()},
    )


def special_ids_of(tokenizer: Any) -> SpecialIds:
    return SpecialIds(
        pad=tokenizer.pad_token_id, eos=tokenizer.eos_token_id, bos=tokenizer.bos_token_id
    )


class _TokenIds(TypedDict):
    """Special token ids, as the keyword arguments of a transformers config."""

    bos_token_id: int | None
    eos_token_id: int
    pad_token_id: int


class _Dimensions(TypedDict):
    """A decoder's sizes, as the keyword arguments of a non-GPT-2 transformers config."""

    vocab_size: int
    hidden_size: int
    num_hidden_layers: int
    num_attention_heads: int
    max_position_embeddings: int


def decoder_config(
    family: Family,
    special: SpecialIds,
    *,
    vocab_size: int,
    n_layer: int,
    n_embd: int,
    n_head: int,
    n_positions: int,
) -> Any:
    """A tiny config of `family` with the tokenizer's special ids.

    LLaMA-style models (LLaMA, Mistral, Qwen2) get half as many KV heads as query heads
    (grouped-query attention), so the KV-cache and attention paths that differ from GPT-2's
    are exercised.
    """
    from transformers import AutoConfig, GPTNeoXConfig, OPTConfig

    if n_embd % n_head or (family in LLAMA_STYLE and n_head % 2):
        raise ValueError(f"n_head={n_head} must divide n_embd={n_embd} (and be even for {family})")
    ids = _TokenIds(bos_token_id=special.bos, eos_token_id=special.eos, pad_token_id=special.pad)
    # LLaMA-style, GPT-NeoX and OPT configs spell the dimensions the same way.
    dims = _Dimensions(
        vocab_size=vocab_size,
        hidden_size=n_embd,
        num_hidden_layers=n_layer,
        num_attention_heads=n_head,
        max_position_embeddings=n_positions,
    )
    if family in LLAMA_STYLE:
        return AutoConfig.for_model(
            family,
            intermediate_size=2 * n_embd,
            num_key_value_heads=n_head // 2,
            tie_word_embeddings=False,
            **dims,
            **ids,
        )
    if family == "gpt_neox":
        return GPTNeoXConfig(intermediate_size=2 * n_embd, **dims, **ids)
    if family == "opt":
        return OPTConfig(
            word_embed_proj_dim=n_embd,
            ffn_dim=2 * n_embd,
            do_layer_norm_before=True,
            **dims,
            **ids,
        )
    raise ValueError(f"unknown decoder family '{family}'; known: {', '.join(FAMILIES)}")


def new_decoder(config: Any, seed: int = 0) -> Any:
    import torch
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    return AutoModelForCausalLM.from_config(config).eval()


def make_tiny_plain_checkpoint(
    directory: str | os.PathLike,
    family: Family,
    *,
    n_layer: int = 2,
    n_embd: int = 32,
    n_head: int = 4,
    n_positions: int = 256,
    train_steps: int = 60,
    seed: int = 0,
    crop: int = 60,
) -> Path:
    """A tiny `family` decoder for `prompt.format: plain` (BOS + sequence + EOS), trained briefly.

    It gets the per-residue tokenizer: with BOS distinct from EOS a few dozen steps teach it to
    end sequences (with ZymCTRL's, where both are <|endoftext|>, they rarely end that soon).
    """
    tokenizer = residue_tokenizer()
    special = special_ids_of(tokenizer)
    config = decoder_config(
        family,
        special,
        vocab_size=len(tokenizer.get_vocab()),
        n_layer=n_layer,
        n_embd=n_embd,
        n_head=n_head,
        n_positions=n_positions,
    )
    model = new_decoder(config, seed=seed)
    _train_briefly(
        model, tokenizer, PLAIN_FORMAT, special, train_steps=train_steps, seed=seed, crop=crop
    )
    return save_checkpoint(model, tokenizer, directory)


# A BPE vocabulary this size holds ~170 merges of the family: most tokens hold 2-4 residues.
BPE_VOCAB_SIZE = 200


def bpe_tokenizer(vocab_size: int = BPE_VOCAB_SIZE) -> Any:
    """A BPE tokenizer trained on the shipped family, with the per-residue tokenizer's specials
    (<pad>, <s>, </s>, <unk>), built offline with the `tokenizers` library. Its tokens hold
    several residues, as ProtGPT2's do; every residue letter is in its alphabet."""
    from tokenizers import Tokenizer, decoders, models, trainers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.BPE(unk_token=RESIDUE_SPECIALS["unk"]))
    backend.decoder = decoders.Fuse()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(RESIDUE_SPECIALS.values()),
        initial_alphabet=list(RESIDUE_LETTERS),
        show_progress=False,
    )
    backend.train_from_iterator(family_sequences(), trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        **{f"{role}_token": token for role, token in RESIDUE_SPECIALS.items()},
    )


def make_tiny_bpe_checkpoint(
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
    """A tiny GPT-2 with the family's BPE tokenizer for `prompt.format: plain`, trained briefly
    (ProtGPT2's layout: a GPT-2 over BPE tokens of amino-acid strings)."""
    tokenizer = bpe_tokenizer()
    special = special_ids_of(tokenizer)
    config = gpt2_config(
        n_layer,
        n_embd,
        n_head,
        n_positions=n_positions,
        vocab_size=len(tokenizer.get_vocab()),
        special=special,
    )
    model = new_decoder(config, seed=seed)
    _train_briefly(
        model, tokenizer, PLAIN_FORMAT, special, train_steps=train_steps, seed=seed, crop=crop
    )
    return save_checkpoint(model, tokenizer, directory)
