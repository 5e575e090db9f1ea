"""A real single-node SLURM on loopback for the integration tests (Debian's slurm-wlm and munge).

`local_slurm(root)` installs the packages when they are missing (apt-get, as root), writes a
slurm.conf and gres.conf under `root`, starts munged, slurmctld and slurmd in the foreground as
children of the test process (so their PIDs are known and nothing else is touched), waits until
the node is idle and tears everything down by PID afterwards, also when a test fails.

The node offers two GPUs as GRES on character devices made with mknod, so jobs that ask
`--gpus=1` get `CUDA_VISIBLE_DEVICES` from SLURM exactly as on a real GPU node. Memory limits are
enforced (jobacct_gather/linux with OverMemoryKill), so a job that exceeds `--mem` is killed
as on a real cluster. There is no accounting (no slurmdbd): job states come from squeue and
scontrol, which keep finished jobs for MinJobAge seconds.

Every sbatch call is recorded by a wrapper first on PATH (then the real sbatch runs); `srun`
is wrapped too, to hand the jobs' nested `srun` the config file that the executor plugin strips
from its environment (real clusters keep theirs in /etc/slurm).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shlex
import shutil
import signal
import socket
import stat
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from tests.system_packages import PackagesUnavailable, ensure_apt_packages

REPO = Path(__file__).resolve().parents[2]
PROFILE = REPO / "profiles" / "slurm" / "config.yaml"
PARTITIONS = REPO / "profiles" / "slurm" / "partitions.yaml"
PACKAGES = ("slurm-wlm", "munge")
COMMANDS = ("munged", "slurmctld", "slurmd", "sbatch", "srun", "squeue", "scontrol", "scancel")
NODE = "plmdiff-node"
CPU_PARTITION = "plmcpu"
GPU_PARTITION = "plmgpu"
N_GPUS = 2
# What a test adds to the site profile: quick status polling on an idle loopback cluster,
# squeue instead of sacct (no accounting here), SLURM logs kept for the assertions.
TEST_PROFILE_OPTIONS = {
    "slurm-status-command": "squeue",
    "slurm-init-seconds-before-status-checks": 1,
    "seconds-between-status-checks": 1,
    "slurm-keep-successful-logs": True,
    "latency-wait": 5,
    "jobs": 4,
    "slurm-efficiency-report": False,  # it needs sacct, which this cluster has not
}
# The node announces at least this many CPUs and this much memory (SlurmdParameters=
# config_overrides): rules ask for the threads and memory of a real GPU node (4 threads,
# 16 GB, doubled on retries), which a small CI machine does not have; the tiny jobs use far less.
MIN_CPUS = 16
MIN_MEMORY_MB = 128_000


class SlurmUnavailable(RuntimeError):
    """SLURM cannot be installed or started here (not root, no apt-get)."""


@dataclass
class SbatchCall:
    """One recorded sbatch invocation: its arguments and the job id it printed."""

    args: list[str]
    job_id: str | None

    def option(self, *names: str) -> str | None:
        """Value of an option given as `--name value`, `--name=value` or `-n value`."""
        for i, arg in enumerate(self.args):
            for name in names:
                if arg == name and i + 1 < len(self.args):
                    return self.args[i + 1]
                if name.startswith("--") and arg.startswith(name + "="):
                    return arg[len(name) + 1 :]
        return None

    @property
    def comment(self) -> str:
        return self.option("--comment") or ""

    @property
    def rule(self) -> str:
        """The rule name, from the executor plugin's comment `rule_{name}_wildcards_{values}`."""
        match = re.fullmatch(r"rule_(.+?)(?:_wildcards_.*)?", self.comment)
        return match.group(1) if match else ""

    @property
    def wildcards(self) -> str:
        _, _, values = self.comment.partition("_wildcards_")
        return values

    @property
    def target_jobs(self) -> list[tuple[str, dict[str, str]]]:
        """(rule, wildcards) of every job the submission runs: one, or each job of a group
        (`--target-jobs 'rule:name=value,...' ...` of its command)."""
        wrap = self.option("--wrap") or ""
        _, _, rest = wrap.partition("--target-jobs ")
        jobs = []
        for rule, values in re.findall(r"'?([A-Za-z_]\w*):([^' ]*)'?(?= |$)", rest.split(" --")[0]):
            pairs = [item.split("=", 1) for item in values.split(",") if item]
            jobs.append((rule, dict(pairs)))
        return jobs

    @property
    def rules(self) -> set[str]:
        return {rule for rule, _ in self.target_jobs}

    @property
    def attempt(self) -> int:
        match = re.search(r"--attempt (\d+)", self.option("--wrap") or "")
        return int(match.group(1)) if match else 1

    @property
    def mem_mb(self) -> int | None:
        value = self.option("--mem")
        return int(value) if value else None

    @property
    def runtime_min(self) -> int | None:
        value = self.option("-t", "--time")
        return int(value) if value else None

    @property
    def partition(self) -> str | None:
        return self.option("-p", "--partition")

    @property
    def gpus(self) -> str | None:
        return self.option("--gpus")

    @property
    def gres(self) -> str | None:
        return self.option("--gres")


