"""Checkpoint intake: a good checkpoint is described, every bad one gets a clear error."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from plmdiff.core.errors import CheckpointError
from plmdiff.models.checkpoints import CheckpointRecord, inspect_checkpoint, load_model
from plmdiff.models.text import PromptFormat
from plmdiff.testing.checkpoints import PLAIN_FORMAT, ZYMCTRL_FORMAT, make_tiny_plain_checkpoint


@pytest.fixture
def ckpt(tiny_checkpoints, tmp_path) -> Path:
    dst = tmp_path / "ckpt"
    shutil.copytree(tiny_checkpoints["r0"], dst)
    return dst


def test_record_describes_checkpoint(ckpt):
    record = inspect_checkpoint(ckpt, "r0", ZYMCTRL_FORMAT)
    assert record.architecture == "GPT2LMHeadModel"
    assert (record.n_layers, record.d_model, record.vocab_size) == (2, 32, 458)
    assert record.special_tokens == {"pad": 0, "eos": 1, "bos": 1, "sep": 2, "start": 3, "end": 4}
    assert record.weights_format == "safetensors"
    assert set(record.files) >= {"config.json", "model.safetensors", "tokenizer.json"}
    again = CheckpointRecord.from_json(json.loads(json.dumps(record.to_json())))
    assert again == record


def test_fingerprint_changes_with_weights_only(ckpt, tmp_path):
    before = inspect_checkpoint(ckpt, "r0", ZYMCTRL_FORMAT).fingerprint
    (ckpt / "trainer_state.json").write_text("{}")  # not part of what the model computes
    assert inspect_checkpoint(ckpt, "r0", ZYMCTRL_FORMAT).fingerprint == before
    tensors = load_file(ckpt / "model.safetensors")
    key = next(iter(tensors))
    tensors[key] = tensors[key] + 1e-3
    save_file(tensors, ckpt / "model.safetensors", metadata={"format": "pt"})
    assert inspect_checkpoint(ckpt, "r0", ZYMCTRL_FORMAT).fingerprint != before


def test_truncated_weights(ckpt):
    path = ckpt / "model.safetensors"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=r"model.safetensors is corrupt or truncated"):
        inspect_checkpoint(ckpt, "r0", ZYMCTRL_FORMAT)


def test_corrupt_header(ckpt):
    path = ckpt / "model.safetensors"
    data = bytearray(path.read_bytes())
    data[8:40] = b"x" * 32
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match=r"corrupt or truncated"):
        inspect_checkpoint(ckpt, "r0", ZYMCTRL_FORMAT)


def test_nan_weights(ckpt):
    tensors = load_file(ckpt / "model.safetensors")
    key = next(k for k in tensors if k.endswith("attn.c_attn.weight"))
    tensors[key][0, 0] = float("nan")
    save_file(tensors, ckpt / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(CheckpointError, match=r"NaN or Inf"):
        inspect_checkpoint(ckpt, "r0", ZYMCTRL_FORMAT)


def test_missing_tensor_is_not_silently_initialised(ckpt):
    tensors = load_file(ckpt / "model.safetensors")
    key = next(k for k in tensors if "h.1.mlp" in k)
    del tensors[key]
    save_file(tensors, ckpt / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(CheckpointError, match=r"do not match its config.json"):
        inspect_checkpoint(ckpt, "r0", ZYMCTRL_FORMAT)


def test_missing_tokenizer(ckpt):
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (ckpt / name).unlink()
    with pytest.raises(CheckpointError, match=r"has no tokenizer"):
        inspect_checkpoint(ckpt, "r0", ZYMCTRL_FORMAT)


def test_missing_config(ckpt):
    (ckpt / "config.json").unlink()
    with pytest.raises(CheckpointError, match=r"has no config.json"):
        inspect_checkpoint(ckpt, "r0", ZYMCTRL_FORMAT)


def test_missing_directory(tmp_path):
    with pytest.raises(CheckpointError, match=r"does not exist"):
        inspect_checkpoint(tmp_path / "nope", "r0", ZYMCTRL_FORMAT)


def _make_pickle_only(ckpt: Path) -> None:
    tensors = load_file(ckpt / "model.safetensors")
    torch.save(tensors, ckpt / "pytorch_model.bin")
    (ckpt / "model.safetensors").unlink()


def test_pickle_only_is_refused(ckpt):
    _make_pickle_only(ckpt)
    with pytest.raises(
        CheckpointError, match=r"only pickled weights \(pytorch_model.bin\).*allow_pickle: true"
    ):
        inspect_checkpoint(ckpt, "r0", ZYMCTRL_FORMAT)


def test_pickle_accepted_when_allowed(ckpt, tiny_checkpoints):
    _make_pickle_only(ckpt)
    record = inspect_checkpoint(ckpt, "r0", ZYMCTRL_FORMAT, allow_pickle=True)
    assert record.weights_format == "pickle"
    ids = torch.tensor([[10, 431, 8, 2, 3, 443]])
    a = load_model(ckpt, allow_pickle=True)(ids).logits
    b = load_model(tiny_checkpoints["r0"])(ids).logits
    torch.testing.assert_close(a, b)


def test_zymctrl_format_needs_control_tokens(ckpt):
    tok = json.loads((ckpt / "tokenizer.json").read_text())
    tok["added_tokens"] = [t for t in tok["added_tokens"] if t["content"] != "<sep>"]
    tok["model"]["vocab"].pop("<sep>")
    (ckpt / "tokenizer.json").write_text(json.dumps(tok))
    cfg = json.loads((ckpt / "tokenizer_config.json").read_text())
    cfg["extra_special_tokens"] = ["<start>", "<end>"]
    (ckpt / "tokenizer_config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match=r"lacks <sep>.*prompt.format 'plain'"):
        inspect_checkpoint(ckpt, "r0", ZYMCTRL_FORMAT)
    record = inspect_checkpoint(ckpt, "r0", PromptFormat("plain", ""))
    assert record.special_tokens["sep"] is None


@pytest.mark.parametrize("family", ["llama", "gpt_neox", "opt"])
def test_plain_checkpoints_of_other_families_pass_intake(tmp_path, family):
    """The builders' checkpoints hold their tokenizer's BOS, EOS and PAD, as intake reads them."""
    ckpt = make_tiny_plain_checkpoint(tmp_path / family, family, train_steps=0)
    record = inspect_checkpoint(ckpt, "r0", PLAIN_FORMAT)
    assert record.model_type == family and record.n_layers == 2 and record.d_model == 32
    assert record.weights_format == "safetensors" and record.vocab_size == 29
    assert record.special_tokens == {
        "pad": 0,
        "eos": 2,
        "bos": 1,
        "sep": None,
        "start": None,
        "end": None,
    }
    with pytest.raises(CheckpointError, match=r"lacks <sep>, <start>, <end>"):
        inspect_checkpoint(ckpt, "r0", ZYMCTRL_FORMAT)
