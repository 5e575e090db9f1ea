"""Importing SAEs: Zym_SAEs checkpoints converted to sae-lens agree with the original forward pass;
files that need full unpickling are refused; sae-lens directories load as they are."""

from __future__ import annotations

import math
import types

import pytest
import torch
import torch.nn.functional as F

from plmdiff.core.errors import ConfigError, DataError
from plmdiff.sae.imports import import_sae, load_zym_checkpoint, zym_layer
from plmdiff.sae.sources import import_source_files, resolve_import_path
from plmdiff.sae.training import load_sae, save_sae

D_IN, D_SAE = 24, 96


def zym_checkpoint(model_type: str = "BatchTopK", *, unit_norm: bool = True, seed: int = 0):
    """A checkpoint_latest.pt dict in Zym_SAEs' layout (training/logs.py save_checkpoint)."""
    g = torch.Generator().manual_seed(seed)
    w_dec = torch.randn(D_SAE, D_IN, generator=g)
    w_dec /= w_dec.norm(dim=-1, keepdim=True)  # Zym_SAEs keeps decoder rows unit-norm
    state = {
        "W_enc": w_dec.T.clone() + 0.1 * torch.randn(D_IN, D_SAE, generator=g),
        "W_dec": w_dec,
        "b_enc": 0.1 * torch.randn(D_SAE, generator=g) - 0.2,
        "b_dec": 0.2 * torch.randn(D_IN, generator=g),
    }
    cfg = {
        "seed": 49,
        "act_size": D_IN,
        "dict_size": D_SAE,
        "top_k": 8,
        "input_unit_norm": unit_norm,
        "dtype": torch.float32,  # as Zym_SAEs stores it; weights_only loading accepts dtypes
        "device": "cuda:0",
        "hook_point": "blocks.5.hook_resid_pre",
        "layer": 5,
        "model_type": model_type,
        "n_batches_to_dead": 5,
        "top_k_aux": 512,
        "aux_penalty": 1 / 32,
    }
    checkpoint = {"model_state_dict": state, "cfg": cfg, "iter_num": 1000, "is_resumed": False}
    if model_type == "BatchTopK":
        thresholds = 0.3 + 0.5 * torch.rand(D_SAE, generator=g)
        thresholds[3] = math.nan  # never fired while thresholds were collected
        checkpoint["thresholds"] = thresholds
    if model_type == "JumpReLU":
        state["jumprelu.log_threshold"] = torch.log(0.2 + torch.rand(D_SAE, generator=g))
    return checkpoint


