"""Run the workflow for the SLURM and failure tests, read what it did, compare its outputs."""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import signal
import subprocess
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from tests.conftest import BIN, REPO, run_snakemake


def rules_declaring_gpu(rules_dir: Path = REPO / "rules") -> frozenset[str]:
    """Rules whose resources ask for a GPU (`gpu=`), also rules defined inside an `if:` block."""
    found = set()
    for source in sorted(rules_dir.glob("*.smk")):
        for block in re.split(r"^(?=\s*rule \w+:)", source.read_text(), flags=re.MULTILINE):
            match = re.match(r"\s*rule (\w+):", block)
            if match and re.search(r"^\s+gpu=", block, flags=re.MULTILINE):
                found.add(match.group(1))
    return frozenset(found)


# The SLURM profile must send exactly these rules to the GPU partition.
GPU_RULES = rules_declaring_gpu()
# Figures and reports carry dates and renderer details; they are checked by their own stages.
UNCOMPARED_SUFFIXES = (".png", ".svg", ".pdf", ".html", ".log")
RTOL, ATOL = 1e-5, 1e-6


@dataclass(frozen=True)
class FinishedJob:
    """One job of a finished run, from Snakemake's metadata (.snakemake/metadata)."""

    rule: str
    output: tuple[str, ...]
    log: tuple[str, ...]


def finished_jobs(workdir: Path) -> list[FinishedJob]:
    """Every job whose outputs Snakemake recorded as finished in `workdir`."""
    by_job: dict[tuple, dict] = {}
    for record_file in (workdir / ".snakemake" / "metadata").iterdir():
        output = base64.b64decode(record_file.name).decode()
        record = json.loads(record_file.read_text())
        if record.get("incomplete"):
            continue
        key = (record["rule"], record.get("job_hash"), tuple(record.get("log") or ()))
        job = by_job.setdefault(key, {"record": record, "output": []})
        job["output"].append(output)
    return [
        FinishedJob(
            rule=key[0],
            output=tuple(sorted(job["output"])),
            log=key[2],
        )
        for key, job in by_job.items()
    ]


def job_of_call(jobs: list[FinishedJob], rule: str, wildcards: dict[str, str]) -> FinishedJob:
    """The finished job of `rule` whose output and log paths hold every wildcard value.

    Snakemake makes every output and log of a job carry all of its wildcards, so exactly one
    job of the rule matches; anything else is an error.
    """

    def holds(job: FinishedJob, value: str, times: int) -> bool:
        # As often as wildcards carry it: embedder r0 of model r0 is not embedder r0 of r1.
        pattern = rf"(?<![A-Za-z0-9]){re.escape(value)}(?![A-Za-z0-9])"
        return all(len(re.findall(pattern, path)) >= times for path in (*job.output, *job.log))

    counts = Counter(wildcards.values())
    matches = [j for j in jobs if j.rule == rule and all(holds(j, v, n) for v, n in counts.items())]
    if len(matches) != 1:
        raise AssertionError(f"{len(matches)} finished jobs of {rule} match {wildcards}")
    return matches[0]


def local_rules() -> set[str]:
    """Rules marked `localrule: True` in the workflow's source (they never go to SLURM)."""
    names = set()
    for source in [REPO / "Snakefile", *sorted((REPO / "rules").glob("*.smk"))]:
        for block in re.split(r"^(?=rule |checkpoint )", source.read_text(), flags=re.MULTILINE):
            match = re.match(r"(?:rule|checkpoint) (\w+):", block)
            if match and re.search(r"^\s+localrule:\s*True", block, flags=re.MULTILINE):
                names.add(match.group(1))
    return names


def job_stats(snakemake_output: str) -> dict[str, int]:
    """The 'Job stats' table of a (dry-)run: rule -> number of jobs."""
    _, _, table = snakemake_output.partition("Job stats:")
    counts: dict[str, int] = {}
    for line in table.splitlines()[3:]:
        parts = line.split()
        if len(parts) != 2 or not parts[1].isdigit():
            break
        if parts[0] != "total":
            counts[parts[0]] = int(parts[1])
    return counts