@dataclass
class LocalSlurm:
    """A running single-node cluster; `env` is what a client (snakemake) needs to use it."""

    root: Path
    conf: Path
    bin_dir: Path
    calls_dir: Path
    env: dict[str, str]
    processes: dict[str, subprocess.Popen] = field(default_factory=dict)
    install_seconds: float = 0.0
    start_seconds: float = 0.0
    cpu_partition: str = CPU_PARTITION
    gpu_partition: str = GPU_PARTITION

    def run(self, *cmd: str, check: bool = True, timeout: float = 60) -> str:
        proc = subprocess.run(
            cmd, capture_output=True, text=True, env=self.env, timeout=timeout, check=False
        )
        if check and proc.returncode != 0:
            raise RuntimeError(f"{shlex.join(cmd)} failed: {proc.stderr.strip()}")
        return proc.stdout

    def sbatch_calls(self) -> list[SbatchCall]:
        """Every sbatch call since the cluster started (or since `forget_calls`), in order."""
        calls = []
        for args_file in sorted(self.calls_dir.glob("*.args"), key=_call_order):
            args = args_file.read_bytes().decode().split("\0")[:-1]
            out = args_file.with_suffix(".out")
            text = out.read_text().strip() if out.exists() else ""
            calls.append(SbatchCall(args, text.split(";")[0] or None))
        return calls

    def forget_calls(self) -> None:
        for path in self.calls_dir.iterdir():
            path.unlink()

    def job(self, job_id: str) -> dict[str, str]:
        """`scontrol show job -d` as a dict (JobState, Partition, JOB_GRES, ...)."""
        text = self.run("scontrol", "show", "job", "-d", "-o", str(job_id))
        return dict(re.findall(r"(\S+?)=(\S*)", text))

    def wait_for_jobs(self, timeout: float = 120) -> None:
        """Wait until no job is pending or running (cancelled jobs take a moment to end)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            active = self.run("squeue", "--noheader", "--format=%i").split()
            if not active:
                return
            time.sleep(0.5)
        raise TimeoutError(f"SLURM jobs still active after {timeout} s: {active}")

    def site_profile(self, dest: Path, **extra) -> Path:
        """A copy of profiles/slurm with its EDIT values set for this cluster, as a user would.

        Partitions become this cluster's; the account line is deleted (no accounting here);
        `extra` adds command-line options (keys as in a profile).
        """
        profile = edit_site_values(yaml.safe_load(PROFILE.read_text()), account=None)
        profile.update(extra)
        dest.mkdir(parents=True, exist_ok=True)
        (dest / "config.yaml").write_text(yaml.safe_dump(profile, sort_keys=False))
        partitions = edit_partitions(
            yaml.safe_load(PARTITIONS.read_text()),
            cpu_partition=self.cpu_partition,
            gpu_partition=self.gpu_partition,
            gpus_per_node=N_GPUS,
        )
        (dest / "partitions.yaml").write_text(yaml.safe_dump(partitions, sort_keys=False))
        return dest

    def logs(self, tail: int = 40) -> str:
        parts = []
        for log in sorted((self.root / "log").glob("*.*")):
            lines = log.read_text(errors="replace").splitlines()[-tail:]
            parts.append(f"== {log.name}\n" + "\n".join(lines))
        return "\n".join(parts)


def edit_site_values(profile: dict, *, account: str | None) -> dict:
    """The profile with its site-specific (EDIT) value replaced; account None deletes it."""
    profile = json.loads(json.dumps(profile))  # deep copy
    defaults = profile["default-resources"]
    if account is None:
        defaults.pop("slurm_account", None)
    else:
        defaults["slurm_account"] = account
    return profile


def edit_partitions(
    partitions: dict, *, cpu_partition: str, gpu_partition: str, gpus_per_node: int
) -> dict:
    """partitions.yaml with this site's partition names (the keys) and GPUs per node."""
    shipped = partitions["partitions"]
    cpu, gpu = (name for name in shipped)  # the file lists the CPU partition first
    return {
        "partitions": {
            cpu_partition: dict(shipped[cpu]),
            gpu_partition: {**shipped[gpu], "max_gpu": gpus_per_node},
        }
    }


