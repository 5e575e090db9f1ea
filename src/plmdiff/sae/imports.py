"""Import an existing SAE as the base SAE: a sae-lens directory or a Zym_SAEs checkpoint.

Zym_SAEs (the study authors' SAE code) saves `checkpoint_latest.pt`: a dict holding `cfg` (a
plain dict: act_size, dict_size, top_k, input_unit_norm, model_type/sae_type, hook_point, ...),
`model_state_dict` (W_enc [d_in, d_sae], W_dec [d_sae, d_in], b_enc, b_dec; a JumpReLU SAE also
`jumprelu.log_threshold`) and, for BatchTopK SAEs, `thresholds` (per-feature thresholds that turn
BatchTopK into JumpReLU for inference). It is read with `torch.load(weights_only=True)`; a file
that needs full unpickling (arbitrary Python objects, which can run code) is refused.

Zym_SAEs' forward passes and their sae-lens equivalents (same reconstruction, same features):
- BatchTopK + thresholds: relu((x - b_dec) W_enc + b_enc), zero where <= threshold -> JumpReLU
  (a never-fired feature's NaN threshold becomes +inf: it never fires);
- BatchTopK without thresholds -> TopK with k = top_k (per-token top-k: an approximation of the
  batch-level selection, logged);
- TopK: relu((x - b_dec) W_enc), top k (no encoder bias) -> TopK with b_enc = 0;
- vanilla: relu((x - b_dec) W_enc + b_enc) -> standard;
- JumpReLU: relu(x W_enc + b_enc) (b_dec not subtracted), zero where <= exp(log_threshold) ->
  JumpReLU with apply_b_dec_to_input = False;
- input_unit_norm -> normalize_activations = "layer_norm" (the same standardisation).
"""

from __future__ import annotations

import logging
import math
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from plmdiff.core.errors import ConfigError, DataError
from plmdiff.sae.sources import SAE_FILES, ZYM_CHECKPOINT
from plmdiff.sae.training import load_sae

log = logging.getLogger(__name__)

_HOOK_RE = re.compile(r"blocks\.(\d+)\.hook_resid_(pre|post)$")
_ZYM_TYPES = {
    "batchtopk": "batchtopk",
    "batchtopksae": "batchtopk",
    "topk": "topk",
    "topksae": "topk",
    "vanilla": "vanilla",
    "vanillasae": "vanilla",
    "standard": "vanilla",
    "jumprelu": "jumprelu",
    "jumprelusae": "jumprelu",
}


