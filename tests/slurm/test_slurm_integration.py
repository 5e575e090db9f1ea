"""The SLURM profile, and the tiny workflow run for real through a local single-node SLURM.

The static tests check the profile against the executor plugin's traps (profiles/slurm/README.md); the
integration test starts slurmctld + slurmd with two fake GPUs (tests/slurm/cluster.py), runs a
slice of the tiny study through `--profile` (a copy of profiles/slurm with only its EDIT lines
changed, as a user would) and checks that every non-local job went through sbatch, that GPU
rules got a GPU and CPU rules did not, and that the outputs equal those of a local run.
"""

from __future__ import annotations

import logging
import re
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from tests.conftest import run_snakemake, tiny_config, write_config
from tests.slurm.cluster import (
    PARTITIONS,
    PROFILE,
    TEST_PROFILE_OPTIONS,
    edit_partitions,
    edit_site_values,
)
from tests.slurm.workflow import (
    GPU_RULES,
    compare_trees,
    finish,
    finished_jobs,
    job_of_call,
    local_rules,
    rule_names,
    rules_declaring_gpu,
    start_snakemake,
)

CUDA_LINE = re.compile(r"CUDA_VISIBLE_DEVICES=(\S+)")


# ----------------------------------------------------------------------------- the profile


def _profile_lines() -> list[str]:
    return PROFILE.read_text().splitlines()


def test_every_profile_line_is_commented():
    for number, line in enumerate(_profile_lines(), start=1):
        if line.strip():
            assert "#" in line, f"profiles/slurm/config.yaml:{number} has no comment: {line!r}"


def _setting(line: str) -> tuple[str | None, str]:
    """(key, comment) of a setting line, also of a commented-out one ("# gpu_model: ...")."""
    body = line.strip().lstrip("#").strip()
    code, _, comment = body.partition("#")
    key = code.split(":", 1)[0].strip() if re.match(r"[\w-]+:", code) else None
    return key, comment


def test_edit_lines_are_exactly_the_site_values():
    """The account is marked EDIT, and nothing else in config.yaml is (partitions have their
    own file)."""
    site_keys = {"slurm_account"}
    marked = set()
    for line in _profile_lines():
        key, comment = _setting(line)
        if "EDIT" in comment:
            assert key in site_keys, f"EDIT on a line that is not a site value: {line!r}"
            marked.add(key)
        elif key in site_keys:
            raise AssertionError(f"site value not marked EDIT: {line!r}")
    assert marked == site_keys


def test_every_partitions_line_is_commented():
    for number, line in enumerate(PARTITIONS.read_text().splitlines(), start=1):
        if line.strip():
            assert "#" in line, f"profiles/slurm/partitions.yaml:{number} has no comment: {line!r}"


def test_profile_avoids_the_plugin_traps():
    profile = yaml.safe_load(PROFILE.read_text())
    assert profile["executor"] == "slurm"
    assert profile["retries"] >= 1
    assert profile["printshellcmds"] is False  # scripts, no shell: "Shell command: None" noise
    assert profile["slurm-jobname-prefix"] and profile["slurm-efficiency-report"] is True
    defaults = profile["default-resources"]
    # tasks -> --ntasks-per-gpu on GPU jobs; cpus_per_task overrides threads (the plugin's documented mapping).
    assert not {"tasks", "cpus_per_task", "gpu", "gres"} & set(defaults)
    assert {"mem_mb", "runtime"} <= set(defaults)
    # No partition in the profile: a command-line --set-resources/--default-resources replaces
    # the profile's block and would drop it; the plugin's partition selection cannot be lost.
    assert "set-resources" not in profile
    assert "slurm_partition" not in PROFILE.read_text().replace("# ", "")
    assert (PROFILE.parent / profile["slurm-partition-config"]).resolve() == PARTITIONS


def test_profile_disk_default_reads_no_input_sizes():
    """Snakemake's own disk_mb default is max(2*input.size_mb, 1000): every job's inputs
    stat'ed, 1.3 s of the paper-scale dry run, for a resource the plugin never requests."""
    defaults = yaml.safe_load(PROFILE.read_text())["default-resources"]
    assert isinstance(defaults["disk_mb"], int)
    assert not any("input" in str(value) for value in defaults.values()), defaults


