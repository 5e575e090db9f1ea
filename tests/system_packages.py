"""Debian packages that some tests need (SLURM, MMseqs2), installed on first use.

CI runs on a clean machine as root; a developer without root gets a skip that says what to install.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import time
from collections.abc import Iterable
from pathlib import Path

_seconds_spent: list[float] = []  # apt-get time in this process (reported by the SLURM test)


class PackagesUnavailable(RuntimeError):
    """The packages are missing and cannot be installed here (not root, or no apt-get)."""


def found(command: str) -> bool:
    return bool(shutil.which(command)) or Path("/usr/sbin", command).exists()


def ensure_apt_packages(packages: Iterable[str], commands: Iterable[str]) -> float:
    """Install `packages` with apt-get unless every one of `commands` exists; returns the
    seconds apt-get has taken in this process so far."""
    packages, commands = tuple(packages), tuple(commands)
    if all(found(c) for c in commands):
        return sum(_seconds_spent)
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        raise PackagesUnavailable(
            f"{', '.join(c for c in commands if not found(c))} not installed and cannot be "
            f"installed here (needs root and apt-get): apt-get install -y {' '.join(packages)}"
        )
    start = time.monotonic()
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = ["apt-get", "install", "-y", "-q", *packages]
    for cmd in (["apt-get", "update", "-q"], install):
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=900)
        if proc.returncode != 0:
            raise RuntimeError(f"{shlex.join(cmd)} failed:\n{proc.stdout[-2000:]}\n{proc.stderr}")
    _seconds_spent.append(time.monotonic() - start)
    missing = [c for c in commands if not found(c)]
    if missing:
        raise PackagesUnavailable(f"{', '.join(missing)} not found after installing {packages}")
    return sum(_seconds_spent)
