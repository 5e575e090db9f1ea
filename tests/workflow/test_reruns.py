"""Stale reruns: a change reruns exactly what depends on it, and the dry run says so.

Each test copies the finished tiny run (tests/conftest.py:tiny_run), changes one thing, and
checks Snakemake's own answers: `--list-changes input|params` names the changed job's outputs,
and the jobs that `-n` (and `--dag`) would run are exactly the changed jobs and everything
downstream of them in the DAG, nothing else.
"""

from __future__ import annotations

import os
import re
import stat
import subprocess
import tempfile
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
    ("potts", "fdr", 0.1, "potts_compare"),
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


# ----------------------------------------------------------------------------- exact reruns
# Each study edit below must plan exactly the jobs it adds (and the aggregates that read them),
# never a rerun of an unchanged job.


def wildcards_of(node: DagNode) -> dict[str, str]:
    """The wildcards in a `--dag` label ("rule\nkey: value\n...")."""
    pairs = (line.split(": ", 1) for line in node.label.split("\n")[1:] if ": " in line)
    return dict(pairs)


def edit_config(work: Path, edit) -> dict:
    config = yaml.safe_load((work / "config.yaml").read_text())
    edit(config)
    (work / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    return config


def stale(nodes: dict[str, DagNode]) -> list[DagNode]:
    return [node for node in nodes.values() if node.needrun]


def planned_jobs(work: Path, *targets: str) -> list[tuple[str, dict[str, str]]]:
    """(rule, wildcards) of every job the dry run plans (`--dag` labels omit some wildcards)."""
    after = ["--", *targets] if targets else []  # --rerun-triggers takes values up to "--"
    out = run_snakemake(work, work / "config.yaml", "-n", *TRIGGERS, *after).stdout
    jobs = []
    for block in re.split(r"\n(?=[ \t]*(?:local)?rule \w+:)", out):
        head = re.match(r"\s*(?:local)?rule (\w+):", block)
        if not head:
            continue
        line = re.search(
            r"^\s+wildcards: (.*)$", re.split(r"\n\s*\[", block)[0], flags=re.MULTILINE
        )
        values = dict(item.split("=", 1) for item in line.group(1).split(", ")) if line else {}
        jobs.append((head.group(1), values))
    return jobs


def assert_plan(work: Path, expected, required: set[str]) -> None:
    """Every job the dry run plans is one `expected(rule, wildcards)` names, and each rule of
    `required` has at least one planned job."""
    jobs = planned_jobs(work)
    unexpected = sorted(f"{rule} {w}" for rule, w in jobs if not expected(rule, w))
    assert not unexpected, f"planned but not expected: {unexpected}"
    missing = required - {rule for rule, _ in jobs}
    assert not missing, f"nothing planned for {sorted(missing)}"


FINAL = {"report", "all"}


def test_adding_an_embedder_runs_only_its_jobs(tiny_run, tmp_path):
    """activations.embedders [base] -> [base, self]: the base lens's extraction and everything
    after it stay; only the self lens's jobs (and the report) run. Probes and sanity checks do
    not run for `self` (each round's own weights embed its samples)."""
    work = copy_run(tiny_run, tmp_path / "work")
    edit_config(work, lambda c: c["activations"].update(embedders=["base", "self"]))
    assert_plan(
        work,
        lambda rule, w: (
            rule in FINAL or (w.get("embedder") == "self" and rule not in ("probes", "sanity"))
        ),
        {"extract", "gather_pooled", "train_sae", "feature_stats", "diff"},
    )


def test_adding_a_scheme_runs_only_its_jobs(tiny_run, tmp_path):
    """A new pooled group trains one SAE family, its feature statistics and the pooled diff."""
    work = copy_run(tiny_run, tmp_path / "work")
    edit_config(work, lambda c: c["sae"].update(groups={"late": ["r2"]}))
    assert_plan(
        work,
        lambda rule, w: (
            rule in FINAL
            or (rule in ("train_sae", "feature_stats") and w.get("scheme") == "pooled_late")
            or (rule == "diff" and w.get("family") == "pooled")
        ),
        {"train_sae", "feature_stats", "diff"},
    )


def _job_set(jobs) -> Counter:
    return Counter((rule, tuple(sorted(w.items()))) for rule, w in jobs)


# The tiny study: the base embeds every model (embedder r0), two extraction parts, and the SAE
# schemes and diff families of the schema's default sae.schemes.
TINY_MODELS = ("r0", "r1", "r2")
TINY_PARTS = ("00000", "00001")
TINY_SCHEMES = ("base", "ft_r1", "ft_r2", "pooled")
TINY_FAMILIES = ("base", "per_model", "pooled")


@pytest.mark.parametrize("with_saes", [False, True], ids=["tokens only", "tokens and SAEs"])
def test_adding_a_token_layer_runs_only_that_layers_jobs(tiny_run, tmp_path, with_saes):
    """token_layers [1, 2] -> [1, 2, 0] (and sae.layers [1] -> [1, 0]): the new layer's token
    parts (one job per part, whose forward pass stops at layer 0), its SAE families, their
    feature statistics and diffs; no pooled extraction, no other layer's token parts, probes,
    sanity checks or SAEs."""
    work = copy_run(tiny_run, tmp_path / "work")

    def add_layer(config):
        assert config["activations"]["token_layers"] == [1, 2] and config["sae"]["layers"] == [1]
        config["activations"]["token_layers"].append(0)
        if with_saes:
            config["sae"]["layers"].append(0)

    edit_config(work, add_layer)
    new = {"embedder": "r0", "layer": "00"}
    expected = [("all", {})]
    expected += [
        ("extract_tokens", {**new, "model": m, "part": p}) for m in TINY_MODELS for p in TINY_PARTS
    ]
    if with_saes:
        expected += [("report", {})]
        expected += [
            (rule, {**new, "scheme": s})
            for rule in ("train_sae", "feature_stats")
            for s in TINY_SCHEMES
        ]
        # The null fine-tune of the new layer calibrates its direction cut (no feature stats).
        expected += [("train_sae", {**new, "scheme": "null_ft"})]
        expected += [("diff", {**new, "family": f}) for f in TINY_FAMILIES]
    assert _job_set(planned_jobs(work)) == _job_set(expected)


# Rules that read every model, so adding one reruns them: summaries, the clustering and the
# probes over all rounds, and the feature statistics (each SAE encodes every model's tokens).
ALL_MODEL_RULES = {
    "sampling_summary",
    "cluster_sequences",
    "probes",
    "sanity",
    "feature_stats",
    "diff",
    "kl_summary",
    # model_diff: a crosscoder per layer over every model, its profile and agreement
    "model_diff_profile",
    "crosscoder",
    "diff_sae",
    "model_diff_agreement",
    "potts_summary",
    *FINAL,
}


def test_adding_a_model_runs_only_its_jobs_and_the_aggregates(tiny_run, tiny_checkpoints, tmp_path):
    work = copy_run(tiny_run, tmp_path / "work")
    new = tmp_path / "output_iteration3"
    _copy_with_new_weights(Path(tiny_checkpoints["r2"]), new)
    edit_config(work, lambda c: c["models"].append({"name": "r3", "checkpoint": str(new)}))
    assert_plan(
        work,
        lambda rule, w: (
            w.get("model") == "r3"
            or w.get("potts_set") == "r3"
            or rule in ALL_MODEL_RULES
            # The SAE folds are per model (plmdiff.sae.folds): only the SAEs that train on r3
            # run; the base SAE and the other rounds' fine-tunes keep their folds.
            or (rule == "train_sae" and w.get("scheme") in ("ft_r3", "pooled"))
        ),
        {"check_checkpoint", "sample", "extract", "sae_folds", "train_sae", "kl"},
    )


@pytest.mark.parametrize(
    ("section", "key", "value"),
    [
        (None, "device", "cpu"),
        (None, "allow_pickle", True),
        ("activations", "batch_tokens", 1024),
        ("activations", "gpus", 2),
        ("sampling", "batch_size", 4),
    ],
)
def test_keys_that_do_not_change_results_rerun_nothing(tiny_run, tmp_path, section, key, value):
    """Switching the device (or how a job is batched) must not invalidate SAEs or anything."""
    work = copy_run(tiny_run, tmp_path / "work")
    edit_config(work, lambda c: (c.setdefault(section, {}) if section else c).update({key: value}))
    nodes, _, counts = plan(work)
    assert not stale(nodes) and sum(counts.values()) == 0, counts


def _run_as_normal_user(work: Path, *cmd: str) -> subprocess.CompletedProcess:
    """`cmd` as a user without root's rights (created when this runs as root)."""
    if os.geteuid() != 0:
        return subprocess.run(cmd, capture_output=True, text=True, check=False)
    user = "plmdiff-test"
    if subprocess.run(["id", user], capture_output=True, check=False).returncode != 0:
        made = subprocess.run(
            ["useradd", "--no-create-home", user], capture_output=True, text=True, check=False
        )
        if made.returncode != 0:
            pytest.skip(f"cannot create a normal user to test as: {made.stderr.strip()}")
    subprocess.run(["chown", "-R", user, str(work)], check=True)
    return subprocess.run(["runuser", "-u", user, "--", *cmd], capture_output=True, text=True)


def test_a_normal_user_deletes_an_sae_and_only_it_is_retrained(tiny_run, tmp_path):
    """SAEs are not protected: no read-only trap (a normal user can delete one), no whole-run
    abort; asking for the deleted SAE retrains its family's job only."""
    # Outside pytest's root-only temporary tree, so that the normal user can reach it.
    shared = Path(tempfile.mkdtemp(prefix="plmdiff-normal-user-"))
    shared.chmod(0o755)
    work = copy_run(tiny_run, shared / "work")
    saes = sorted((work / "results" / "saes").glob("*/layer_*/ft_r1/fold_0"))
    assert saes, "no ft_r1 SAE in the tiny run"
    target = saes[0]
    assert os.stat(target / "sae_weights.safetensors").st_mode & stat.S_IWUSR
    removed = _run_as_normal_user(work, "rm", "-r", str(target))
    assert removed.returncode == 0, removed.stderr
    assert not target.exists()
    # A missing intermediate output alone reruns nothing (its readers are up to date); asked
    # for, the deleted SAE is retrained by its family's one job, and nothing else runs.
    layer = target.parent.parent.name.removeprefix("layer_")
    jobs = planned_jobs(work, str(target.relative_to(work)))
    assert jobs == [("train_sae", {"embedder": "r0", "layer": layer, "scheme": "ft_r1"})], jobs


def _resources(text: str, rule: str) -> list[dict[str, str]]:
    found = []
    for block in re.split(r"\n(?=[ \t]*(?:local)?rule \w+:)", text):
        if re.match(rf"\s*(?:local)?rule {rule}:", block):
            line = re.search(r"^\s+resources: (.*)$", block, flags=re.MULTILINE)
            found.append(dict(item.split("=", 1) for item in line.group(1).split(", ")))
    return found


# What these rules asked for whatever the checkpoint, before resources followed it.
OLD_FIXED_MB = {
    "check_checkpoint": 4000,
    "sample": 8000,
    "extract": 16000,
    "train_sae": 16000,
    "kl": 16000,
}


def test_model_rule_resources_follow_the_checkpoint_and_the_config(tiny_run, tmp_path):
    """check_checkpoint, sample, extract, train_sae ask for what the checkpoint (its record) and
    the config need, not fixed amounts; more sequences per shard ask for more time."""
    work = copy_run(tiny_run, tmp_path / "work")
    rules = ("check_checkpoint", "sample", "extract", "train_sae", "kl")
    first = run_snakemake(work, work / "config.yaml", "-n", "--forcerun", *rules).stdout
    for rule in rules:
        values = _resources(first, rule)
        assert values, rule
        for resources in values:
            assert resources["mem_mb"].isdigit() and resources["runtime"].isdigit(), resources
            # A 0.1M-parameter checkpoint: below the amounts these rules used to fix.
            assert int(resources["mem_mb"]) < OLD_FIXED_MB[rule], (rule, resources)
    edit_config(work, lambda c: c["sampling"].update(n_sequences=48_000_000))
    second = run_snakemake(work, work / "config.yaml", "-n", "--forcerun", "sample").stdout
    before = max(int(r["runtime"]) for r in _resources(first, "sample"))
    after = min(int(r["runtime"]) for r in _resources(second, "sample"))
    assert after > before, (before, after)
