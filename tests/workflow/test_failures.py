"""Failure handling, each case tested for real: a killed job, a failed attempt, CUDA out-of-memory.

- SIGKILL of a whole local run mid-write (extraction streams its Parquet parts for most of the
  job): no output under its final name is partial, Snakemake plans the job again, and the rerun
  gives the files of an uninterrupted run.
- scancel of a running SLURM job: the profile's retries resubmit it with twice the memory and
  time (visible in the sbatch call) and the result equals the uninterrupted run's.
- A job that exceeds its memory is killed by SLURM and retried with doubled memory.
- CUDA out-of-memory inside sampling and extraction (simulated in the model's forward): the
  batch is halved, a warning is logged, and the outputs equal those of a run without OOM.
"""

from __future__ import annotations

import os
import re
import signal
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import torch
import yaml

from plmdiff.config.schema import validate_config
from plmdiff.core.fasta import SequenceEntry, write_fasta
from plmdiff.core.runtime import write_json
from plmdiff.models.checkpoints import inspect_checkpoint
from plmdiff.models.text import PromptFormat
from plmdiff.testing.checkpoints import family_sequences
from tests.conftest import LOCAL_CORES, REPO, run_snakemake, tiny_config
from tests.slurm.cluster import TEST_PROFILE_OPTIONS
from tests.slurm.workflow import (
    compare_files,
    compare_trees,
    copy_run,
    finish,
    job_stats,
    start_snakemake,
    wait_until,
)

# ----------------------------------------------------------------------------- the checks themselves


def test_compare_trees_sees_a_changed_value(tmp_path):
    """The output comparison the failure tests rely on finds a one-value change."""
    import pyarrow as pa

    for name, value in (("a", 1.0), ("b", 1.01)):
        (tmp_path / name).mkdir()
        pq.write_table(pa.table({"x": [0.5, value]}), tmp_path / name / "t.parquet")
        (tmp_path / name / "s.json").write_text('{"n": 3}')
    assert compare_trees(tmp_path / "a", tmp_path / "a") == []
    problems = compare_trees(tmp_path / "a", tmp_path / "b")
    assert len(problems) == 1 and problems[0].startswith("t.parquet")
    assert compare_trees(tmp_path / "missing", tmp_path / "b") == ["nothing to compare"]


# ----------------------------------------------------------------------------- SIGKILL


def _embedder(config: dict) -> str:
    name = config["activations"]["embedders"][0]
    return config["models"][0]["name"] if name == "base" else name


@pytest.mark.workflow
@pytest.mark.slow
def test_sigkill_mid_write_leaves_no_finished_looking_output(tiny_run, tmp_path):
    """Kill a whole run (Snakemake and its job) while extraction writes its Parquet parts."""
    config = yaml.safe_load((tiny_run / "config.yaml").read_text())
    embedder, model = _embedder(config), config["models"][1]["name"]
    # The pooled parts (rule extract); the token parts (extract_tokens) are another rule's.
    parts_dir = f"results/activations/{embedder}/{model}/pooled"
    target = f"results/activations/{embedder}/{model}.pooled.parquet"
    work = copy_run(tiny_run, tmp_path / "work", drop=[parts_dir, target])
    configfile = work / "config.yaml"

    proc = start_snakemake(work, configfile, *LOCAL_CORES, target)
    try:
        # Kill the moment the first file of a part appears, whatever its name: a writer that
        # wrote under the final name would be caught with a partial file there.
        wait_until(
            lambda: [p for p in (work / parts_dir).rglob("*") if p.is_file()],
            timeout=600,
            what="an extraction part being written",
            proc=proc,
        )
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()

    # Under its final name, every file is whole; what was mid-write exists only as a temp file.
    finished = [p for p in (work / parts_dir).rglob("*.parquet") if not p.name.startswith(".")]
    for path in finished:
        try:
            pq.read_metadata(path)
        except Exception as exc:
            raise AssertionError(
                f"a killed job left a partial file under its final name: {path}"
            ) from exc
    left = [p for p in (work / parts_dir).rglob(".*.tmp-*") if p.is_file()]
    assert left, "no temp file left: the kill did not land while a part was being written"

    # Snakemake does not take the killed job for done: a dry run plans it again.
    plan = run_snakemake(work, configfile, "-n", "--rerun-incomplete", target)
    planned = job_stats(plan.stdout + plan.stderr)
    assert planned.get("extract", 0) >= 1 and planned.get("gather_pooled") == 1, planned

    # The killed Snakemake left its lock behind, as after a crash: unlock, then rerun.
    run_snakemake(work, configfile, "--unlock")
    run_snakemake(work, configfile, *LOCAL_CORES, "--rerun-incomplete", target)
    wanted = sorted(
        str(p.relative_to(tiny_run))
        for p in [tiny_run / target, *(tiny_run / parts_dir).rglob("*.parquet")]
        if not p.name.startswith(".")
    )
    assert compare_trees(tiny_run, work, wanted) == []