def test_partitions_separate_gpu_and_cpu_jobs():
    partitions = yaml.safe_load(PARTITIONS.read_text())["partitions"]
    gpus = {name: limits.get("max_gpu", 0) for name, limits in partitions.items()}
    assert sorted(gpus.values())[0] == 0 and sorted(gpus.values())[-1] >= 1, gpus


@pytest.mark.parametrize("resource", ["mem_mb", "runtime"])
def test_profile_defaults_grow_with_attempt(resource):
    expression = yaml.safe_load(PROFILE.read_text())["default-resources"][resource]
    values = [eval(expression, {"attempt": attempt}) for attempt in (1, 2, 3)]
    assert values[1] == 2 * values[0] and values[2] == 2 * values[1]


def test_gpu_rules_are_the_ones_that_declare_a_gpu():
    expected = {"sample", "extract", "extract_tokens", "probes", "train_sae", "feature_stats", "kl"}
    expected |= {"model_diff_extract", "crosscoder", "diff_sae"}
    expected |= {"potts_fit"}
    assert expected == GPU_RULES


def test_gpu_rule_scan_sees_rules_inside_if_blocks(tmp_path):
    (tmp_path / "a.smk").write_text(
        "rule plain:\n    resources:\n        mem_mb=1,\n\n"
        "if config['x']:\n\n    rule nested:\n        resources:\n            gpu=1,\n"
    )
    assert rules_declaring_gpu(tmp_path) == {"nested"}


def test_site_edit_touches_only_site_values():
    profile = yaml.safe_load(PROFILE.read_text())
    edited = edit_site_values(profile, account="acct")
    assert edited["default-resources"]["slurm_account"] == "acct"
    for key in set(profile) - {"default-resources"}:
        assert edited[key] == profile[key]
    partitions = edit_partitions(
        yaml.safe_load(PARTITIONS.read_text()),
        cpu_partition="c",
        gpu_partition="g",
        gpus_per_node=2,
    )["partitions"]
    assert list(partitions) == ["c", "g"] and partitions["g"]["max_gpu"] == 2


# ----------------------------------------------------------------------------- partition selection


@dataclass
class DryRunJob:
    """A job as `-n` prints it: what the plugin's partition selection reads."""

    name: str
    threads: int
    resources: dict


def dry_run_jobs(text: str) -> list[DryRunJob]:
    """Every job, also those inside a group job (printed indented)."""
    jobs = []
    for block in re.split(r"\n(?=\s*(?:local)?rule \w+:)", text):
        head = re.match(r"\s*(?:local)?rule (\w+):", block)
        resources = re.search(r"^\s+resources: (.*)$", block, flags=re.MULTILINE)
        if not head or not resources:
            continue
        threads = re.search(r"^\s+threads: (\d+)$", block, flags=re.MULTILINE)
        values = dict(item.split("=", 1) for item in resources.group(1).split(", "))
        jobs.append(DryRunJob(head.group(1), int(threads.group(1)) if threads else 1, values))
    return jobs


@pytest.mark.workflow
def test_command_line_set_resources_keep_gpu_rules_on_the_gpu_partition(tiny_checkpoints, tmp_path):
    """`--set-resources RULE:runtime=N` replaces the profile's whole set-resources (Snakemake's
    documented behaviour); with the partitions chosen by the plugin from gpu=N, every GPU job
    still goes to the GPU partition and every CPU job to the CPU one. The dry run's resources
    go through the plugin's own selection (get_best_partition)."""
    from snakemake_executor_plugin_slurm.partitions import get_best_partition, read_partition_file

    configfile = write_config(tmp_path / "config.yaml", tiny_config(tiny_checkpoints))
    overrides = [f"{rule}:runtime=77" for rule in sorted(GPU_RULES)]
    proc = run_snakemake(
        tmp_path, configfile, "-n", "--profile", str(PROFILE.parent), "--set-resources", *overrides
    )
    jobs = dry_run_jobs(proc.stdout)
    assert {j.name for j in jobs} >= GPU_RULES, sorted({j.name for j in jobs})
    partitions = read_partition_file(PARTITIONS)
    names = list(yaml.safe_load(PARTITIONS.read_text())["partitions"])
    cpu, gpu = names[0], names[1]
    logger = logging.getLogger("partition-test")
    for job in jobs:
        if job.name in local_rules() or job.name == "all":
            continue
        chosen = get_best_partition(partitions, job, logger)
        if job.name in GPU_RULES:
            assert job.resources["gpu"] == "1", job
            assert job.resources["runtime"] == "77", job
            assert chosen == gpu, job
        else:
            assert chosen == cpu, job


