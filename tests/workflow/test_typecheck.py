"""The type checker of `make lint` runs clean over the library (pyproject.toml [tool.mypy])."""

from __future__ import annotations

import subprocess

import pytest

from tests.conftest import BIN, REPO

pytestmark = pytest.mark.slow


def test_mypy_is_clean() -> None:
    proc = subprocess.run(
        [str(BIN / "mypy"), "--no-color-output"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stdout[-5000:] + proc.stderr[-2000:]
