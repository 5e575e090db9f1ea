"""Stale reruns: a change reruns exactly what depends on it, and the dry run says so.

Each test copies the finished tiny run (tests/conftest.py:tiny_run), changes one thing, and
checks Snakemake's own answers: `--list-changes input|params` names the changed job's outputs,
and the jobs that `-n` (and `--dag`) would run are exactly the changed jobs and everything
downstream of them in the DAG, nothing else.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from safetensors.torch import load_file, save_file

from tests.conftest import run_snakemake
from tests.slurm.workflow import copy_run, finished_jobs, job_stats

pytestmark = [pytest.mark.workflow, pytest.mark.slow]

# Other engineers' scripts change while the suite runs during development; only the triggers
# under test (and mtime) decide here, so a newer script does not add jobs to the plan.
TRIGGERS = ("--rerun-triggers", "mtime", "input", "params")


@dataclass(frozen=True)
class DagNode:
    rule: str
    label: str
    needrun: bool


def parse_dag(dot: str) -> tuple[dict[str, DagNode], list[tuple[str, str]]]:
    """Nodes (jobs; dashed = nothing to do) and edges (input job -> consuming job) of `--dag`."""
    nodes = {}
    for node_id, label, style in re.findall(
        r'^\s*(\d+)\[label = "([^"]*)".*?style="([^"]*)"', dot, flags=re.MULTILINE
    ):
        label = label.replace("\\n", "\n")
        nodes[node_id] = DagNode(label.split("\n")[0], label, "dashed" not in style)
    edges = re.findall(r"^\s*(\d+) -> (\d+)", dot, flags=re.MULTILINE)
    return nodes, edges


def downstream(seeds: set[str], edges: list[tuple[str, str]]) -> set[str]:
    """The seeds and every job that (transitively) consumes their outputs."""
    children: dict[str, set[str]] = {}
    for parent, child in edges:
        children.setdefault(parent, set()).add(child)
    found, todo = set(seeds), list(seeds)
    while todo:
        for child in children.get(todo.pop(), ()):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found


def plan(work: Path, *extra: str) -> tuple[dict[str, DagNode], list[tuple[str, str]], Counter]:
    """The DAG with what needs to run, and the dry run's job counts per rule."""
    config = work / "config.yaml"
    dag = run_snakemake(work, config, "--dag", "dot", *TRIGGERS, *extra).stdout
    nodes, edges = parse_dag(dag)
    dry = run_snakemake(work, config, "-n", *TRIGGERS, *extra)
    return nodes, edges, Counter(job_stats(dry.stdout + dry.stderr))


def list_changes(work: Path, kind: str) -> set[str]:
    out = run_snakemake(work, work / "config.yaml", "--list-changes", kind).stdout
    return {line.strip() for line in out.splitlines() if line.strip().startswith("results/")}


def summary_status(work: Path) -> dict[str, str]:
    """output file -> status column of `--summary` ("ok", "params changed", "missing", ...).

    Snakemake 9.27's `--list-changes params` also lists outputs whose params did not change
    (one per job); the summary's status is the reliable per-file answer.
    """
    out = run_snakemake(work, work / "config.yaml", "--summary", *TRIGGERS).stdout
    rows = [line.split("\t") for line in out.splitlines() if line.startswith("results/")]
    return {row[0]: row[4] for row in rows if len(row) > 4}


def assert_exactly_downstream(nodes, edges, counts, seeds: set[str]) -> None:
    expected = downstream(seeds, edges)
    needrun = {n for n, node in nodes.items() if node.needrun}
    extra = sorted(nodes[n].label.replace("\n", " ") for n in needrun - expected)
    missing = sorted(nodes[n].label.replace("\n", " ") for n in expected - needrun)
    assert not extra, f"stale but not downstream of the change: {extra}"
    assert not missing, f"downstream of the change but not stale: {missing}"
    assert counts == Counter(nodes[n].rule for n in expected), "the dry run disagrees with --dag"


