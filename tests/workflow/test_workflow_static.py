"""Workflow-level checks that need no real run: lint, formatting, DAG building, bad configs."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from collections import Counter
from pathlib import Path

import pytest
import yaml

from plmdiff.models.zymctrl import zymctrl_config_dict
from tests.conftest import BIN, REPO, run_snakemake, tiny_config, write_config

pytestmark = pytest.mark.workflow


def _tool(*cmd: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(BIN / cmd[0]), *cmd[1:]], cwd=REPO, capture_output=True, text=True, timeout=300
    )


def test_snakemake_lint_has_no_findings():
    proc = _tool("snakemake", "--lint")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "Congratulations, your workflow is in a good condition!" in proc.stdout + proc.stderr


def test_snakefmt_check():
    proc = _tool("snakefmt", "--check", ".")
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_ruff_check_and_format():
    lint = _tool("ruff", "check", ".")
    assert lint.returncode == 0, lint.stdout
    fmt = _tool("ruff", "format", "--check", ".")
    assert fmt.returncode == 0, fmt.stdout


def _dry_run_jobs(proc: subprocess.CompletedProcess) -> dict[str, int]:
    """Job counts per rule from the dry run's summary table."""
    counts: dict[str, int] = {}
    lines = proc.stdout.splitlines()
    try:
        start = next(i for i, line in enumerate(lines) if line.startswith("Job stats:"))
    except StopIteration:
        return counts
    for line in lines[start + 3 :]:
        parts = line.split()
        if len(parts) != 2 or parts[0] == "total":
            break
        counts[parts[0]] = int(parts[1])
    return counts


def test_demo_dry_run_from_clean_clone(tmp_path):
    """The default config (the demo) builds its whole DAG with no results yet."""
    proc = run_snakemake(tmp_path, None, "-n", "--quiet", "rules")
    jobs = _dry_run_jobs(proc) or proc.stdout
    assert "check_checkpoint" in str(jobs), proc.stdout
    assert "demo_train_base" in str(jobs), proc.stdout


def _fake_zymctrl_checkpoint(path: Path) -> Path:
    """Files a DAG-time check looks for; contents are checked only by the intake job."""
    path.mkdir(parents=True)
    (path / "config.json").write_text(json.dumps(zymctrl_config_dict()))
    (path / "model.safetensors").write_bytes(b"")
    (path / "tokenizer.json").write_text("{}")
    return path


@pytest.fixture(scope="module")
def paper_study(tmp_path_factory) -> tuple[Path, Path]:
    """config/config.yaml as shipped (10 ZymCTRL checkpoints, 37 layers) over fake checkpoints."""
    root = tmp_path_factory.mktemp("paper")
    config = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    for model in config["models"]:
        _fake_zymctrl_checkpoint(root / model["checkpoint"])
    return root, write_config(root / "study.yaml", config)


def test_paper_scale_dry_run_builds_batched_dag(paper_study):
    root, configfile = paper_study
    proc = run_snakemake(root, configfile, "-n", "--quiet", "rules")
    jobs = _dry_run_jobs(proc)
    assert jobs.get("check_checkpoint") == 10, proc.stdout
    if "probes" in jobs:  # one batched job per (embedder, pooling), not per layer x fold
        assert jobs["probes"] == 2
    if "sample" in jobs:
        assert jobs["sample"] == 10 * 4


def _config_error(tmp_path: Path, config: dict) -> str:
    configfile = write_config(tmp_path / "bad.yaml", config)
    proc = run_snakemake(tmp_path, configfile, "-n", check=False)
    assert proc.returncode != 0
    lines = [
        line for line in (proc.stdout + proc.stderr).splitlines() if line.startswith("plmdiff:")
    ]
    assert len(lines) == 1, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr
    return lines[0]


def test_typo_key_stops_dag_build(tiny_checkpoints, tmp_path):
    cfg = tiny_config(tiny_checkpoints)
    cfg["sampling"]["topk"] = 5
    msg = _config_error(tmp_path, cfg)
    assert "bad.yaml" in msg and "sampling.topk" in msg and "did you mean 'top_k'" in msg


def test_wrong_type_stops_dag_build(tiny_checkpoints, tmp_path):
    cfg = tiny_config(tiny_checkpoints)
    cfg["sampling"]["n_sequences"] = "many"
    msg = _config_error(tmp_path, cfg)
    assert "sampling.n_sequences = 'many'" in msg and "integer" in msg


def test_unknown_model_name_stops_dag_build(tiny_checkpoints, tmp_path):
    cfg = tiny_config(tiny_checkpoints)
    cfg["activations"]["embedders"] = ["r7"]
    msg = _config_error(tmp_path, cfg)
    assert "activations.embedders: unknown model 'r7'" in msg and "r0, r1, r2" in msg