# ----------------------------------------------------------------------------- a real cluster


def integration_targets(config: dict, rules: set[str]) -> list[str]:
    """A slice of the tiny study that fits in a couple of minutes on 2 cores.

    Two checkpoint records (CPU jobs through sbatch), the sampling shards of r1 (GPU jobs) with
    its local filter, r1's pooled activations (GPU extraction parts + a local gather) and its
    first token layer (one group with the pooled job of each part), and the base SAE family of
    the first SAE layer (one GPU job for every fold replica).
    """
    models = [m["name"] for m in config["models"]]
    targets = [f"results/checkpoints/{m}.json" for m in models[:2]]
    if "filter_samples" in rules:
        targets.append(f"results/fasta/{models[1]}.fasta")
    if "gather_pooled" in rules:
        embedder = config["activations"]["embedders"][0]
        embedder = models[0] if embedder == "base" else embedder
        targets.append(f"results/activations/{embedder}/{models[1]}.pooled.parquet")
        if "extract_tokens" in rules:
            layer = f"{config['activations']['token_layers'][0]:02d}"
            targets += [
                f"results/activations/{embedder}/{models[1]}/layer_{layer}/part-{part:05d}.parquet"
                for part in range(config["activations"]["shards"])
            ]
    if "train_sae" in rules:
        layer = f"{config['sae']['layers'][0]:02d}"
        targets.append(f"results/saes/{models[0]}/layer_{layer}/base/fold_0.metrics.json")
    return targets


# On the command line, as a user tuning one rule would: it replaces the profile's whole
# set-resources block (Snakemake's documented behaviour); GPU jobs must stay on the GPUs.
RUNTIME_OVERRIDES = ("--set-resources", "sample:runtime=33", "train_sae:runtime=34")


@pytest.mark.slurm
@pytest.mark.workflow
@pytest.mark.slow
def test_tiny_workflow_through_slurm(local_slurm, tiny_checkpoints, tmp_path):
    cluster = local_slurm
    # The fake GPUs cannot run CUDA: device 'auto' would (rightly) refuse them with CPU torch.
    config = tiny_config(tiny_checkpoints, device="cpu")
    runs = {}
    for name in ("local", "slurm"):
        (tmp_path / name).mkdir()
        runs[name] = write_config(tmp_path / name / "config.yaml", config)
    rules = rule_names(tmp_path / "local", runs["local"])
    targets = integration_targets(config, rules)
    profile = cluster.site_profile(tmp_path / "profile", **TEST_PROFILE_OPTIONS)
    cluster.forget_calls()

    started = time.monotonic()
    # The local reference runs alongside: SLURM's status polling leaves the CPUs idle a lot.
    local = start_snakemake(tmp_path / "local", runs["local"], "--cores", "2", *targets)
    slurm = start_snakemake(
        tmp_path / "slurm",
        runs["slurm"],
        "--profile",
        str(profile),
        *RUNTIME_OVERRIDES,
        "--",  # --set-resources takes every value up to the next option
        *targets,
        env=cluster.env,
    )
    slurm_status, slurm_out = finish(slurm, timeout=600)
    slurm_seconds = time.monotonic() - started
    local_status, local_out = finish(local, timeout=600)
    assert slurm_status == 0, f"SLURM run failed:\n{slurm_out[-6000:]}\n{cluster.logs()}"
    assert local_status == 0, f"local run failed:\n{local_out[-6000:]}"
    print(
        f"SLURM install {cluster.install_seconds:.0f} s, start {cluster.start_seconds:.1f} s, "
        f"run of {targets} {slurm_seconds:.0f} s"
    )

    # Every job of a non-local rule went through sbatch exactly once (alone or in its group);
    # local rules never did.
    calls = cluster.sbatch_calls()
    jobs = finished_jobs(tmp_path / "slurm")
    local_only = local_rules()
    remote = [j for j in jobs if j.rule not in local_only]
    assert remote, "no job ran through SLURM"
    assert all(c.attempt == 1 for c in calls), "a job needed a retry"
    submitted = [(c, rule, w) for c in calls for rule, w in c.target_jobs]
    assert len(submitted) == len(remote), f"{len(submitted)} submitted jobs for {len(remote)}"
    matched = {job_of_call(jobs, rule, w): c for c, rule, w in submitted}
    assert set(matched) == set(remote), "jobs and sbatch calls do not pair up"
    # An extraction part's pooled and token jobs are one submission that asks for one GPU
    # (profiles/slurm: group-components, group_slot), not one GPU per job.
    if "extract_tokens" in rules:
        parts = [c for c in calls if c.rules == {"extract", "extract_tokens"}]
        assert len(parts) == config["activations"]["shards"], [c.target_jobs for c in calls]
        assert all(c.gpus == "1" for c in parts), [c.args for c in parts]

    # GPU rules asked for and got a GPU on the GPU partition; CPU rules neither.
    for job, call in matched.items():
        state = cluster.job(call.job_id)
        assert state["JobState"] == "COMPLETED", state
        devices = [m for log in job.log for m in CUDA_LINE.findall(_read(tmp_path / "slurm", log))]
        if job.rule in GPU_RULES:
            assert call.partition == cluster.gpu_partition and call.gpus, call.args
            assert state["Partition"] == cluster.gpu_partition
            assert state.get("JOB_GRES", "").startswith("gpu:"), state
            assert devices and all(re.fullmatch(r"\d+(,\d+)*", d) for d in devices), (
                f"{job.rule} {job.log}: CUDA_VISIBLE_DEVICES not set by SLURM ({devices})"
            )
        else:
            assert call.partition == cluster.cpu_partition, call.args
            assert call.gpus is None and call.gres is None, call.args
            assert state.get("JOB_GRES") in (None, "(null)"), state
            assert all(d == "<unset>" for d in devices), devices
    if {"sample", "extract"} & rules:
        assert GPU_RULES & {j.rule for j in remote}, "no GPU rule ran"
    for call in calls:
        if call.rules in ({"sample"}, {"train_sae"}):
            (rule,) = call.rules
            assert call.runtime_min == {"sample": 33, "train_sae": 34}[rule], call.args
    # One SLURM job trained every fold replica of the SAE family.
    sae_calls = [c for c in calls if "train_sae" in c.rules]
    if "train_sae" in rules:
        assert len(sae_calls) == 1, sae_calls
        kfold = config["sae"]["kfold"]
        metrics = sorted((tmp_path / "slurm" / "results" / "saes").glob("*/*/base/*.metrics.json"))
        assert len(metrics) == kfold, metrics

    problems = compare_trees(tmp_path / "local" / "results", tmp_path / "slurm" / "results")
    assert not problems, "SLURM and local outputs differ:\n" + "\n".join(problems)