def test_up_to_date_run_has_nothing_to_do(tiny_run, tmp_path):
    """The baseline of the tests below: an unchanged copy of the tiny run is complete."""
    work = copy_run(tiny_run, tmp_path / "work")
    nodes, _, counts = plan(work)
    assert nodes and not any(n.needrun for n in nodes.values())
    assert sum(counts.values()) == 0, counts


def test_changed_checkpoint_reruns_exactly_its_dependants(tiny_run, tmp_path):
    """Point round r1 at a checkpoint with new weights: only r1's intake and its dependants."""
    work = copy_run(tiny_run, tmp_path / "work")
    config = yaml.safe_load((work / "config.yaml").read_text())
    changed = config["models"][1]
    new_checkpoint = tmp_path / "output_iteration1_retrained"
    _copy_with_new_weights(Path(changed["checkpoint"]), new_checkpoint)
    changed["checkpoint"] = str(new_checkpoint)
    (work / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))

    record = f"results/checkpoints/{changed['name']}.json"
    assert list_changes(work, "input") == {record}
    nodes, edges, counts = plan(work)
    seeds = {
        n
        for n, node in nodes.items()
        if node.rule == "check_checkpoint" and f"model: {changed['name']}" in node.label
    }
    assert len(seeds) == 1
    assert_exactly_downstream(nodes, edges, counts, seeds)
    # The other models' intake and sampling are untouched (sampling jobs are the children of
    # their model's check_checkpoint job).
    others = {n for n, node in nodes.items() if node.rule == "check_checkpoint" and n not in seeds}
    assert len(others) == len(config["models"]) - 1
    other_samples = {c for p, c in edges if p in others and nodes[c].rule == "sample"}
    assert other_samples, "no sampling jobs of the other models in the DAG"
    assert not any(nodes[n].needrun for n in others | other_samples)


def _copy_with_new_weights(source: Path, dest: Path) -> None:
    """A copy of a checkpoint as another training round would leave it: same files, new weights."""
    import shutil

    shutil.copytree(source, dest)
    weights = dest / "model.safetensors"
    tensors = load_file(weights)
    name = sorted(tensors)[0]
    tensors[name] = tensors[name] + 0.01
    save_file(tensors, weights, metadata={"format": "pt"})


# (config section, key, new value, the rule that reads it)
PARAM_CHANGES = [
    ("probes", "C", 0.5, "probes"),
    ("filter", "min_length", 6, "filter_samples"),
    ("kl", "max_sequences", 12, "kl"),
]


@pytest.mark.parametrize(("section", "key", "value", "rule"), PARAM_CHANGES)
def test_changed_parameter_reruns_only_its_rule_and_what_follows(
    tiny_run, tmp_path, section, key, value, rule
):
    work = copy_run(tiny_run, tmp_path / "work")
    produced = {out: job.rule for job in finished_jobs(work) for out in job.output}
    if rule not in produced.values():
        pytest.skip(f"the tiny run has no '{rule}' jobs (stage not there yet)")
    config = yaml.safe_load((work / "config.yaml").read_text())
    assert config.get(section, {}).get(key) != value
    config.setdefault(section, {})[key] = value
    (work / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))

    status = summary_status(work)
    changed = {f for f, state in status.items() if state == "params changed"}
    assert rule in {produced[f] for f in changed}, f"--summary shows no params change of {rule}"
    nodes, edges, counts = plan(work)
    seeds = {n for n, node in nodes.items() if node.rule == rule and node.needrun}
    assert seeds, f"no {rule} job is stale"
    assert_exactly_downstream(nodes, edges, counts, seeds)
    # A rule upstream of or beside `rule` that declared the same section would show up here.
    after = {nodes[n].rule for n in downstream(seeds, edges)}
    assert {produced[f] for f in changed} <= after, changed