def test_missing_checkpoint_directory_stops_dag_build(tiny_checkpoints, tmp_path):
    cfg = tiny_config(tiny_checkpoints)
    cfg["models"][2]["checkpoint"] = str(tmp_path / "no_such_dir")
    msg = _config_error(tmp_path, cfg)
    assert "models[2].checkpoint" in msg and "no_such_dir" in msg and "does not exist" in msg


def test_pickle_only_checkpoint_stops_dag_build(tiny_checkpoints, tmp_path):
    ckpt = shutil.copytree(tiny_checkpoints["r1"], tmp_path / "pickled")
    (ckpt / "model.safetensors").rename(ckpt / "pytorch_model.bin")
    cfg = tiny_config(tiny_checkpoints)
    cfg["models"][1]["checkpoint"] = str(ckpt)
    msg = _config_error(tmp_path, cfg)
    assert "models[1].checkpoint" in msg and "allow_pickle: true" in msg


def test_layer_beyond_model_depth_stops_dag_build(tiny_checkpoints, tmp_path):
    cfg = tiny_config(tiny_checkpoints)
    cfg["activations"]["token_layers"] = [1, 3]
    cfg["sae"]["layers"] = [1]
    msg = _config_error(tmp_path, cfg)
    assert "activations.token_layers: layer 3" in msg and "layers 0..2" in msg


def test_model_diff_layer_beyond_model_depth_stops_dag_build(tiny_checkpoints, tmp_path):
    cfg = tiny_config(tiny_checkpoints)
    cfg["model_diff"]["layers"] = [1, 5]
    msg = _config_error(tmp_path, cfg)
    assert "model_diff.layers: layer 5" in msg and "layers 0..2" in msg


def test_sae_layer_outside_token_layers_stops_dag_build(tiny_checkpoints, tmp_path):
    cfg = tiny_config(tiny_checkpoints)
    cfg["sae"]["layers"] = [0]
    msg = _config_error(tmp_path, cfg)
    assert "sae.layers: layer 0 is not in activations.token_layers" in msg


def _planned_inputs(out: str) -> list[tuple[str, dict[str, str], list[str]]]:
    """(rule, wildcards, input files) of every job of a `-n` output."""
    jobs = []
    for block in re.split(r"\n(?=[ \t]*(?:local)?rule \w+:)", out):
        head = re.match(r"\s*(?:local)?rule (\w+):", block)
        if not head:
            continue
        block = re.split(r"\n\s*\[", block)[0]
        found = re.search(r"^\s+wildcards: (.+)$", block, re.M)
        wildcards = dict(w.split("=", 1) for w in found.group(1).split(", ")) if found else {}
        inputs = re.search(r"^\s+input: (.+)$", block, re.M)
        jobs.append((head.group(1), wildcards, inputs.group(1).split(", ") if inputs else []))
    return jobs


def test_sae_base_sequences_are_embedded_and_train_only_the_base_sae(tiny_checkpoints, tmp_path):
    """sae.base.sequences plans its FASTA, the extraction of its token parts (SAE layers only,
    by the base embedder) and makes them inputs of the base SAE, of no other scheme."""
    family = REPO / "resources" / "gamma_ca_4.2.1.1.fasta"
    cfg = tiny_config(tiny_checkpoints)
    cfg["sae"]["base"] = {"sequences": str(family)}
    proc = run_snakemake(tmp_path, write_config(tmp_path / "c.yaml", cfg), "-n")
    jobs = _planned_inputs(proc.stdout)
    source = "_sae_base"
    (prepare,) = [j for j in jobs if j[0] == "sae_base_sequences"]
    assert prepare[2] == [str(family)]
    extracted = sorted(
        (w["layer"], w["part"], inputs[0])
        for rule, w, inputs in jobs
        if rule == "extract_tokens" and w["model"] == source
    )
    fasta = f"results/fasta/{source}.fasta"
    assert extracted == [("01", "00000", fasta), ("01", "00001", fasta)]
    assert not [j for j in jobs if j[0] in ("extract", "kl") and j[1].get("model") == source]
    parts = {f"results/activations/r0/{source}/layer_01/part-0000{p}.parquet" for p in (0, 1)}
    for rule, w, inputs in jobs:
        if rule == "train_sae":
            base = w["scheme"] == "base"
            assert (parts <= set(inputs)) is base and (fasta in inputs) is base, (w, inputs)
        elif rule in ("feature_stats", "diff", "probes", "sanity"):
            assert not [f for f in inputs if source in f], (rule, w)


