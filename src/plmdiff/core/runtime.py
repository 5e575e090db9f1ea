"""Process-level helpers shared by the rule scripts: seeds, devices, logging, atomic writes."""

from __future__ import annotations

import contextlib
import glob
import hashlib
import json
import logging
import os
import random
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

log = logging.getLogger("plmdiff")


def derive_seed(seed: int, *parts: object) -> int:
    """A seed that depends only on its parts, stable across processes and Python versions.

    Python's hash() is salted per process, so it cannot be used for reproducible sharding.
    """
    text = "\x1f".join([str(seed), *map(str, parts)])
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:4], "little")


def seed_everything(seed: int) -> None:
    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def resolve_device(spec: str = "auto") -> Any:
    """'auto' picks CUDA when present, else CPU, and logs the choice."""
    import torch

    if spec == "auto":
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    else:
        device = torch.device(spec)
        if device.type == "cuda" and not torch.cuda.is_available():
            raise RuntimeError(f"device: '{spec}' was asked for but CUDA is not available here")
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        name = torch.cuda.get_device_name(index)
        visible = os.environ.get("CUDA_VISIBLE_DEVICES", "<unset>")
        log.info("device: %s (%s), CUDA_VISIBLE_DEVICES=%s", device, name, visible)
    else:
        log.info(
            "device: cpu (%d threads), CUDA_VISIBLE_DEVICES=%s",
            torch.get_num_threads(),
            os.environ.get("CUDA_VISIBLE_DEVICES", "<unset>"),
        )
    return device


def setup_logging(log_file: str | os.PathLike | None, level: int = logging.INFO) -> None:
    """Send logging, warnings and stderr (tqdm progress bars) to the rule's log file."""
    handlers: list[logging.Handler] = []
    if log_file:
        Path(log_file).parent.mkdir(parents=True, exist_ok=True)
        stream = open(log_file, "a", buffering=1)  # noqa: SIM115 - lives as long as the process
        sys.stderr = stream
        handlers.append(logging.StreamHandler(stream))
    else:
        handlers.append(logging.StreamHandler(sys.stderr))
    logging.basicConfig(
        level=level,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        handlers=handlers,
        force=True,
    )
    logging.captureWarnings(True)


def _tmp_sibling(path: Path) -> Path:
    return path.with_name(f".{path.name}.tmp-{os.getpid()}")


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary sibling of `path` and rename it to `path` only on success.

    A killed or failed writer leaves no file under the final name, so neither Snakemake nor
    a reader mistakes a partial output for a finished one. Works for files and directories.
    """
    final = Path(path)
    final.parent.mkdir(parents=True, exist_ok=True)
    # Temporaries that a killed writer of this same output left behind (SIGKILL skips the
    # cleanup below): Snakemake never runs two jobs for one output, so they are dead.
    for stale in final.parent.glob(f".{glob.escape(final.name)}.tmp-*"):
        with contextlib.suppress(OSError):
            _remove(stale)
    tmp = _tmp_sibling(final)
    try:
        yield tmp
        if final.is_dir() and not final.is_symlink():
            shutil.rmtree(final)
        os.replace(tmp, final)
    except BaseException:
        _remove(tmp)
        raise


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


def save_figure(fig: Any, *paths: str | os.PathLike, dpi: int = 150, **savefig: Any) -> None:
    """Write a matplotlib figure to each path (format from the suffix, PNG without one), each
    through atomic_path, then close it: figures are outputs like any other."""
    import matplotlib.pyplot as plt

    for path in paths:
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format=Path(path).suffix.lstrip(".") or "png", dpi=dpi, **savefig)
    plt.close(fig)


def write_json(path: str | os.PathLike, data: Any) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2, sort_keys=False) + "\n")


def read_json(path: str | os.PathLike) -> Any:
    return json.loads(Path(path).read_text())