def zym_forward(checkpoint, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(feature acts, reconstruction) as Zym_SAEs computes them (training/sae.py, inference)."""
    cfg, st = checkpoint["cfg"], checkpoint["model_state_dict"]
    mean = std = None
    if cfg["input_unit_norm"]:
        mean = x.mean(dim=-1, keepdim=True)
        x = x - mean
        std = x.std(dim=-1, keepdim=True)
        x = x / (std + 1e-5)
    kind = cfg["model_type"]
    if kind == "BatchTopK":  # converted to JumpReLU with thresholds, run with use_pre_enc_bias
        pre = F.relu((x - st["b_dec"]) @ st["W_enc"] + st["b_enc"])
        acts = pre * (pre > checkpoint["thresholds"]).float()  # NaN compares False: never fires
    elif kind == "TopK":
        pre = F.relu((x - st["b_dec"]) @ st["W_enc"])
        top = torch.topk(pre, cfg["top_k"], dim=-1)
        acts = torch.zeros_like(pre).scatter(-1, top.indices, top.values)
    elif kind == "vanilla":
        acts = F.relu((x - st["b_dec"]) @ st["W_enc"] + st["b_enc"])
    else:  # JumpReLU, default use_pre_enc_bias=False
        pre = torch.relu(x @ st["W_enc"] + st["b_enc"])
        acts = pre * (pre > torch.exp(st["jumprelu.log_threshold"])).float()
    recon = acts @ st["W_dec"] + st["b_dec"]
    if cfg["input_unit_norm"]:
        recon = recon * std + mean
    return acts, recon


def raw_activations(n: int = 300, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return 3 * torch.randn(n, D_IN, generator=g) + torch.linspace(-2, 6, D_IN)


@pytest.mark.parametrize(
    ("model_type", "unit_norm", "architecture"),
    [
        ("BatchTopK", True, "jumprelu"),
        ("BatchTopK", False, "jumprelu"),
        ("TopK", True, "topk"),
        ("vanilla", True, "standard"),
        ("JumpReLU", True, "jumprelu"),
    ],
)
def test_zym_import_agrees_with_the_original_forward(tmp_path, model_type, unit_norm, architecture):
    checkpoint = zym_checkpoint(model_type, unit_norm=unit_norm)
    path = tmp_path / "layer_5" / "checkpoint_latest.pt"
    path.parent.mkdir()
    torch.save(checkpoint, path)
    x = raw_activations()
    want_acts, want_recon = zym_forward(checkpoint, x)
    assert want_acts.count_nonzero() > 0 and (want_acts == 0).any()

    sae = import_sae(path.parent, layer=5, d_in=D_IN)  # a directory holding the checkpoint
    assert sae.cfg.architecture() == architecture
    assert sae.cfg.normalize_activations == ("layer_norm" if unit_norm else "none")
    with torch.no_grad():
        acts = sae.encode(x)
        assert torch.allclose(acts, want_acts, atol=1e-5)
        assert torch.allclose(sae.decode(acts), want_recon, atol=1e-4)
        if model_type == "BatchTopK":
            assert not acts[:, 3].any()  # the NaN-threshold feature stays off

    # And it survives being written as a sae-lens directory (what train_sae stores).
    save_sae(sae, tmp_path / "sae")
    again = load_sae(tmp_path / "sae")
    with torch.no_grad():
        assert torch.allclose(again.decode(again.encode(x)), want_recon, atol=1e-4)
    assert again.cfg.metadata.imported_from == str(path)


def test_a_file_that_needs_full_unpickling_is_refused(tmp_path):
    checkpoint = zym_checkpoint()
    checkpoint["cfg"] = types.SimpleNamespace(**checkpoint["cfg"])  # an arbitrary Python object
    path = tmp_path / "checkpoint_latest.pt"
    torch.save(checkpoint, path)
    with pytest.raises(DataError) as info:
        import_sae(path, layer=5)
    message = str(info.value)
    assert "weights_only=True" in message and "types.SimpleNamespace" in message
    assert "refuses files that need full unpickling" in message
    assert "\n" not in message


def test_checkpoint_of_another_layer_or_width_is_refused(tmp_path):
    path = tmp_path / "checkpoint_latest.pt"
    torch.save(zym_checkpoint(), path)
    with pytest.raises(ConfigError, match=r"blocks.5.hook_resid_pre \(plmdiff layer 5\).*layer 6"):
        import_sae(path, layer=6)
    with pytest.raises(DataError, match=r"d_in 24 but the activations have d_model 32"):
        import_sae(path, layer=5, d_in=32)
    broken = zym_checkpoint()
    broken["model_state_dict"]["W_dec"] = torch.zeros(D_SAE, D_IN + 1)
    torch.save(broken, path)
    with pytest.raises(DataError, match=r"'W_dec' has shape \(96, 25\), expected \(96, 24\)"):
        import_sae(path)
    with pytest.raises(ConfigError, match="does not exist"):
        import_sae(tmp_path / "nothing_here")


def test_sae_lens_directory_is_imported_as_is(tmp_path):
    path = tmp_path / "ckpt.pt"
    torch.save(zym_checkpoint("TopK"), path)
    save_sae(import_sae(path), tmp_path / "layer_05")
    sae = import_sae(resolve_import_path(str(tmp_path / "layer_{layer:02d}"), 5), layer=5)
    x = raw_activations()
    with torch.no_grad():
        assert torch.allclose(
            sae.decode(sae.encode(x)), zym_forward(load_zym_checkpoint(path), x)[1], atol=1e-4
        )
    assert [p.name for p in import_source_files(tmp_path / "layer_05")] == [
        "cfg.json",
        "sae_weights.safetensors",
    ]


def test_import_path_template():
    assert str(resolve_import_path("saes/layer_{layer}/checkpoint_latest.pt", 5)) == (
        "saes/layer_5/checkpoint_latest.pt"
    )
    assert str(resolve_import_path("saes/L{layer:02d}", 5)) == "saes/L05"
    with pytest.raises(ConfigError, match="only '\\{layer\\}'"):
        resolve_import_path("saes/{model}/x", 5)
    assert zym_layer({"hook_point": "blocks.25.hook_resid_post"}) == 26
    assert zym_layer({"hook_point": "blocks.0.hook_resid_pre"}) == 0
