"""The models stage's rule entry function: `check_checkpoint` (rules/checkpoints.smk)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from plmdiff.core.runtime import write_json
from plmdiff.models.checkpoints import CheckpointRecord, inspect_checkpoint
from plmdiff.models.text import PromptFormat


def check_checkpoint(
    checkpoint_dir: str | os.PathLike,
    model: str,
    prompt_section: Mapping[str, Any],
    out_path: str | os.PathLike,
    *,
    allow_pickle: bool,
) -> CheckpointRecord:
    """Verify one checkpoint (safe, whole, a known decoder) and write its record."""
    record = inspect_checkpoint(
        checkpoint_dir, model, PromptFormat.from_section(prompt_section), allow_pickle=allow_pickle
    )
    write_json(out_path, record.to_json())
    return record