# ----------------------------------------------------------------------------- SLURM: scancel, OOM


@pytest.mark.slurm
@pytest.mark.workflow
@pytest.mark.slow
def test_scancelled_job_is_retried_with_more_memory_and_time(local_slurm, tiny_run, tmp_path):
    """scancel a running GPU job: the retry asks for twice the memory and time, and succeeds."""
    cluster = local_slurm
    config = yaml.safe_load((tiny_run / "config.yaml").read_text())
    model = config["models"][1]["name"]
    target = f"results/samples/{model}/shard_000.parquet"
    work = copy_run(tiny_run, tmp_path / "work", drop=[target])
    # The fake GPUs cannot run CUDA: 'auto' would (rightly) refuse a granted GPU with CPU torch.
    config["device"] = "cpu"
    (work / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    profile = cluster.site_profile(tmp_path / "profile", **TEST_PROFILE_OPTIONS)
    rule_log = work / f"logs/sample/{model}/shard_000.log"
    cluster.forget_calls()

    proc = start_snakemake(
        work, work / "config.yaml", "--profile", str(profile), target, env=cluster.env
    )
    try:
        # Mid-run: the job runs on the node and its script has loaded the model onto a device.
        wait_until(
            lambda: rule_log.exists() and "device:" in rule_log.read_text(errors="replace"),
            timeout=300,
            what="the sampling job to start",
            proc=proc,
        )
        first = cluster.sbatch_calls()
        assert len(first) == 1 and first[0].rule == "sample"
        cluster.run("scancel", first[0].job_id)
        status, out = finish(proc, timeout=600)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert status == 0, f"the retry did not finish the run:\n{out[-5000:]}"

    calls = [c for c in cluster.sbatch_calls() if c.rule == "sample"]
    assert [c.attempt for c in calls] == [1, 2]
    assert calls[1].mem_mb == 2 * calls[0].mem_mb, [c.mem_mb for c in calls]
    assert calls[1].runtime_min == 2 * calls[0].runtime_min, [c.runtime_min for c in calls]
    assert calls[1].partition == cluster.gpu_partition and calls[1].gpus
    assert cluster.job(calls[0].job_id)["JobState"] == "CANCELLED"
    assert cluster.job(calls[1].job_id)["JobState"] == "COMPLETED"
    assert compare_files(tiny_run / target, work / target) is None


def _resource_helpers() -> str:
    """mem_mb() and runtime_min() exactly as rules/common.smk defines them."""
    source = (REPO / "rules" / "common.smk").read_text()
    helpers = [
        re.search(rf"^def {name}\(.*?(?=^\S)", source, flags=re.MULTILINE | re.DOTALL)
        for name in ("attempt_scaled", "mem_mb", "runtime_min")
    ]
    assert all(helpers), "rules/common.smk no longer defines mem_mb() and runtime_min()"
    return "import math\n\n" + "\n".join(h.group(0) for h in helpers)


# The job needs NEED_MB (plus its own Snakemake process); the first attempt gets BASE_MB.
BASE_MB, NEED_MB = 1000, 1200
HUNGRY_SNAKEFILE = """\
# Test-only workflow: a job that needs more memory than its first attempt is given.
{helpers}

rule hungry:
    output:
        "hungry.txt",
    log:
        "logs/hungry.log",
    resources:
        mem_mb=mem_mb({base}),
        runtime=runtime_min(5),
    shell:
        "{python} -c 'import time; b = bytearray({need} * 2**20); b[::4096] = bytes(len(b[::4096])); "
        "time.sleep(4)' > {{log}} 2>&1 && echo done > {{output}}"
"""


@pytest.mark.slurm
@pytest.mark.slow
def test_out_of_memory_job_is_retried_with_more_memory(local_slurm, tmp_path):
    cluster = local_slurm
    snakefile = tmp_path / "Snakefile"
    snakefile.write_text(
        HUNGRY_SNAKEFILE.format(
            helpers=_resource_helpers(), base=BASE_MB, need=NEED_MB, python=sys.executable
        )
    )
    profile = cluster.site_profile(tmp_path / "profile", **TEST_PROFILE_OPTIONS)
    cluster.forget_calls()
    proc = start_snakemake(
        tmp_path, None, "--snakefile", str(snakefile), "--profile", str(profile), env=cluster.env
    )
    status, out = finish(proc, timeout=600)
    assert status == 0, out[-5000:]
    assert (tmp_path / "hungry.txt").read_text().strip() == "done"

    calls = cluster.sbatch_calls()
    assert [c.attempt for c in calls] == [1, 2], [c.args for c in calls]
    assert [c.mem_mb for c in calls] == [BASE_MB, 2 * BASE_MB]
    assert calls[1].runtime_min == 2 * calls[0].runtime_min
    assert cluster.job(calls[0].job_id)["JobState"] in ("FAILED", "OUT_OF_MEMORY", "CANCELLED")
    assert cluster.job(calls[1].job_id)["JobState"] == "COMPLETED"
    slurm_log = cluster.job(calls[0].job_id)["StdOut"]
    assert "memory limit" in Path(slurm_log).read_text(), "SLURM did not kill it for memory"


# ----------------------------------------------------------------------------- CUDA out of memory


def _oom_above(monkeypatch, limit: int) -> dict[str, int]:
    """Make every GPT-2 forward pass with more than `limit` sequences raise CUDA OOM."""
    from transformers.models.gpt2.modeling_gpt2 import GPT2Model

    original = GPT2Model.forward
    seen = {"oom": 0, "largest_ok": 0}

    def forward(self, *args, **kwargs):
        ids = kwargs.get("input_ids", args[0] if args else None)
        batch = (ids if ids is not None else kwargs["inputs_embeds"]).shape[0]
        if batch > limit:
            seen["oom"] += 1
            raise torch.cuda.OutOfMemoryError(
                f"CUDA out of memory. Tried to allocate {batch} GiB (simulated)"
            )
        seen["largest_ok"] = max(seen["largest_ok"], batch)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(GPT2Model, "forward", forward)
    return seen


@pytest.fixture(scope="module")
def study(tiny_checkpoints, tmp_path_factory):
    """The tiny study's validated config and the base model's checkpoint record."""
    config = validate_config(tiny_config(tiny_checkpoints))
    root = tmp_path_factory.mktemp("oom")
    base = config["models"][0]
    record = inspect_checkpoint(
        base["checkpoint"], base["name"], PromptFormat.from_section(config["prompt"])
    )
    record_path = root / f"{base['name']}.json"
    write_json(record_path, record.to_json())
    return config, record, record_path, root


def test_sampling_oom_halves_the_batch_and_gives_the_same_shard(study, monkeypatch, caplog):
    from plmdiff.sampling.io import write_samples
    from plmdiff.sampling.job import sample_shard

    config, record, record_path, root = study
    sampling = {
        **config["sampling"],
        "n_sequences": 8,
        "shards": 1,
        "batch_size": 4,
        "max_length": 40,
    }

    def shard(name: str) -> Path:
        table = sample_shard(
            str(record_path), record.model, 0, sampling, config["prompt"], device="cpu"
        )
        write_samples(root / name / "shard.parquet", table)
        return root / name

    reference = shard("sampled")
    seen = _oom_above(monkeypatch, 1)
    with caplog.at_level("WARNING", logger="plmdiff"):
        survived = shard("sampled_oom")
    assert seen["oom"] > 0 and seen["largest_ok"] == 1
    assert "CUDA out of memory with a sampling batch of 4; halving to 2" in caplog.text
    # Same sequences, same metadata; perplexities agree to float rounding (other batch shapes).
    assert compare_trees(reference, survived) == []


def test_extraction_oom_halves_the_batch_and_writes_the_same_parts(study, monkeypatch, caplog):
    from plmdiff.activations.extraction import ExtractionSettings, extract_part

    config, record, _, root = study
    fasta = root / "family.fasta"
    write_fasta(
        fasta,
        [
            SequenceEntry(f"s{i:03d}", s[: 30 + 3 * i])
            for i, s in enumerate(family_sequences(limit=24))
        ],
    )
    settings = ExtractionSettings.from_section({**config["activations"], "shards": 1})

    def extract(out: Path):
        token_paths = {
            layer: out / f"layer_{layer:02d}" / "part-00000.parquet"
            for layer in settings.token_layers
        }
        extract_part(
            fasta_path=fasta,
            record=record,
            checkpoint_dir=record.path,
            embedder=record.model,
            model="family",
            part=0,
            fmt=PromptFormat.from_section(config["prompt"]),
            settings=settings,
            pooled_path=out / "pooled" / "part-00000.parquet",
            token_paths=token_paths,
            device="cpu",
        )

    extract(root / "reference")
    seen = _oom_above(monkeypatch, 2)
    with caplog.at_level("WARNING", logger="plmdiff"):
        extract(root / "oom")
    assert seen["oom"] > 0 and seen["largest_ok"] <= 2
    assert re.search(r"CUDA out of memory with a extraction batch of \d+; halving", caplog.text)
    assert compare_trees(root / "reference", root / "oom") == []


def test_a_single_sequence_that_does_not_fit_is_an_error(study, monkeypatch):
    """OOM splitting stops at one sequence: the error reaches the rule (and its retry)."""
    from plmdiff.sampling.job import sample_shard

    config, record, record_path, _ = study
    _oom_above(monkeypatch, 0)
    sampling = {**config["sampling"], "n_sequences": 2, "shards": 1, "max_length": 40}
    start = time.monotonic()
    with pytest.raises(torch.cuda.OutOfMemoryError):
        sample_shard(str(record_path), record.model, 0, sampling, config["prompt"], device="cpu")
    assert time.monotonic() - start < 60
