"""Checkpoints in the ZymCTRL layout: its tokenizer, GPT-2 configs, save_pretrained directories.

The demo and the tests build their own small checkpoints here, so that every stage reads exactly
what a ZymCTRL user's `output_iteration{i}/` folder holds: `config.json`, `model.safetensors`
and the tokenizer files.
"""

from __future__ import annotations

import json
import os
from importlib import resources
from pathlib import Path
from typing import Any

from plmdiff.core.runtime import atomic_path
from plmdiff.models.text import END, EOS, PAD, SEP, START, SpecialIds

# ZymCTRL's special tokens and their ids in its published vocabulary.
SPECIAL_TOKENS = {PAD: 0, EOS: 1, SEP: 2, START: 3, END: 4, "[UNK]": 5}


def tokenizer_json_path() -> Path:
    return Path(str(resources.files("plmdiff") / "resources" / "zymctrl_tokenizer.json"))


def zymctrl_config_dict() -> dict[str, Any]:
    """The published ZymCTRL config (36 x 1280): the shape of GPU benchmark models."""
    path = resources.files("plmdiff") / "resources" / "zymctrl_config.json"
    return json.loads(path.read_text())


def load_zymctrl_tokenizer() -> Any:
    """ZymCTRL's tokenizer from the shipped tokenizer.json (no hub access)."""
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast(
        tokenizer_file=str(tokenizer_json_path()),
        pad_token=PAD,
        eos_token=EOS,
        bos_token=EOS,
        unk_token="[UNK]",
        additional_special_tokens=[SEP, START, END],
    )


def gpt2_config(
    n_layer: int,
    n_embd: int,
    n_head: int,
    n_positions: int = 1024,
    vocab_size: int = 458,
    special: SpecialIds | None = None,
    **extra: Any,
) -> Any:
    """A GPT-2 config with ZymCTRL's vocabulary and special-token ids, or another tokenizer's
    (`vocab_size`, `special`)."""
    from transformers import GPT2Config

    if n_embd % n_head:
        raise ValueError(f"n_embd={n_embd} must be divisible by n_head={n_head}")
    ids = special or SpecialIds(
        pad=SPECIAL_TOKENS[PAD], eos=SPECIAL_TOKENS[EOS], bos=SPECIAL_TOKENS[EOS]
    )
    return GPT2Config(
        n_layer=n_layer,
        n_embd=n_embd,
        n_head=n_head,
        n_positions=n_positions,
        vocab_size=vocab_size,
        activation_function="gelu_new",
        bos_token_id=ids.bos,
        eos_token_id=ids.eos,
        pad_token_id=ids.pad,
        **extra,
    )


def new_gpt2(config: Any, seed: int = 0) -> Any:
    import torch
    from transformers import GPT2LMHeadModel

    torch.manual_seed(seed)
    return GPT2LMHeadModel(config).eval()


def save_checkpoint(model: Any, tokenizer: Any, directory: str | os.PathLike) -> Path:
    """Write a Hugging Face checkpoint directory (safetensors + tokenizer) atomically.

    The directory appears under its final name only once complete, so an interrupted save
    never leaves something that intake would accept.
    """
    final = Path(directory)
    with atomic_path(final) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
    return final