def test_missing_sae_base_sequences_stops_dag_build(tiny_checkpoints, tmp_path):
    cfg = tiny_config(tiny_checkpoints)
    cfg["sae"]["base"] = {"sequences": str(tmp_path / "no_family.fasta")}
    msg = _config_error(tmp_path, cfg)
    assert "sae.base.sequences" in msg and "no_family.fasta" in msg and "does not exist" in msg


def test_sae_base_sequences_with_an_imported_base_sae_stops_dag_build(tiny_checkpoints, tmp_path):
    cfg = tiny_config(tiny_checkpoints)
    family = REPO / "resources" / "gamma_ca_4.2.1.1.fasta"
    cfg["sae"]["base"] = {"sequences": str(family), "import": str(tmp_path / "sae")}
    msg = _config_error(tmp_path, cfg)
    assert "sae.base.sequences and sae.base.import are both set" in msg


def test_user_config_replaces_demo_defaults(tiny_checkpoints, tmp_path):
    """A --configfile is not merged with config/demo.yaml (no demo key leaks into a study)."""
    configfile = write_config(tmp_path / "c.yaml", tiny_config(tiny_checkpoints))
    proc = run_snakemake(tmp_path, configfile, "-n", "--quiet", "rules")
    assert "demo_train_base" not in proc.stdout
    assert "extended by additional config" not in proc.stdout + proc.stderr


# ----------------------------------------------------------------------------- cluster readiness

GPU_RULES = {
    "sample",
    "extract",
    "extract_tokens",
    "probes",
    "train_sae",
    "feature_stats",
    "kl",
    "potts_fit",
}
PROFILE = REPO / "profiles" / "slurm"


@pytest.fixture(scope="module")
def paper_study_two_lenses(paper_study) -> tuple[Path, Path]:
    """The paper-scale template with the base and the self lens (activations.embedders)."""
    root, configfile = paper_study
    config = yaml.safe_load(configfile.read_text())
    config["activations"]["embedders"] = ["base", "self"]
    return root, write_config(root / "study_two_lenses.yaml", config)


def slurm_submissions(dry_run: str) -> list[list[str]]:
    """The rules of each job a `-n --profile profiles/slurm` would submit: a job alone (a
    `rule` block at the top level) or a group job (`Group job ...:` and its indented jobs)."""
    submissions: list[list[str]] = []
    in_group = False
    for line in dry_run.splitlines():
        if re.match(r"^\[.*\] Group job \S+ \(jobs in lexicogr\. order\):", line):
            submissions.append([])
            in_group = True
        elif found := re.match(r"^(\s*)(?:local)?rule (\w+):", line):
            if found.group(1) and in_group:
                submissions[-1].append(found.group(2))
            else:
                submissions.append([found.group(2)])
                in_group = False
    return submissions


def test_slurm_submissions_are_read_from_a_dry_run():
    text = (
        "[Tue Dec  1 08:35:53 2026]\nrule kl:\n    wildcards: model=r1\n"
        "[Tue Dec  1 08:35:53 2026] Group job extract.r0.r1.00000 (jobs in lexicogr. order):\n\n"
        "    [Tue Dec  1 08:35:53 2026]\n    rule extract:\n        jobid: 3\n"
        "    [Tue Dec  1 08:35:53 2026]\n    rule extract_tokens:\n        jobid: 4\n"
        "[Tue Dec  1 08:35:53 2026]\nlocalrule all:\n"
    )
    assert slurm_submissions(text) == [["kl"], ["extract", "extract_tokens"], ["all"]]


