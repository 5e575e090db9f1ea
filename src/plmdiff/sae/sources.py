"""Where an SAE's files are, without loading one (the Snakefile reads these while it builds
the DAG, so this module must not import torch or sae-lens: that alone was 2 s of every dry run).
"""

from __future__ import annotations

import os
from pathlib import Path

from plmdiff.core.errors import ConfigError

# A sae-lens SAE directory (SAE.save_model / SAE.load_from_disk).
SAE_FILES = ("cfg.json", "sae_weights.safetensors")
# The study authors' SAE checkpoint file (Zym_SAEs).
ZYM_CHECKPOINT = "checkpoint_latest.pt"


def resolve_import_path(template: str, layer: int) -> Path:
    """sae.base.import with '{layer}' replaced: '{layer}' -> 5, '{layer:02d}' -> 05."""
    try:
        return Path(template.format(layer=int(layer)))
    except (KeyError, IndexError, ValueError) as exc:
        raise ConfigError(
            f"sae.base.import = '{template}': only '{{layer}}' (or e.g. '{{layer:02d}}') may "
            f"appear in braces ({exc})"
        ) from None


def import_source_files(path: str | os.PathLike) -> list[Path]:
    """The files that define an import source (for Snakemake inputs): the path itself if it is
    not a directory, else the sae-lens files or the Zym_SAEs checkpoint in it."""
    path = Path(path)
    if path.is_dir():
        if (path / ZYM_CHECKPOINT).is_file() and not (path / SAE_FILES[0]).is_file():
            return [path / ZYM_CHECKPOINT]
        return [path / name for name in SAE_FILES]
    return [path]