def _call_order(path: Path) -> tuple[int, str]:
    stamp = path.stem.split("-")[0]
    return (int(stamp) if stamp.isdigit() else 0, path.stem)


# ----------------------------------------------------------------------------- installation


def ensure_installed() -> float:
    """Install slurm-wlm and munge with apt-get when missing; returns the seconds it took."""
    try:
        return ensure_apt_packages(PACKAGES, COMMANDS)
    except PackagesUnavailable as exc:
        raise SlurmUnavailable(str(exc)) from exc


def _which(name: str) -> str:
    path = shutil.which(name) or str(Path("/usr/sbin", name))
    if not Path(path).exists():
        raise SlurmUnavailable(f"{name} not found after installing {', '.join(PACKAGES)}")
    return path


# ----------------------------------------------------------------------------- configuration


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _hardware() -> tuple[int, int]:
    """CPUs and memory (MB) of this machine, as slurmd sees them."""
    out = subprocess.run([_which("slurmd"), "-C"], capture_output=True, text=True).stdout
    cpus = re.search(r"CPUs=(\d+)", out)
    memory = re.search(r"RealMemory=(\d+)", out)
    return (
        int(cpus.group(1)) if cpus else os.cpu_count() or 1,
        int(memory.group(1)) if memory else 4000,
    )


def _make_gpu_devices(dev_dir: Path, n: int) -> list[Path]:
    """Character devices standing in for GPUs (the null device's numbers: harmless if opened)."""
    dev_dir.mkdir(parents=True, exist_ok=True)
    devices = []
    for i in range(n):
        path = dev_dir / f"fakegpu{i}"
        if not path.exists():
            try:
                os.mknod(path, 0o666 | stat.S_IFCHR, os.makedev(1, 3))
            except PermissionError:
                # No CAP_MKNOD (some containers): point at existing character devices instead;
                # slurmd sets CUDA_VISIBLE_DEVICES only for character devices, not plain files.
                path.symlink_to("/dev/null")
        devices.append(path)
    return devices


def write_config(root: Path, munge_socket: Path) -> Path:
    cpus, memory = _hardware()
    for sub in ("state", "spool", "log", "run"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    devices = _make_gpu_devices(root / "dev", N_GPUS)
    conf = root / "slurm.conf"
    conf.write_text(
        f"""# Single-node SLURM on loopback for plmdiff's integration tests (written by tests/slurm_cluster.py).
ClusterName=plmdiff-test
SlurmctldHost=localhost(127.0.0.1)
SlurmctldPort={_free_port()}
SlurmdPort={_free_port()}
AuthType=auth/munge
AuthInfo=socket={munge_socket}
SlurmUser=root
SlurmdUser=root
StateSaveLocation={root / "state"}
SlurmdSpoolDir={root / "spool"}
SlurmctldPidFile={root / "run" / "slurmctld.pid"}
SlurmdPidFile={root / "run" / "slurmd.pid"}
SlurmctldLogFile={root / "log" / "slurmctld.log"}
SlurmdLogFile={root / "log" / "slurmd.log"}
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
GresTypes=gpu
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
JobAcctGatherType=jobacct_gather/linux
JobAcctGatherFrequency=task=1
JobAcctGatherParams=OverMemoryKill
MpiDefault=none
ReturnToService=2
MinJobAge=3600
SchedulerType=sched/backfill
SlurmdParameters=config_overrides
NodeName={NODE} NodeAddr=127.0.0.1 CPUs={max(cpus, MIN_CPUS)} RealMemory={max(memory, MIN_MEMORY_MB)} Gres=gpu:{N_GPUS} State=UNKNOWN
PartitionName={CPU_PARTITION} Nodes={NODE} Default=YES MaxTime=INFINITE State=UP
PartitionName={GPU_PARTITION} Nodes={NODE} MaxTime=INFINITE State=UP
"""
    )
    files = ",".join(str(d) for d in devices)
    (root / "gres.conf").write_text(f"AutoDetect=off\nNodeName={NODE} Name=gpu File={files}\n")
    return conf


def _write_wrappers(bin_dir: Path, calls_dir: Path, conf: Path) -> None:
    bin_dir.mkdir(parents=True, exist_ok=True)
    calls_dir.mkdir(parents=True, exist_ok=True)
    sbatch = bin_dir / "sbatch"
    sbatch.write_text(
        f"""#!/bin/bash
# Records the call (NUL-separated arguments) and the job id, then is the real sbatch.
stamp="$(date +%s%N)-$$"
printf '%s\\0' "$@" > "{calls_dir}/$stamp.args"
out="$({_which("sbatch")} "$@")"
rc=$?
printf '%s' "$out" > "{calls_dir}/$stamp.out"
[ -n "$out" ] && printf '%s\\n' "$out"
exit $rc
"""
    )
    srun = bin_dir / "srun"
    srun.write_text(
        f"""#!/bin/sh
# The executor plugin drops SLURM_* from the nested srun's environment; put the config back.
export SLURM_CONF={conf}
exec {_which("srun")} "$@"
"""
    )
    for script in (sbatch, srun):
        script.chmod(0o755)


# ----------------------------------------------------------------------------- daemons


def _start(name: str, cmd: list[str], log: Path, env: dict[str, str]) -> subprocess.Popen:
    with open(log, "ab") as out:
        # Own session: Ctrl-C in pytest reaches the teardown, not the daemons directly.
        return subprocess.Popen(
            cmd, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )


def _stop(processes: dict[str, subprocess.Popen]) -> None:
    for name in reversed(list(processes)):
        proc = processes[name]
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=15)


