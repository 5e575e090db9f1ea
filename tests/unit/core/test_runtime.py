"""atomic_path: outputs appear under their final name only when complete."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from plmdiff.core.runtime import atomic_path, write_json

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