def _read(workdir: Path, log: str) -> str:
    path = workdir / log
    return path.read_text(errors="replace") if path.exists() else ""


@pytest.mark.slurm
@pytest.mark.workflow
@pytest.mark.slow
def test_gpu_job_with_cpu_torch_fails_at_once_with_one_line(
    local_slurm, tiny_checkpoints, tmp_path
):
    """A GPU job (SLURM sets CUDA_VISIBLE_DEVICES) whose torch is the CPU build stops at once
    with one line saying what to install: never a silent CPU run that times out."""
    import torch

    if torch.cuda.is_available():
        pytest.skip("this torch can use CUDA; the test needs the CPU build")
    cluster = local_slurm
    work = tmp_path / "work"
    work.mkdir()
    configfile = write_config(work / "config.yaml", tiny_config(tiny_checkpoints))
    model = tiny_config(tiny_checkpoints)["models"][0]["name"]
    target = f"results/samples/{model}/shard_000.parquet"
    profile = cluster.site_profile(tmp_path / "profile", **TEST_PROFILE_OPTIONS)
    cluster.forget_calls()
    started = time.monotonic()
    proc = start_snakemake(
        work, configfile, "--profile", str(profile), "--retries", "0", target, env=cluster.env
    )
    status, out = finish(proc, timeout=600)
    assert status != 0, out[-3000:]
    calls = [c for c in cluster.sbatch_calls() if c.rule == "sample"]
    assert len(calls) == 1 and calls[0].partition == cluster.gpu_partition, calls
    log = _read(work, f"logs/sample/{model}/shard_000.log")
    lines = [line for line in log.splitlines() if "DeviceError:" in line]
    assert lines, log[-3000:]
    assert "CUDA_VISIBLE_DEVICES=" in lines[-1] and "CPU-only build" in lines[-1]
    assert "TORCH_BUILD=cuda" in lines[-1]
    assert time.monotonic() - started < 300
