"""Checkpoint intake: what a checkpoint directory holds, whether it is safe and whole, its fingerprint.

`inspect_checkpoint` is the `check_checkpoint` rule's logic. Its record
(`results/checkpoints/{model}.json`) is an input of everything downstream, so a changed
checkpoint reruns exactly its dependants. Weights are read with safetensors; pickled weights are
refused unless the config says `allow_pickle: true`; `trust_remote_code` is never set.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, cast

from plmdiff.core.errors import CheckpointError, DataError
from plmdiff.models.anatomy import ConfigShape, decoder_anatomy
from plmdiff.models.text import (
    END,
    EOS,
    PAD,
    SEP,
    START,
    PromptFormat,
    SpecialIds,
    residue_tokens,
)

log = logging.getLogger(__name__)

CONFIG_FILE = "config.json"
SAFETENSORS_PATTERNS = ("*.safetensors", "model.safetensors.index.json")
PICKLE_PATTERNS = ("*.bin", "*.pt", "*.pth", "pytorch_model.bin.index.json")
TOKENIZER_FILES = (
    "tokenizer.json",
    "vocab.json",
    "merges.txt",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
)
# Every canonical residue, alone and in pairs, so that a BPE tokenizer merges some of them.
RESIDUE_PROBE = "ACDEFGHIKLMNPQRSTVWY" + "AACCDDEEFFGGHHIIKKLLMMNNPPQQRRSSTTVVWWYY"
# Files that do not change what the model computes (training state, logs) are not fingerprinted.
RECORD_VERSION = 1


@dataclass
class CheckpointRecord:
    """What `check_checkpoint` records about one model's checkpoint."""

    model: str
    path: str
    architecture: str
    model_type: str
    n_layers: int
    d_model: int
    n_heads: int
    n_positions: int
    vocab_size: int
    tokenizer_vocab_size: int
    special_tokens: dict[str, int | None]
    weights_format: str
    n_parameters: int
    fingerprint: str
    files: dict[str, dict[str, Any]] = field(default_factory=dict)
    record_version: int = RECORD_VERSION
    # What the tokenizer does (tokenizer_fingerprint); None in records written before it existed.
    tokenizer_fingerprint: str | None = None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> CheckpointRecord:
        return cls(**data)

    @classmethod
    def read(cls, path: str | os.PathLike) -> CheckpointRecord:
        return cls.from_json(json.loads(Path(path).read_text()))

    @property
    def special_ids(self) -> SpecialIds:
        return SpecialIds.from_record(self.to_json())


def _glob(directory: Path, patterns: Iterable[str]) -> list[Path]:
    found: set[Path] = set()
    for pattern in patterns:
        found.update(p for p in directory.glob(pattern) if p.is_file())
    return sorted(found)


def weight_files(directory: Path, allow_pickle: bool) -> tuple[str, list[Path]]:
    """('safetensors' | 'pickle', files) or a CheckpointError naming what is there."""
    safe = _glob(directory, SAFETENSORS_PATTERNS)
    if safe:
        return "safetensors", safe
    pickled = _glob(directory, PICKLE_PATTERNS)
    if pickled and not allow_pickle:
        names = ", ".join(p.name for p in pickled)
        raise CheckpointError(
            f"checkpoint {directory} has only pickled weights ({names}); plmdiff loads safetensors. "
            "Convert it (model.save_pretrained(dir, safe_serialization=True)) or set "
            "'allow_pickle: true' in the config if you trust the file (unpickling can run code)"
        )
    if pickled:
        return "pickle", pickled
    raise CheckpointError(
        f"checkpoint {directory} has no weights: expected model.safetensors "
        "(or sharded *.safetensors with model.safetensors.index.json)"
    )


def checkpoint_files(directory: str | os.PathLike, allow_pickle: bool = False) -> list[Path]:
    """The files that define a checkpoint: config, weights, tokenizer (the fingerprinted set)."""
    directory = Path(directory)
    files = [directory / CONFIG_FILE] if (directory / CONFIG_FILE).is_file() else []
    with contextlib.suppress(CheckpointError):  # intake reports missing weights, not this listing
        files += weight_files(directory, allow_pickle)[1]
    files += [directory / name for name in TOKENIZER_FILES if (directory / name).is_file()]
    return files


