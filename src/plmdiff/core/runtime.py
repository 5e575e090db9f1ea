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
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from plmdiff.core.errors import PlmdiffError

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


class DeviceError(PlmdiffError):
    """A job cannot use the device it was given (never a silent CPU fallback)."""


# What SLURM (and other schedulers) put in CUDA_VISIBLE_DEVICES of a job that holds no GPU.
NO_GPU_VALUES = {"", "-1", "none", "nodevfiles", "void"}
CUDA_INSTALL_HINT = (
    "install the CUDA build of torch (TORCH_BUILD=cuda scripts/setup_venv.sh, see README.md "
    "'Running on a cluster') or run with --sdm conda"
)


def gpus_granted(environ: Mapping[str, str] | None = None) -> str | None:
    """CUDA_VISIBLE_DEVICES when the scheduler gave this job GPUs, else None."""
    value = (os.environ if environ is None else environ).get("CUDA_VISIBLE_DEVICES")
    if value is None or value.strip().lower() in NO_GPU_VALUES:
        return None
    return value


def cuda_problem(torch_version: str, cuda_version: str | None, cuda_available: bool) -> str | None:
    """Why CUDA cannot be used by this torch (None: it can)."""
    if cuda_version is None:
        return f"torch {torch_version} is a CPU-only build; {CUDA_INSTALL_HINT}"
    if not cuda_available:
        return (
            f"torch {torch_version} (CUDA {cuda_version}) finds no usable GPU: check the "
            "NVIDIA driver on this node (nvidia-smi) or set device: cpu"
        )
    return None


def choose_device(spec: str, granted: str | None, problem: str | None) -> str:
    """The device type for `spec` ('auto', 'cpu', 'cuda', 'cuda:N'), or DeviceError.

    'auto' means CUDA whenever the job was given GPUs (CUDA_VISIBLE_DEVICES) or CUDA works,
    else CPU. A job that holds a GPU but cannot use it fails at once: on a cluster a silent
    CPU fallback runs out of time and is retried at 2x and 4x the walltime.
    """
    if spec == "cpu":
        return "cpu"
    wants_cuda = spec.startswith("cuda") or granted is not None or problem is None
    if not wants_cuda:
        return "cpu"
    if problem is not None:
        reason = (
            f"device: '{spec}'"
            if spec != "auto"
            else f"this job was given GPU(s) (CUDA_VISIBLE_DEVICES={granted})"
        )
        raise DeviceError(f"{reason} but {problem}")
    return "cuda" if spec == "auto" else spec


def resolve_device(spec: str = "auto") -> Any:
    """The torch device for `spec`, logged; DeviceError where a GPU is expected but unusable."""
    import torch

    granted = gpus_granted()
    problem = cuda_problem(torch.__version__, torch.version.cuda, torch.cuda.is_available())
    device = torch.device(choose_device(spec, granted, problem))
    visible = granted or os.environ.get("CUDA_VISIBLE_DEVICES", "<unset>")
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        name = torch.cuda.get_device_name(index)
        log.info("device: %s (%s), CUDA_VISIBLE_DEVICES=%s", device, name, visible)
    else:
        log.info(
            "device: cpu (%d threads), CUDA_VISIBLE_DEVICES=%s", torch.get_num_threads(), visible
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
