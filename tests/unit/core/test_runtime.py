"""atomic_path: outputs appear under their final name only when complete."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from plmdiff.core.runtime import (
    DeviceError,
    atomic_path,
    choose_device,
    cuda_problem,
    gpus_granted,
    resolve_device,
    write_json,
)

KILLED_WRITER = """
import os, signal, sys
from plmdiff.core.runtime import atomic_path
with atomic_path(sys.argv[1]) as tmp:
    tmp.write_text("half")
    os.kill(os.getpid(), signal.SIGKILL)
"""


def test_file_appears_only_on_success(tmp_path):
    target = tmp_path / "sub" / "out.json"
    write_json(target, {"a": 1})
    assert target.read_text().strip().startswith("{")
    assert sorted(p.name for p in target.parent.iterdir()) == ["out.json"]


def test_failed_writer_leaves_nothing_and_keeps_the_old_output(tmp_path):
    target = tmp_path / "out.txt"
    target.write_text("old")
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text("new but broken")
        raise RuntimeError("boom")
    assert target.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.txt"]


def test_directory_output_replaces_the_old_one(tmp_path):
    target = tmp_path / "sae"
    target.mkdir()
    (target / "stale.bin").write_text("x")
    with atomic_path(target) as tmp:
        tmp.mkdir()
        (tmp / "cfg.json").write_text("{}")
    assert sorted(p.name for p in target.iterdir()) == ["cfg.json"]


def test_temporary_of_a_killed_writer_is_cleared_by_the_next_write(tmp_path):
    target = tmp_path / "out[1].txt"  # glob metacharacters in the name must not matter
    killed = subprocess.run([sys.executable, "-c", KILLED_WRITER, str(target)], check=False)
    assert killed.returncode == -9
    leftovers = [p.name for p in tmp_path.iterdir()]
    assert not target.exists() and len(leftovers) == 1 and ".tmp-" in leftovers[0]
    (tmp_path / ".other.txt.tmp-1").write_text("another output's temporary")

    with atomic_path(target) as tmp:
        tmp.write_text("done")
    assert target.read_text() == "done"
    assert sorted(p.name for p in tmp_path.iterdir()) == [".other.txt.tmp-1", "out[1].txt"]


def test_symlinked_directory_is_replaced_not_followed(tmp_path: Path):
    real = tmp_path / "real"
    real.mkdir()
    (real / "keep").write_text("k")
    link = tmp_path / "link"
    link.symlink_to(real)
    with atomic_path(link) as tmp:
        tmp.write_text("file now")
    assert link.read_text() == "file now" and (real / "keep").exists()


def test_save_figure_writes_each_format_and_closes_the_figure(tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from plmdiff.core.runtime import save_figure

    fig, ax = plt.subplots()
    ax.plot([0, 1], [1, 0])
    save_figure(fig, tmp_path / "a.png", tmp_path / "a.svg", tmp_path / "noext", dpi=50)
    assert (tmp_path / "a.png").read_bytes().startswith(b"\x89PNG")
    assert b"<svg" in (tmp_path / "a.svg").read_bytes()[:500]
    assert (tmp_path / "noext").read_bytes().startswith(b"\x89PNG")
    assert not plt.fignum_exists(fig.number)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.png", "a.svg", "noext"]


# ----------------------------------------------------------------------------- devices

CPU_BUILD = cuda_problem("2.13.0+cpu", None, False)


@pytest.mark.parametrize("value", [None, "", "-1", "NoDevFiles"])
def test_no_gpus_granted(value):
    environ = {} if value is None else {"CUDA_VISIBLE_DEVICES": value}
    assert gpus_granted(environ) is None


def test_gpus_granted():
    assert gpus_granted({"CUDA_VISIBLE_DEVICES": "0,1"}) == "0,1"


def test_auto_without_gpus_and_cpu_torch_is_cpu():
    assert choose_device("auto", None, CPU_BUILD) == "cpu"


def test_auto_with_working_cuda_is_cuda():
    assert choose_device("auto", "0", None) == "cuda"
    assert choose_device("cuda:1", None, None) == "cuda:1"


def test_gpu_job_with_cpu_torch_fails_with_one_line_naming_the_fix():
    """A job SLURM gave a GPU never falls back to the CPU (it would run out of time)."""
    with pytest.raises(DeviceError) as err:
        choose_device("auto", "0", CPU_BUILD)
    message = str(err.value)
    assert "\n" not in message
    assert "CUDA_VISIBLE_DEVICES=0" in message and "CPU-only build" in message
    assert "TORCH_BUILD=cuda scripts/setup_venv.sh" in message


def test_explicit_cuda_with_cpu_torch_fails():
    with pytest.raises(DeviceError, match=r"device: 'cuda' but torch 2.13.0\+cpu"):
        choose_device("cuda", None, CPU_BUILD)


def test_cuda_torch_without_a_usable_gpu_fails_in_a_gpu_job():
    problem = cuda_problem("2.13.0", "12.8", False)
    with pytest.raises(DeviceError, match="finds no usable GPU"):
        choose_device("auto", "0", problem)


def test_cpu_is_always_allowed():
    assert choose_device("cpu", "0", CPU_BUILD) == "cpu"


def test_resolve_device_in_a_gpu_job_with_this_torch(monkeypatch):
    """The real torch of this environment: a CPU build must refuse a granted GPU."""
    import torch

    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0")
    if torch.cuda.is_available():
        assert resolve_device("auto").type == "cuda"
    else:
        with pytest.raises(DeviceError):
            resolve_device("auto")