def load_zym_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """The checkpoint dict, read without full unpickling (DataError if that is not possible)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"SAE checkpoint {path} does not exist")
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        text = str(exc)
        found = re.search(r"Unsupported global: GLOBAL ([\w.]+)", text)
        what = f"it holds a {found.group(1)} object" if found else text.splitlines()[0][:200]
        raise DataError(
            f"SAE checkpoint {path} cannot be read with torch.load(weights_only=True) ({what}); "
            "plmdiff refuses files that need full unpickling, which can run arbitrary code. "
            "Re-save it with plain dicts and tensors: torch.save({'cfg': dict(cfg), "
            "'model_state_dict': sae.state_dict(), 'thresholds': thresholds}, path)"
        ) from None
    if not isinstance(data, Mapping):
        raise DataError(
            f"SAE checkpoint {path} holds a {type(data).__name__}, expected a dict with "
            "'cfg' and 'model_state_dict'"
        )
    return dict(data)


def _tensor(
    state: Mapping[str, Any], name: str, shape: tuple[int, ...], source: str
) -> torch.Tensor:
    value = state.get(name)
    if not isinstance(value, torch.Tensor):
        raise DataError(f"{source}: model_state_dict has no tensor '{name}'")
    if tuple(value.shape) != shape:
        raise DataError(f"{source}: '{name}' has shape {tuple(value.shape)}, expected {shape}")
    return value.detach().to(torch.float32).clone()


def zym_layer(cfg: Mapping[str, Any]) -> int | None:
    """plmdiff layer of a Zym_SAEs hook point: blocks.l.hook_resid_pre is layer l, _post l + 1."""
    match = _HOOK_RE.search(str(cfg.get("hook_point", "")))
    if match is None:
        return None
    block = int(match.group(1))
    return block if match.group(2) == "pre" else block + 1


def _zym_type(cfg: Mapping[str, Any], source: str) -> str:
    raw = cfg.get("model_type", cfg.get("sae_type", "BatchTopK"))  # Zym_SAEs' own default
    key = re.sub(r"[^a-z]", "", str(raw).lower())
    if key not in _ZYM_TYPES:
        raise DataError(
            f"{source}: SAE type '{raw}' is unknown; accepted: BatchTopK, TopK, vanilla, JumpReLU"
        )
    return _ZYM_TYPES[key]


def zym_checkpoint_to_sae(checkpoint: Mapping[str, Any], *, source: str = "checkpoint") -> Any:
    """The sae-lens inference SAE that computes what the Zym_SAEs checkpoint computes."""
    from sae_lens import (
        JumpReLUSAE,
        JumpReLUSAEConfig,
        StandardSAE,
        StandardSAEConfig,
        TopKSAE,
        TopKSAEConfig,
    )

    cfg = checkpoint.get("cfg")
    state = checkpoint.get("model_state_dict")
    if not isinstance(cfg, Mapping) or not isinstance(state, Mapping):
        raise DataError(
            f"{source}: expected a Zym_SAEs checkpoint with a 'cfg' dict and a 'model_state_dict'"
        )
    if "input_unit_norm" not in cfg:
        raise DataError(
            f"{source}: cfg has no 'input_unit_norm', so the input normalisation is unknown"
        )
    w_enc = state.get("W_enc")
    if not isinstance(w_enc, torch.Tensor) or w_enc.ndim != 2:
        raise DataError(f"{source}: model_state_dict has no 2-D tensor 'W_enc'")
    d_in, d_sae = (int(s) for s in w_enc.shape)
    for key, expected in (("act_size", d_in), ("dict_size", d_sae)):
        if key in cfg and int(cfg[key]) != expected:
            raise DataError(
                f"{source}: cfg {key} = {cfg[key]} but W_enc is [{d_in}, {d_sae}] ([act_size, dict_size])"
            )
    weights = {
        "W_enc": _tensor(state, "W_enc", (d_in, d_sae), source),
        "W_dec": _tensor(state, "W_dec", (d_sae, d_in), source),
        "b_enc": _tensor(state, "b_enc", (d_sae,), source),
        "b_dec": _tensor(state, "b_dec", (d_in,), source),
    }
    kind = _zym_type(cfg, source)
    thresholds = checkpoint.get("thresholds", state.get("thresholds"))
    if kind == "batchtopk" and thresholds is None and "jumprelu.log_threshold" in state:
        # A BatchTopK SAE converted to Zym_SAEs' JumpReLU (convert_to_jumprelu), which they run
        # with use_pre_enc_bias=True: same as BatchTopK + thresholds.
        thresholds = _tensor(state, "jumprelu.log_threshold", (d_sae,), source).exp()
    common: dict[str, Any] = {
        "d_in": d_in,
        "d_sae": d_sae,
        "dtype": "float32",
        "device": "cpu",
        "normalize_activations": "layer_norm" if cfg["input_unit_norm"] else "none",
    }
    if kind == "batchtopk" and thresholds is not None:
        threshold = _tensor({"thresholds": thresholds}, "thresholds", (d_sae,), source)
        # NaN: the feature never fired while thresholds were collected; it never fires here.
        weights["threshold"] = torch.nan_to_num(threshold, nan=math.inf)
        sae: Any = JumpReLUSAE(JumpReLUSAEConfig(**common, apply_b_dec_to_input=True))
    elif kind == "jumprelu":
        log_threshold = _tensor(state, "jumprelu.log_threshold", (d_sae,), source)
        weights["threshold"] = log_threshold.exp()
        sae = JumpReLUSAE(JumpReLUSAEConfig(**common, apply_b_dec_to_input=False))
    elif kind in ("batchtopk", "topk"):
        if "top_k" not in cfg:
            raise DataError(f"{source}: cfg has no 'top_k' for a {kind} SAE")
        if kind == "batchtopk":
            log.warning(
                "%s: BatchTopK SAE without thresholds; imported as per-token TopK (k=%s)",
                source,
                cfg["top_k"],
            )
        else:
            weights["b_enc"] = torch.zeros(d_sae)  # Zym_SAEs' TopK forward has no encoder bias
        sae = TopKSAE(
            TopKSAEConfig(
                **common,
                apply_b_dec_to_input=True,
                k=int(cfg["top_k"]),
                rescale_acts_by_decoder_norm=False,
            )
        )
    else:
        sae = StandardSAE(StandardSAEConfig(**common, apply_b_dec_to_input=True))
    sae.load_state_dict(weights)
    sae.cfg.metadata.imported_from = source
    sae.cfg.metadata.imported_format = f"Zym_SAEs {kind}"
    if cfg.get("hook_point"):
        sae.cfg.metadata.hook_name = str(cfg["hook_point"])
    return sae.eval()


def import_sae(
    path: str | os.PathLike, *, layer: int | None = None, d_in: int | None = None
) -> Any:
    """Load a sae-lens directory or a Zym_SAEs checkpoint (file, or directory holding
    checkpoint_latest.pt) as a sae-lens inference SAE on CPU.

    `layer`: the plmdiff layer it is imported for; a Zym_SAEs checkpoint whose hook point names
    another layer is refused. `d_in`: the activations' width, checked against the SAE's.
    """
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"sae.base.import: '{path}' does not exist")
    if path.is_dir() and (path / SAE_FILES[0]).is_file():
        sae = load_sae(path)
        fmt = "sae-lens"
    else:
        file = path / ZYM_CHECKPOINT if path.is_dir() else path
        if path.is_dir() and not file.is_file():
            raise ConfigError(
                f"sae.base.import: directory '{path}' holds neither a sae-lens SAE "
                f"({' + '.join(SAE_FILES)}) nor a Zym_SAEs {ZYM_CHECKPOINT}"
            )
        checkpoint = load_zym_checkpoint(file)
        stored_cfg = checkpoint.get("cfg")
        cfg: Mapping[str, Any] = stored_cfg if isinstance(stored_cfg, Mapping) else {}
        trained_on = zym_layer(cfg)
        if layer is not None and trained_on is not None and trained_on != layer:
            raise ConfigError(
                f"sae.base.import: {file} was trained on {cfg['hook_point']} (plmdiff layer "
                f"{trained_on}) but is imported for layer {layer}; put '{{layer}}' in the path"
            )
        sae = zym_checkpoint_to_sae(checkpoint, source=str(file))
        fmt = "Zym_SAEs"
    if d_in is not None and sae.cfg.d_in != d_in:
        raise DataError(
            f"imported SAE {path} has d_in {sae.cfg.d_in} but the activations have d_model {d_in}"
        )
    log.info(
        "imported %s SAE %s: %s, %d -> %d, input normalisation %s",
        fmt,
        path,
        sae.cfg.architecture(),
        sae.cfg.d_in,
        sae.cfg.d_sae,
        sae.cfg.normalize_activations,
    )
    return sae