def _sha256(path: Path, chunk: int = 1 << 22) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def fingerprint(files: Iterable[Path], root: Path) -> tuple[str, dict[str, dict[str, Any]]]:
    """Hash of the files' names and contents, and each file's own hash and size."""
    total = hashlib.sha256()
    per_file: dict[str, dict[str, Any]] = {}
    for path in sorted(files):
        name = str(path.relative_to(root))
        digest = _sha256(path)
        per_file[name] = {"sha256": digest, "bytes": path.stat().st_size}
        total.update(name.encode() + b"\0" + digest.encode() + b"\0")
    return total.hexdigest(), per_file


def _read_config(directory: Path) -> dict[str, Any]:
    path = directory / CONFIG_FILE
    if not path.is_file():
        raise CheckpointError(
            f"checkpoint {directory} has no {CONFIG_FILE}; is it a Hugging Face checkpoint directory?"
        )
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{path} is not valid JSON ({exc})") from None


def _verify_safetensors(files: list[Path]) -> None:
    """Open every safetensors file and read every tensor: catches truncation and bad headers."""
    from safetensors import safe_open

    for path in files:
        if path.suffix != ".safetensors":
            continue
        try:
            with safe_open(str(path), framework="pt") as handle:
                for key in handle.keys():  # noqa: SIM118 - safe_open has no __iter__
                    handle.get_tensor(key)
        except Exception as exc:  # safetensors raises its own error types
            raise CheckpointError(
                f"weight file {path} is corrupt or truncated ({type(exc).__name__}: {exc}); "
                "re-copy or re-save the checkpoint"
            ) from None


def load_tokenizer(directory: str | os.PathLike) -> Any:
    from transformers import AutoTokenizer

    directory = Path(directory)
    present = [name for name in TOKENIZER_FILES if (directory / name).is_file()]
    if not any(name in present for name in ("tokenizer.json", "vocab.json")):
        raise CheckpointError(
            f"checkpoint {directory} has no tokenizer: expected tokenizer.json (or vocab.json) "
            "next to config.json, as save_pretrained writes them"
        )
    try:
        return AutoTokenizer.from_pretrained(
            str(directory), trust_remote_code=False, local_files_only=True
        )
    except Exception as exc:
        raise CheckpointError(
            f"tokenizer in {directory} cannot be loaded ({type(exc).__name__}: {exc})"
        ) from None