def _wait_idle(cluster: LocalSlurm, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    state = ""
    while time.monotonic() < deadline:
        for name, proc in cluster.processes.items():
            if proc.poll() is not None:
                raise RuntimeError(f"{name} exited ({proc.returncode}):\n{cluster.logs()}")
        state = cluster.run("sinfo", "--noheader", "--Node", "--format=%t", check=False).strip()
        if state.startswith("idle"):
            return
        time.sleep(0.5)
    raise TimeoutError(f"node not idle after {timeout} s (state {state!r}):\n{cluster.logs()}")


@contextlib.contextmanager
def local_slurm(root: Path, *, timeout: float = 60) -> Iterator[LocalSlurm]:
    """Install (if needed), start, yield, and tear down a single-node SLURM under `root`."""
    install_seconds = ensure_installed()
    start = time.monotonic()
    root.mkdir(parents=True, exist_ok=True)
    # munged wants every directory above its socket searchable by all (pytest's tmp dirs are
    # private) and a short socket path: it gets its own directory under the system tmp dir.
    munge_dir = Path(tempfile.mkdtemp(prefix="plmdiff-munge-"))
    munge_dir.chmod(0o755)
    key = munge_dir / "munge.key"
    key.write_bytes(os.urandom(1024))
    key.chmod(0o400)
    munge_socket = munge_dir / "munge.socket"
    conf = write_config(root, munge_socket)
    bin_dir, calls_dir = root / "bin", root / "sbatch_calls"
    _write_wrappers(bin_dir, calls_dir, conf)
    env = {
        **os.environ,
        "SLURM_CONF": str(conf),
        "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}",
    }
    # A GPU job's CUDA_VISIBLE_DEVICES must come from SLURM, not from the submitting shell.
    env.pop("CUDA_VISIBLE_DEVICES", None)
    cluster = LocalSlurm(root, conf, bin_dir, calls_dir, env, install_seconds=install_seconds)
    log = root / "log"
    try:
        cluster.processes["munged"] = _start(
            "munged",
            [
                _which("munged"),
                "--foreground",
                f"--key-file={key}",
                f"--socket={munge_socket}",
                f"--pid-file={munge_dir / 'munged.pid'}",
                f"--log-file={log / 'munged.log'}",
                f"--seed-file={munge_dir / 'munged.seed'}",
            ],
            log / "munged.out",
            env,
        )
        _wait_for(lambda: munge_socket.exists(), 20, "munged socket", cluster)
        cluster.processes["slurmctld"] = _start(
            "slurmctld", [_which("slurmctld"), "-D", "-f", str(conf)], log / "slurmctld.out", env
        )
        cluster.processes["slurmd"] = _start(
            "slurmd",
            [_which("slurmd"), "-D", "-f", str(conf), "-N", NODE],
            log / "slurmd.out",
            env,
        )
        _wait_idle(cluster, timeout)
        cluster.start_seconds = time.monotonic() - start
        yield cluster
    finally:
        with contextlib.suppress(Exception):
            if cluster.processes.get("slurmctld") and cluster.processes["slurmctld"].poll() is None:
                cluster.run("scancel", "--full", f"--partition={CPU_PARTITION}", check=False)
                cluster.run("scancel", "--full", f"--partition={GPU_PARTITION}", check=False)
                cluster.wait_for_jobs(timeout=30)
        _stop(cluster.processes)
        shutil.rmtree(munge_dir, ignore_errors=True)


def _wait_for(predicate, timeout: float, what: str, cluster: LocalSlurm) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        for name, proc in cluster.processes.items():
            if proc.poll() is not None:
                raise RuntimeError(f"{name} exited ({proc.returncode}):\n{cluster.logs()}")
        time.sleep(0.1)
    raise TimeoutError(f"{what} not ready after {timeout} s:\n{cluster.logs()}")
