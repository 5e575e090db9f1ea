"""Shared fixtures: tiny real checkpoints in the ZymCTRL layout and a Snakemake runner."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from plmdiff.testing.checkpoints import make_tiny_checkpoint
from tests.system_packages import PackagesUnavailable, ensure_apt_packages

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
TINY_CONFIG = REPO / "tests" / "workflow" / "tiny.yaml"
BIN = Path(sys.executable).parent


def pytest_sessionstart(session: pytest.Session) -> None:
    """MMseqs2 clusters the sequences before the probes' folds; on a clean CI machine (root,
    apt-get) install it so that the clustering tests and the tiny run use it, not the fallback."""
    try:
        ensure_apt_packages(["mmseqs2"], ["mmseqs"])
    except (PackagesUnavailable, RuntimeError) as exc:
        first_line = str(exc).splitlines()[0]
        print(f"MMseqs2 unavailable, its tests skip: {first_line}", file=sys.stderr)


@pytest.fixture(scope="session")
def tiny_checkpoints(tmp_path_factory) -> dict[str, Path]:
    """Three tiny GPT-2 checkpoints (base r0 and rounds r1, r2) that differ in training.

    Built once per session; tests that modify a checkpoint must copy it first.
    """
    root = tmp_path_factory.mktemp("checkpoints")
    return {
        "r0": make_tiny_checkpoint(root / "output_iteration0", seed=0, train_steps=60),
        "r1": make_tiny_checkpoint(root / "output_iteration1", seed=1, train_steps=80),
        "r2": make_tiny_checkpoint(root / "output_iteration2", seed=2, train_steps=100),
    }


def write_config(path: Path, config: dict) -> Path:
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def tiny_config(checkpoints: dict[str, Path], **overrides) -> dict:
    """The tiny workflow config pointing at `checkpoints`, with top-level overrides."""
    config = yaml.safe_load(TINY_CONFIG.read_text())
    config["models"] = [
        {"name": name, "checkpoint": str(path)} for name, path in checkpoints.items()
    ]
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(config.get(key), dict):
            config[key] = {**config[key], **value}
        else:
            config[key] = value
    return config


# A local run on the 2 cores CI has, one thread per job: the tiny jobs spend most of their time
# starting Python and loading torch on one core, so two one-thread jobs side by side beat one
# job on both cores (as `make demo`, BENCHMARKS.md "make demo").
LOCAL_CORES = ("--cores", "2", "--max-threads", "1")


def run_snakemake(
    workdir: Path, configfile: Path | None, *args: str, check: bool = True, timeout: int = 900
) -> subprocess.CompletedProcess:
    """Run the repository's workflow in `workdir` (results land there), as a user would."""
    cmd = [
        str(BIN / "snakemake"),
        "--snakefile",
        str(REPO / "Snakefile"),
        "--directory",
        str(workdir),
        *(["--configfile", str(configfile)] if configfile else []),
        *args,
    ]
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}
    proc = subprocess.run(
        cmd, capture_output=True, text=True, env=env, timeout=timeout, cwd=workdir
    )
    if check and proc.returncode != 0:
        raise AssertionError(
            f"snakemake {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout[-4000:]}\n{proc.stderr[-8000:]}"
        )
    return proc


@pytest.fixture(scope="session")
def tiny_run(tiny_checkpoints, tmp_path_factory) -> Path:
    """The tiny workflow run for real, once per session; stage tests read its outputs."""
    workdir = tmp_path_factory.mktemp("tiny_run")
    configfile = write_config(workdir / "config.yaml", tiny_config(tiny_checkpoints))
    run_snakemake(workdir, configfile, *LOCAL_CORES)
    return workdir


def copy_checkpoint(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


@pytest.fixture(scope="session")
def local_slurm(tmp_path_factory):
    """A real single-node SLURM on loopback (tests/slurm/cluster.py), shared by the slurm tests.

    Installs slurm-wlm and munge when missing (as root), tears its daemons down by PID.
    """
    from tests.slurm.cluster import SlurmUnavailable, ensure_installed, local_slurm

    try:
        ensure_installed()
    except SlurmUnavailable as exc:
        pytest.skip(str(exc))
    with local_slurm(tmp_path_factory.mktemp("slurm")) as cluster:
        yield cluster


def dry_run_jobs(output: str) -> list[tuple[str, dict[str, str]]]:
    """(rule, wildcards) of every job a `snakemake -n` output lists ("rule X:" blocks; the jobs
    of a group job, which a dry run prints under "Group job ...", are indented)."""
    jobs: list[tuple[str, dict[str, str]]] = []
    for block in re.split(r"\n(?=[ \t]*(?:local)?rule \w+:)", "\n" + output):
        head = re.match(r"\s*(?:local)?rule (\w+):", block)
        if not head:
            continue
        found = re.search(r"^\s+wildcards: (.+)$", block, re.M)
        pairs = [w.split("=", 1) for w in found.group(1).split(", ")] if found else []
        jobs.append((head.group(1), {k: v for k, v in pairs}))
    return jobs
