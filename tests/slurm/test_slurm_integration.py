"""The SLURM profile, and the tiny workflow run for real through a local single-node SLURM.

The static tests check the profile against the executor plugin's traps (anchors.md); the
integration test starts slurmctld + slurmd with two fake GPUs (tests/slurm/cluster.py), runs a
slice of the tiny study through `--profile` (a copy of profiles/slurm with only its EDIT lines
changed, as a user would) and checks that every non-local job went through sbatch, that GPU
rules got a GPU and CPU rules did not, and that the outputs equal those of a local run.
"""

from __future__ import annotations

import re
import time
from pathlib import Path

import pytest
import yaml

from tests.conftest import tiny_config, write_config
from tests.slurm.cluster import PROFILE, TEST_PROFILE_OPTIONS, edit_site_values
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
    """Partition, account and GPU model are marked EDIT, and nothing else is."""
    site_keys = {"slurm_partition", "slurm_account", "gpu_model"}
    marked = set()
    for line in _profile_lines():
        key, comment = _setting(line)
        if "EDIT" in comment:
            assert key in site_keys, f"EDIT on a line that is not a site value: {line!r}"
            marked.add(key)
        elif key in site_keys:
            raise AssertionError(f"site value not marked EDIT: {line!r}")
    assert marked == site_keys


def test_profile_avoids_the_plugin_traps():
    profile = yaml.safe_load(PROFILE.read_text())
    assert profile["executor"] == "slurm"
    assert profile["retries"] >= 1
    defaults = profile["default-resources"]
    # tasks -> --ntasks-per-gpu on GPU jobs; cpus_per_task overrides threads (anchors.md).
    assert not {"tasks", "cpus_per_task", "gpu", "gres"} & set(defaults)
    assert {"slurm_partition", "mem_mb", "runtime"} <= set(defaults)
    for rule, resources in profile["set-resources"].items():
        assert not ({"gpu", "gres"} <= set(resources)), f"{rule}: gpu and gres both set"
        assert not {"tasks", "cpus_per_task"} & set(resources), rule
    assert set(profile["set-resources"]) == GPU_RULES
    gpu_partitions = {r["slurm_partition"] for r in profile["set-resources"].values()}
    assert len(gpu_partitions) == 1 and gpu_partitions != {defaults["slurm_partition"]}


@pytest.mark.parametrize("resource", ["mem_mb", "runtime"])
def test_profile_defaults_grow_with_attempt(resource):
    expression = yaml.safe_load(PROFILE.read_text())["default-resources"][resource]
    values = [eval(expression, {"attempt": attempt}) for attempt in (1, 2, 3)]
    assert values[1] == 2 * values[0] and values[2] == 2 * values[1]


def test_gpu_rules_are_the_ones_that_declare_a_gpu():
    """The rules that ask for gpu= are exactly those the profile sends to the GPU partition."""
    expected = {"sample", "extract", "probes", "train_sae", "feature_stats", "kl"}
    assert expected == GPU_RULES
    profile = yaml.safe_load(PROFILE.read_text())
    assert set(profile["set-resources"]) == GPU_RULES


def test_gpu_rule_scan_sees_rules_inside_if_blocks(tmp_path):
    (tmp_path / "a.smk").write_text(
        "rule plain:\n    resources:\n        mem_mb=1,\n\n"
        "if config['x']:\n\n    rule nested:\n        resources:\n            gpu=1,\n"
    )
    assert rules_declaring_gpu(tmp_path) == {"nested"}


def test_site_edit_touches_only_site_values():
    profile = yaml.safe_load(PROFILE.read_text())
    edited = edit_site_values(profile, cpu_partition="c", gpu_partition="g", account="acct")
    assert edited["default-resources"]["slurm_partition"] == "c"
    assert edited["default-resources"]["slurm_account"] == "acct"
    assert {r["slurm_partition"] for r in edited["set-resources"].values()} == {"g"}
    for key in set(profile) - {"default-resources", "set-resources"}:
        assert edited[key] == profile[key]


# ----------------------------------------------------------------------------- a real cluster


def integration_targets(config: dict, rules: set[str]) -> list[str]:
    """A slice of the tiny study that fits in a couple of minutes on 2 cores.

    Two checkpoint records (CPU jobs through sbatch), the sampling shards of r1 (GPU jobs) with
    its local filter, and r1's pooled activations (GPU extraction parts + a local gather).
    """
    models = [m["name"] for m in config["models"]]
    targets = [f"results/checkpoints/{m}.json" for m in models[:2]]
    if "filter_samples" in rules:
        targets.append(f"results/fasta/{models[1]}.fasta")
    if "gather_pooled" in rules:
        embedder = config["activations"]["embedders"][0]
        embedder = models[0] if embedder == "base" else embedder
        targets.append(f"results/activations/{embedder}/{models[1]}.pooled.parquet")
    return targets


@pytest.mark.slurm
@pytest.mark.workflow
@pytest.mark.slow
def test_tiny_workflow_through_slurm(local_slurm, tiny_checkpoints, tmp_path):
    cluster = local_slurm
    config = tiny_config(tiny_checkpoints)
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
        tmp_path / "slurm", runs["slurm"], "--profile", str(profile), *targets, env=cluster.env
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

    # Every job of a non-local rule went through sbatch exactly once; local rules never did.
    calls = cluster.sbatch_calls()
    jobs = finished_jobs(tmp_path / "slurm")
    local_only = local_rules()
    remote = [j for j in jobs if j.rule not in local_only]
    assert remote, "no job ran through SLURM"
    assert all(c.attempt == 1 for c in calls), "a job needed a retry"
    assert len(calls) == len(remote), f"{len(calls)} sbatch calls for {len(remote)} jobs"
    matched = {job_of_call(jobs, c.rule, c.target_wildcards): c for c in calls}
    assert set(matched) == set(remote), "jobs and sbatch calls do not pair up"

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

    problems = compare_trees(tmp_path / "local" / "results", tmp_path / "slurm" / "results")
    assert not problems, "SLURM and local outputs differ:\n" + "\n".join(problems)


def _read(workdir: Path, log: str) -> str:
    path = workdir / log
    return path.read_text(errors="replace") if path.exists() else ""