def rule_names(workdir: Path, configfile: Path) -> set[str]:
    proc = run_snakemake(workdir, configfile, "--list-rules")
    return {line.strip() for line in proc.stdout.splitlines() if line.strip()}


def start_snakemake(
    workdir: Path, configfile: Path | None, *args: str, env: dict[str, str] | None = None
) -> subprocess.Popen:
    """A run in the background, in its own process group (so a test can kill all of it).

    Runs the repository's Snakefile unless `args` name another with --snakefile. Its output
    goes to a file (a pipe nobody reads would stall it): `output(proc)` reads it.
    """
    snakefile = [] if "--snakefile" in args else ["--snakefile", str(REPO / "Snakefile")]
    cmd = [
        str(BIN / "snakemake"),
        *snakefile,
        "--directory",
        str(workdir),
        *(["--configfile", str(configfile)] if configfile else []),
        *args,
    ]
    env = dict(os.environ if env is None else env)
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    log = workdir / f"snakemake-{time.time_ns()}.out"
    with open(log, "w") as out:
        proc = subprocess.Popen(
            cmd,
            cwd=workdir,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
    proc.output_path = log  # type: ignore[attr-defined]
    return proc


def output(proc: subprocess.Popen) -> str:
    """What a run started with `start_snakemake` printed so far."""
    return proc.output_path.read_text(errors="replace")  # type: ignore[attr-defined]


def finish(proc: subprocess.Popen, timeout: float) -> tuple[int, str]:
    """Wait for a run; (exit status, its output). A run past `timeout` is killed, all of it."""
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        raise
    return proc.returncode, output(proc)


def wait_until(predicate, *, timeout: float, what: str, proc: subprocess.Popen | None = None):
    """Poll `predicate` every 20 ms until it returns something truthy, and return that."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        if proc is not None and proc.poll() is not None:
            out = proc.stdout.read() if proc.stdout else ""
            raise AssertionError(
                f"snakemake ended ({proc.returncode}) before {what}:\n{out[-4000:]}"
            )
        time.sleep(0.02)
    raise TimeoutError(f"no {what} after {timeout} s")


def copy_run(source: Path, dest: Path, drop: list[str] = ()) -> Path:
    """A copy of a finished run (config, results, Snakemake's records) without `drop`.

    Modification times are kept, so Snakemake sees the copy as up to date; rule logs are not
    copied (a test that watches a job's log must see only the new job's lines).
    """
    dest.mkdir(parents=True)
    shutil.copy2(source / "config.yaml", dest / "config.yaml")
    shutil.copytree(source / "results", dest / "results", symlinks=True)
    shutil.copytree(source / ".snakemake" / "metadata", dest / ".snakemake" / "metadata")
    for rel in drop:
        path = dest / rel
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()
    return dest


# ----------------------------------------------------------------------------- comparison


def compare_trees(expected: Path, actual: Path, relative: list[str] | None = None) -> list[str]:
    """Differences between two result trees (files under `relative`, default: all of `expected`).

    Tables and arrays are compared by content (floats to RTOL/ATOL), JSON by value, text
    exactly; figures and reports are skipped. Returns one line per difference.
    """
    if relative is None:
        relative = sorted(str(p.relative_to(expected)) for p in expected.rglob("*") if p.is_file())
    if not relative:
        return ["nothing to compare"]
    problems = []
    for rel in relative:
        a, b = expected / rel, actual / rel
        if a.is_dir():
            inner = sorted(str(p.relative_to(expected)) for p in a.rglob("*") if p.is_file())
            problems += compare_trees(expected, actual, inner)
            continue
        if rel.endswith(UNCOMPARED_SUFFIXES) or Path(rel).name.startswith("."):
            continue
        if not b.exists():
            problems.append(f"{rel}: missing")
            continue
        try:
            difference = compare_files(a, b)
        except Exception as exc:  # a file that cannot be read is a difference too
            difference = f"unreadable ({type(exc).__name__}: {exc})"
        if difference:
            problems.append(f"{rel}: {difference}")
    return problems


def compare_files(a: Path, b: Path) -> str | None:
    suffix = a.suffix
    if suffix == ".parquet":
        return _compare_parquet(a, b)
    if suffix == ".json":
        return _compare_values(json.loads(a.read_text()), json.loads(b.read_text()), "")
    if suffix in (".tsv", ".csv"):
        sep = "\t" if suffix == ".tsv" else ","
        return _compare_frames(pd.read_csv(a, sep=sep), pd.read_csv(b, sep=sep))
    if suffix == ".safetensors":
        from safetensors.numpy import load_file

        ta, tb = load_file(a), load_file(b)
        if ta.keys() != tb.keys():
            return f"tensors {sorted(ta)} != {sorted(tb)}"
        for key in ta:
            if ta[key].shape != tb[key].shape or not np.allclose(
                ta[key], tb[key], rtol=RTOL, atol=ATOL
            ):
                return f"tensor {key} differs"
        return None
    return None if a.read_bytes() == b.read_bytes() else "content differs"


def _compare_values(a, b, where: str) -> str | None:
    if isinstance(a, dict) and isinstance(b, dict):
        if a.keys() != b.keys():
            return f"{where or '.'}: keys {sorted(a)} != {sorted(b)}"
        for key in a:
            problem = _compare_values(a[key], b[key], f"{where}.{key}")
            if problem:
                return problem
        return None
    if isinstance(a, list) and isinstance(b, list):
        if len(a) != len(b):
            return f"{where}: length {len(a)} != {len(b)}"
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            problem = _compare_values(x, y, f"{where}[{i}]")
            if problem:
                return problem
        return None
    if isinstance(a, float) and isinstance(b, float):
        same = (np.isnan(a) and np.isnan(b)) or np.isclose(a, b, rtol=RTOL, atol=ATOL)
        return None if same else f"{where}: {a} != {b}"
    return None if a == b else f"{where}: {a!r} != {b!r}"


def _compare_frames(a: pd.DataFrame, b: pd.DataFrame) -> str | None:
    try:
        pd.testing.assert_frame_equal(a, b, check_exact=False, rtol=RTOL, atol=ATOL)
    except AssertionError as exc:
        return " ".join(str(exc).split())[:300]
    return None


def _compare_parquet(a: Path, b: Path) -> str | None:
    ta, tb = pq.read_table(a), pq.read_table(b)
    if ta.schema.remove_metadata() != tb.schema.remove_metadata():
        return f"schema {ta.schema} != {tb.schema}"
    if (ta.schema.metadata or {}) != (tb.schema.metadata or {}):
        return "file metadata differs"
    if ta.num_rows != tb.num_rows:
        return f"{ta.num_rows} rows != {tb.num_rows}"
    for name in ta.column_names:
        ca, cb = ta[name].combine_chunks(), tb[name].combine_chunks()
        numeric = _numeric_values(ca)
        if numeric is not None:
            other = _numeric_values(cb)
            if other is None or numeric.shape != other.shape:
                return f"column {name}: shapes differ"
            # float16 storage: a float32 difference in the last bits may round one ulp apart.
            half = _is_half(ca.type)
            rtol, atol = (2e-3, 2e-3) if half else (RTOL, ATOL)
            if not np.allclose(numeric, other, rtol=rtol, atol=atol, equal_nan=True):
                worst = float(np.nanmax(np.abs(numeric - other)))
                return f"column {name}: values differ (max abs difference {worst:.3g})"
        elif not ca.equals(cb):
            return f"column {name} differs"
    return None


def _is_half(kind: pa.DataType) -> bool:
    while pa.types.is_list(kind) or pa.types.is_fixed_size_list(kind):
        kind = kind.value_type
    return pa.types.is_float16(kind)


def _numeric_values(column: pa.Array) -> np.ndarray | None:
    """Float values of a float column or a (fixed-size) list-of-float column, else None."""
    array = column
    while pa.types.is_list(array.type) or pa.types.is_fixed_size_list(array.type):
        array = array.flatten()
    if pa.types.is_floating(array.type):
        return array.to_numpy(zero_copy_only=False).astype(np.float64)
    return None
