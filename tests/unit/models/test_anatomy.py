"""The one decoder-anatomy adapter finds the residual stream of every supported family."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from plmdiff.core.errors import CheckpointError
from plmdiff.models.anatomy import ConfigShape, config_depth, decoder_anatomy
from plmdiff.models.zymctrl import gpt2_config, new_gpt2
from plmdiff.testing.checkpoints import (
    FAMILIES,
    decoder_config,
    new_decoder,
    residue_tokenizer,
    special_ids_of,
)

N_LAYERS, WIDTH, HEADS, CONTEXT = 3, 32, 4, 64
# (family, expected KV heads): LLaMA-style test models use grouped-query attention.
EXPECTED_KV_HEADS = {
    "gpt2": HEADS,
    "llama": HEADS // 2,
    "mistral": HEADS // 2,
    "qwen2": HEADS // 2,
    "gpt_neox": HEADS,
    "opt": HEADS,
}


def tiny_model(family: str) -> Any:
    if family == "gpt2":
        return new_gpt2(gpt2_config(N_LAYERS, WIDTH, HEADS, n_positions=CONTEXT), seed=0)
    tokenizer = residue_tokenizer()
    config = decoder_config(
        family,
        special_ids_of(tokenizer),
        vocab_size=len(tokenizer.get_vocab()),
        n_layer=N_LAYERS,
        n_embd=WIDTH,
        n_head=HEADS,
        n_positions=CONTEXT,
    )
    return new_decoder(config, seed=0)


@pytest.fixture(scope="module", params=("gpt2", *FAMILIES))
def model(request) -> Any:
    return tiny_model(request.param)


def stream_inputs(
    model: Any, ids: torch.Tensor
) -> tuple[list[torch.Tensor], tuple[torch.Tensor, ...]]:
    """The first input of stream_module(l) for l = 0..L, and the model's own hidden_states."""
    anatomy = decoder_anatomy(model)
    captured: dict[int, torch.Tensor] = {}

    def hook(layer: int) -> Any:
        def capture(_module: Any, args: tuple, kwargs: dict) -> None:
            captured[layer] = (args[0] if args else kwargs["hidden_states"]).detach().clone()

        return capture

    handles = [
        anatomy.stream_module(layer).register_forward_pre_hook(hook(layer), with_kwargs=True)
        for layer in range(anatomy.n_layers + 1)
    ]
    try:
        with torch.no_grad():
            out = model(input_ids=ids, output_hidden_states=True)
    finally:
        for handle in handles:
            handle.remove()
    return [captured[layer] for layer in range(anatomy.n_layers + 1)], out.hidden_states


def test_stream_modules_see_the_residual_stream(model):
    anatomy = decoder_anatomy(model)
    assert anatomy.n_layers == N_LAYERS
    ids = torch.randint(4, 20, (2, 11), generator=torch.Generator().manual_seed(0))
    inputs, hidden = stream_inputs(model, ids)
    assert len(hidden) == N_LAYERS + 1
    for layer in range(N_LAYERS):
        torch.testing.assert_close(inputs[layer], hidden[layer], rtol=0, atol=0)
    # hidden_states[L] is after the final norm; the stream itself is the norm's input.
    assert not torch.allclose(inputs[N_LAYERS], hidden[N_LAYERS])
    with torch.no_grad():
        torch.testing.assert_close(anatomy.final_norm(inputs[N_LAYERS]), hidden[N_LAYERS])


def test_body_has_no_lm_head(model):
    body = decoder_anatomy(model).body
    assert body is not model and body is model.base_model
    assert all(module is not model.get_output_embeddings() for module in body.modules())


def test_stream_module_out_of_range(model):
    with pytest.raises(
        CheckpointError, match=rf"layer {N_LAYERS + 1} does not exist.*0\.\.{N_LAYERS}"
    ):
        decoder_anatomy(model).stream_module(N_LAYERS + 1)


@pytest.mark.parametrize("as_dict", [False, True], ids=["config", "config.json"])
def test_config_shape(model, as_dict):
    family = model.config.model_type
    cfg = model.config.to_dict() if as_dict else model.config
    shape = ConfigShape.of(cfg)
    assert (shape.n_layers, shape.d_model, shape.n_heads, shape.n_positions) == (
        N_LAYERS,
        WIDTH,
        HEADS,
        CONTEXT,
    )
    assert shape.n_kv_heads == EXPECTED_KV_HEADS[family]
    assert shape.head_dim == WIDTH // HEADS
    assert (
        shape.kv_bytes_per_token(4)
        == 2 * N_LAYERS * EXPECTED_KV_HEADS[family] * (WIDTH // HEADS) * 4
    )
    assert config_depth(cfg) == N_LAYERS


def test_kv_cache_size_matches_a_real_cache(model):
    """ConfigShape's KV bytes per token is what the model's own cache holds (GQA included)."""
    from transformers.cache_utils import DynamicCache

    cache = DynamicCache()
    with torch.no_grad():
        model(input_ids=torch.tensor([[5, 6, 7]]), past_key_values=cache, use_cache=True)
    held = sum(
        t.numel() * t.element_size() for layer in cache.layers for t in (layer.keys, layer.values)
    )
    assert held == 3 * ConfigShape.of(model.config).kv_bytes_per_token(4)


def test_unknown_model_is_one_line_error():
    with pytest.raises(
        CheckpointError, match=r"cannot find the transformer blocks.*Sequential.*plmdiff knows"
    ) as info:
        decoder_anatomy(torch.nn.Sequential(torch.nn.Linear(2, 2)))
    assert "\n" not in str(info.value)


def test_config_without_shape_is_one_line_error():
    with pytest.raises(
        CheckpointError, match=r"model_type 'mystery' does not name its depth"
    ) as info:
        ConfigShape.of({"model_type": "mystery", "hidden_size": 8})
    assert "\n" not in str(info.value)
    assert config_depth({"model_type": "mystery"}) is None