def _timed_dry_run(root: Path, configfile: Path) -> tuple[subprocess.CompletedProcess, float]:
    """`snakemake -n --profile profiles/slurm` and the CPU seconds (user + sys) it took."""
    import resource

    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    proc = run_snakemake(root, configfile, "-n", "--profile", str(PROFILE))
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return proc, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def test_paper_scale_dag_has_few_full_gpu_jobs(paper_study_two_lenses):
    """10 checkpoints, base and self lenses, 6 SAE layers, 5 folds: at most 300 GPU jobs
    submitted to SLURM (the profile's groups: an extraction part's pooled and token jobs are one
    submission, an SAE family's training and feature statistics another; SAE replicas of a
    family share a job), and the dry run takes under 10 s of CPU (the best of up to three runs:
    on these VMs identical dry runs vary by 20-40% in CPU time, and interference
    only ever adds)."""
    root, configfile = paper_study_two_lenses
    proc, cpu_seconds = _timed_dry_run(root, configfile)
    for _ in range(2):
        if cpu_seconds < 10:
            break
        cpu_seconds = min(cpu_seconds, _timed_dry_run(root, configfile)[1])
    jobs = _dry_run_jobs(proc)
    submissions = slurm_submissions(proc.stdout)
    assert sum(len(s) for s in submissions) == sum(jobs.values()), jobs
    gpu_submissions = [s for s in submissions if GPU_RULES & set(s)]
    assert len(gpu_submissions) <= 300, Counter(tuple(sorted(set(s))) for s in gpu_submissions)
    # One per extraction part (2 lenses x 10 models x 2 parts): its pooled job and a token job
    # for each of the 6 token layers.
    parts = [s for s in submissions if "extract" in s]
    assert len(parts) == 2 * 10 * 2 and all(
        sorted(s) == ["extract"] + ["extract_tokens"] * 6 for s in parts
    )
    # 2 lenses x 6 layers x 12 schemes (base, 9 rounds, pooled, null_ft), 5 folds in each job;
    # the null fine-tune only calibrates the direction cut: no feature statistics of its own.
    assert jobs["train_sae"] == 2 * 6 * 12, jobs
    assert jobs["feature_stats"] == 2 * 6 * 11, jobs
    assert Counter(tuple(s) for s in submissions if "train_sae" in s) == {
        ("feature_stats", "train_sae"): 2 * 6 * 11,
        ("train_sae",): 2 * 6,
    }
    assert jobs["kl"] == 9, jobs  # every round against the base, not the base against itself
    assert cpu_seconds < 10, f"dry run took {cpu_seconds:.1f} s of CPU"


def _tiny_dry_run(tiny_checkpoints, tmp_path, *args: str) -> str:
    configfile = write_config(tmp_path / "c.yaml", tiny_config(tiny_checkpoints))
    proc = run_snakemake(tmp_path, configfile, "-n", *args)
    return proc.stdout + proc.stderr


def test_dry_run_shows_rule_wildcards_and_resources_of_every_job(tiny_checkpoints, tmp_path):
    """No `message:` hides a job's rule, wildcards and resources; no 'Shell command: None'."""
    out = _tiny_dry_run(tiny_checkpoints, tmp_path, "--profile", str(PROFILE))
    blocks = [
        re.split(r"\n\s*\[", block)[0]  # up to the next job's timestamp line
        for block in re.split(r"\n(?=\s*(?:local)?rule \w+:)", out)  # group jobs: indented
        if re.match(r"\s*(?:local)?rule \w+:", block)
    ]
    assert len(blocks) > 20, out[-2000:]
    assert {re.match(r"\s*(?:local)?rule (\w+):", b).group(1) for b in blocks} >= GPU_RULES
    for block in blocks:
        rule = re.search(r"^\s*(?:local)?rule (\w+):", block, re.M).group(1)
        if rule != "all":
            assert "    resources: " in block, block
        if rule in GPU_RULES:
            assert "    wildcards: " in block and "gpu=" in block, block
    assert "Shell command" not in out
    assert not any("message:" in p.read_text() for p in (REPO / "rules").glob("*.smk"))


def test_no_kl_of_the_base_against_itself(tiny_checkpoints, tmp_path):
    out = _tiny_dry_run(tiny_checkpoints, tmp_path, "--quiet", "rules")
    assert re.search(r"^kl\s+2$", out, re.M), out  # r1 and r2, never r0
    configfile = write_config(tmp_path / "c.yaml", tiny_config(tiny_checkpoints))
    proc = run_snakemake(tmp_path, configfile, "-n", "results/kl/r0.parquet", check=False)
    assert proc.returncode != 0


def test_importable_as_a_snakemake_module(tiny_checkpoints, tmp_path):
    """A second workflow imports plmdiff with `module` (rules prefixed) and dry-runs it: the
    schema, scripts and src/ are found next to plmdiff's Snakefile, not the importer's."""
    other = tmp_path / "other_workflow"
    other.mkdir()
    write_config(other / "study.yaml", tiny_config(tiny_checkpoints))
    (other / "Snakefile").write_text(
        'configfile: "study.yaml"\n\n\n'
        "module plmdiff:\n"
        f'    snakefile:\n        "{REPO / "Snakefile"}"\n'
        "    config:\n        config\n\n\n"
        "use rule * from plmdiff as plmdiff_*\n\n\n"
        "rule everything:\n"
        "    default_target: True\n"
        "    input:\n        rules.plmdiff_all.input,\n"
    )
    proc = subprocess.run(
        [str(BIN / "snakemake"), "-n", "--quiet", "rules"],
        cwd=other,
        capture_output=True,
        text=True,
        timeout=600,
        env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"},
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    jobs = _dry_run_jobs(proc)
    assert jobs.get("plmdiff_check_checkpoint") == 3, proc.stdout
    assert jobs.get("plmdiff_train_sae") and jobs.get("plmdiff_report") == 1, jobs
