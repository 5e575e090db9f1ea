"""Decoder anatomy: the one place that knows where a causal LM keeps its blocks and final norm,
and how its config names depth, width, heads and context.

Every stage that touches the inside of a model (sampling's KV-cache sizing, extraction's hooks,
SAE splicing, KL's context check, intake's record, DAG-time layer checks) asks this module, so
that supporting a new decoder family is one edit here (ARCHITECTURE.md, "Layer convention").

Residual-stream layer l (0 = token + position embeddings, L = the last block's output) is the
input of block l for l < L and the input of the final norm for l = L.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from plmdiff.core.errors import CheckpointError

# (attribute of the decoder stack holding the blocks, attribute holding the final norm), tried in
# order on the base model and on its `decoder` child (OPT keeps its stack one level down).
BLOCK_AND_NORM_NAMES: tuple[tuple[str, str], ...] = (
    ("h", "ln_f"),  # GPT-2 (ZymCTRL, ProtGPT2), GPT-J, CodeGen, BLOOM, Falcon
    ("layers", "norm"),  # LLaMA, Mistral, Qwen2/3, Gemma, ProGen3-style decoders
    ("layers", "final_layer_norm"),  # GPT-NeoX (Pythia), OPT
    ("layers", "final_layernorm"),  # Phi
    ("blocks", "ln_f"),
)
SUPPORTED = "GPT-2 / GPT-J style (h, ln_f), LLaMA / Mistral / Qwen style (layers, norm), GPT-NeoX and OPT (layers, final_layer_norm)"

# Config keys of the same quantity across families, first match wins.
_DEPTH_KEYS = ("n_layer", "num_hidden_layers", "num_layers")
_WIDTH_KEYS = ("n_embd", "hidden_size", "d_model")
_HEAD_KEYS = ("n_head", "num_attention_heads")
_KV_HEAD_KEYS = ("num_key_value_heads", "n_head_kv", "num_kv_heads")
_CONTEXT_KEYS = ("n_positions", "max_position_embeddings", "n_ctx", "seq_length")


def _lookup(cfg: Any, keys: tuple[str, ...]) -> Any:
    for key in keys:
        value = cfg.get(key) if isinstance(cfg, Mapping) else getattr(cfg, key, None)
        if value is not None:
            return value
    return None


@dataclass(frozen=True)
class ConfigShape:
    """Depth, width, heads and context of a decoder, read from its config (object or dict)."""

    n_layers: int
    d_model: int
    n_heads: int
    n_kv_heads: int
    head_dim: int
    n_positions: int  # the longest input, prompt included

    @classmethod
    def of(cls, cfg: Any) -> ConfigShape:
        n_layers = _lookup(cfg, _DEPTH_KEYS)
        d_model = _lookup(cfg, _WIDTH_KEYS)
        n_heads = _lookup(cfg, _HEAD_KEYS)
        context = _lookup(cfg, _CONTEXT_KEYS)
        if n_layers is None or d_model is None or n_heads is None or context is None:
            kind = (
                cfg.get("model_type")
                if isinstance(cfg, Mapping)
                else getattr(cfg, "model_type", "?")
            )
            raise CheckpointError(
                f"config of model_type '{kind}' does not name its depth, width, heads and context "
                f"(looked for {_DEPTH_KEYS}, {_WIDTH_KEYS}, {_HEAD_KEYS}, {_CONTEXT_KEYS}); "
                f"plmdiff knows {SUPPORTED}"
            )
        kv_heads = _lookup(cfg, _KV_HEAD_KEYS) or n_heads
        head_dim = _lookup(cfg, ("head_dim",)) or int(d_model) // int(n_heads)
        return cls(
            n_layers=int(n_layers),
            d_model=int(d_model),
            n_heads=int(n_heads),
            n_kv_heads=int(kv_heads),
            head_dim=int(head_dim),
            n_positions=int(context),
        )

    def kv_bytes_per_token(self, element_size: int) -> int:
        """Bytes of KV cache one token of one sequence takes (keys and values, every layer);
        grouped-query models keep fewer KV heads than query heads."""
        return 2 * self.n_layers * self.n_kv_heads * self.head_dim * element_size


def config_depth(cfg: Any) -> int | None:
    """Number of blocks a config names, or None (cheap DAG-time checks on config.json)."""
    value = _lookup(cfg, _DEPTH_KEYS)
    return int(value) if isinstance(value, int) else None


@dataclass(frozen=True)
class DecoderAnatomy:
    """The modules of a causal LM that the residual stream flows through."""

    body: Any  # the base model: embeddings + blocks + final norm, no LM head
    blocks: tuple[Any, ...]
    final_norm: Any

    @property
    def n_layers(self) -> int:
        return len(self.blocks)

    @property
    def stream_modules(self) -> tuple[Any, ...]:
        """Module whose first input is residual-stream layer l, for l = 0..L."""
        return (*self.blocks, self.final_norm)

    def stream_module(self, layer: int) -> Any:
        if not 0 <= layer <= self.n_layers:
            raise CheckpointError(
                f"layer {layer} does not exist: the model has layers 0..{self.n_layers} "
                "(0 = embeddings, L = last block)"
            )
        return self.stream_modules[layer]


def decoder_anatomy(model: Any) -> DecoderAnatomy:
    """Find the blocks and final norm of a Hugging Face causal LM (or of its base model)."""
    prefix = getattr(model, "base_model_prefix", "") or ""
    body = getattr(model, prefix, None) if prefix else None
    body = body if body is not None else model
    for stack in (body, getattr(body, "decoder", None)):
        if stack is None:
            continue
        for blocks_name, norm_name in BLOCK_AND_NORM_NAMES:
            blocks = getattr(stack, blocks_name, None)
            norm = getattr(stack, norm_name, None)
            if blocks is not None and norm is not None:
                return DecoderAnatomy(body=body, blocks=tuple(blocks), final_norm=norm)
    raise CheckpointError(
        f"cannot find the transformer blocks and final norm of a {type(model).__name__}; "
        f"plmdiff knows {SUPPORTED}"
    )