def tokenizer_fingerprint(tokenizer: Any) -> str:
    """SHA-256 of what decides a tokenizer's token ids: its vocabulary and, for a fast
    tokenizer, its model (BPE merges included), normalizer and pre-tokenizer. Files that
    differ only in padding, truncation or a recorded path give the same fingerprint."""
    described: dict[str, Any] = {"vocab": sorted(tokenizer.get_vocab().items())}
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        state = json.loads(backend.to_str())
        described.update({k: state.get(k) for k in ("model", "normalizer", "pre_tokenizer")})
    text = json.dumps(described, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


def check_residue_tokenizer(tokenizer: Any, directory: Path) -> None:
    """Fail at intake, not hours later in extraction, on a tokenizer whose tokens cannot be
    mapped to residues (plmdiff.models.text.residue_tokens)."""
    try:
        residue_tokens(tokenizer, RESIDUE_PROBE, f"tokenizer in {directory}")
    except DataError as exc:
        raise CheckpointError(str(exc)) from None


def special_token_ids(tokenizer: Any, fmt: PromptFormat) -> dict[str, int | None]:
    vocab = tokenizer.get_vocab()

    def lookup(token: str) -> int | None:
        return vocab.get(token)

    ids = {
        "pad": tokenizer.pad_token_id if tokenizer.pad_token_id is not None else lookup(PAD),
        "eos": tokenizer.eos_token_id if tokenizer.eos_token_id is not None else lookup(EOS),
        "bos": tokenizer.bos_token_id,
        "sep": lookup(SEP),
        "start": lookup(START),
        "end": lookup(END),
    }
    if ids["eos"] is None:
        raise CheckpointError(
            "the tokenizer has no end-of-text token (eos_token / '<|endoftext|>')"
        )
    if ids["pad"] is None:
        ids["pad"] = ids["eos"]
    if fmt.format == "zymctrl":
        missing = [
            tok for key, tok in (("sep", SEP), ("start", START), ("end", END)) if ids[key] is None
        ]
        if missing:
            raise CheckpointError(
                f"the tokenizer lacks {', '.join(missing)}, which prompt.format 'zymctrl' needs; "
                "use prompt.format 'plain' for a model without ZymCTRL's control tokens"
            )
    return ids


def load_model(
    directory: str | os.PathLike,
    *,
    allow_pickle: bool = False,
    device: Any = "cpu",
    dtype: Any = None,
    device_map: Any = None,
) -> Any:
    """Load a causal LM for inference, refusing missing weights instead of initialising them."""
    import torch
    from transformers import AutoModelForCausalLM, PreTrainedModel

    directory = Path(directory)
    fmt, _ = weight_files(directory, allow_pickle)
    kwargs: dict[str, Any] = {
        "trust_remote_code": False,
        "local_files_only": True,
        "use_safetensors": fmt == "safetensors",
        "dtype": dtype or torch.float32,
    }
    if device_map is not None:
        kwargs["device_map"] = device_map
    try:
        # With output_loading_info=True it returns (model, loading info); the stubs know only
        # the model.
        model, info = cast(
            tuple[PreTrainedModel, dict[str, list[Any]]],
            AutoModelForCausalLM.from_pretrained(
                str(directory), output_loading_info=True, **kwargs
            ),
        )
    except Exception as exc:
        raise CheckpointError(
            f"weights in {directory} cannot be loaded ({type(exc).__name__}: {exc})"
        ) from None
    missing = [k for k in info.get("missing_keys", []) if not k.endswith("lm_head.weight")]
    if missing or info.get("mismatched_keys"):
        shown = ", ".join(list(missing)[:5]) or str(info.get("mismatched_keys"))[:200]
        raise CheckpointError(
            f"weights in {directory} do not match its config.json: missing or mismatched {shown}"
        )
    if device_map is None:
        model = model.to(device)
    return model.eval()


def inspect_checkpoint(
    directory: str | os.PathLike,
    model_name: str,
    fmt: PromptFormat,
    allow_pickle: bool = False,
) -> CheckpointRecord:
    """Check a checkpoint directory thoroughly and describe it; raise CheckpointError if unusable."""
    import torch

    directory = Path(directory)
    if not directory.is_dir():
        raise CheckpointError(
            f"checkpoint directory {directory} (model '{model_name}') does not exist"
        )
    config = _read_config(directory)
    weights_format, weights = weight_files(directory, allow_pickle)
    if weights_format == "safetensors":
        _verify_safetensors(weights)
    tokenizer = load_tokenizer(directory)
    special = special_token_ids(tokenizer, fmt)
    check_residue_tokenizer(tokenizer, directory)

    model = load_model(directory, allow_pickle=allow_pickle)
    cfg = model.config
    bad = [name for name, p in model.named_parameters() if not torch.isfinite(p).all()]
    if bad:
        raise CheckpointError(f"weights in {directory} hold NaN or Inf values (first: {bad[0]})")
    shape = ConfigShape.of(cfg)
    decoder_anatomy(model)  # fail at intake, not after hours of sampling, on an unknown decoder
    tok_vocab = len(tokenizer.get_vocab())
    if tok_vocab > cfg.vocab_size:
        raise CheckpointError(
            f"tokenizer in {directory} has {tok_vocab} tokens but config.json vocab_size is {cfg.vocab_size}"
        )
    digest, per_file = fingerprint(checkpoint_files(directory, allow_pickle), directory)
    architectures = config.get("architectures") or [type(model).__name__]
    record = CheckpointRecord(
        model=model_name,
        path=str(directory.resolve()),
        architecture=architectures[0],
        model_type=cfg.model_type,
        n_layers=shape.n_layers,
        d_model=shape.d_model,
        n_heads=shape.n_heads,
        n_positions=shape.n_positions,
        vocab_size=int(cfg.vocab_size),
        tokenizer_vocab_size=tok_vocab,
        special_tokens=special,
        weights_format=weights_format,
        n_parameters=int(sum(p.numel() for p in model.parameters())),
        fingerprint=digest,
        files=per_file,
        tokenizer_fingerprint=tokenizer_fingerprint(tokenizer),
    )
    log.info(
        "checkpoint %s: %s, %d layers x %d, %d parameters, fingerprint %s",
        model_name,
        record.architecture,
        record.n_layers,
        record.d_model,
        record.n_parameters,
        digest[:12],
    )
    return record
