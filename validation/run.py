"""Run a validation suite: build each study's checkpoints, run the workflow, score, summarise.

    python -m validation.run --suite full            # make validate
    python -m validation.run --suite ci              # make validate-ci
    python -m validation.run --suite full --only motif_strong_gpt2 --score-only

Work goes to `validation/work/<suite>/<study>/` (checkpoints, the workflow's outputs, logs):
checkpoints and finished workflow outputs are reused by a re-run. Scores go to
`validation/work/<suite>/scores.json` (`studies`: every study's scores and verdict; `null_fdp`:
the null studies' realised false discovery proportion) and a readable `summary.md`.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import resource
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import yaml

from plmdiff.config import paths
from plmdiff.config.schema import BASE_EMBEDDER, embeds_every_round, validate_config
from plmdiff.models.lm_training import LMTrainingConfig
from plmdiff.testing.checkpoints import family_sequences
from validation import model_diff, potts_scoring, scoring
from validation.checkpoints import PROMPT_FORMAT, build_base, build_rounds
from validation.report import summary_markdown
from validation.samples import sample_kept
from validation.studies import SUITES, Study, Suite
from validation.verdicts import null_fdp, potts_verdict, study_verdict

REPO = Path(__file__).resolve().parents[1]
WORK = REPO / "validation" / "work"
MODELS = ("r0", "r1", "r2")
LABEL = "4.2.1.1"
log = logging.getLogger("validation")


def study_config(study: Study, suite: Suite, checkpoints: list[Path]) -> dict:
    """The workflow config of one study: the suite's sizes, the study's seed and embedders."""
    fmt = PROMPT_FORMAT[study.arch]
    return {
        "models": [
            {"name": m, "checkpoint": str(p)} for m, p in zip(MODELS, checkpoints, strict=True)
        ],
        "prompt": {"format": fmt, "label": LABEL if fmt == "zymctrl" else ""},
        "sampling": {
            "n_sequences": study.n_sequences or suite.n_sequences,
            "shards": 1,
            "batch_size": 64,
            "max_length": study.crop + 24,
            "seed": study.seed,
            **suite.sampling,
        },
        "filter": {"min_length": 10, "dedupe": True, "min_sequences": 20},
        "activations": {
            "embedders": list(study.embedders),
            "token_layers": list(study.sae_layers(suite.layer)),
            "batch_tokens": 4096,
            "shards": 1,
            "rows_per_file": 8192,
        },
        "probes": {"folds": 3, "permutations": suite.probe_permutations, "C": 1.0, "max_iter": 100},
        "sae": {
            "layers": list(study.sae_layers(suite.layer)),
            "d_sae": suite.d_sae,
            "lr": suite.sae_lr,
            "k": suite.k,
            "batch_size": 256,
            "training_tokens": suite.sae_tokens,
            "finetune_tokens": suite.finetune_tokens,
            "kfold": suite.kfold,
            "schemes": list(suite.schemes),
            "dead_window": 5000,
            "eval_sequences": 8,
            "seed": study.seed,
        },
        "diff": {"top_n": 20, "top_examples": 3},
        "kl": {"max_sequences": 8},
        "device": "cpu",
        **({"potts": potts_scoring.config_section(None)} if study.potts else {}),
    }


def lens_dirs(study: Study) -> dict[str, str]:
    """Lens label -> the embedder directory the workflow writes ('base' is the base model)."""
    return {e: MODELS[0] if e == BASE_EMBEDDER else e for e in study.embedders}


def targets(study: Study, suite: Suite) -> list[str]:
    """What scoring reads: every diff family's feature table and the probes (no report, KL, t-SNE)."""
    out = []
    for embedder in lens_dirs(study).values():
        for lid in map(paths.layer_id, study.sae_layers(suite.layer)):
            out += [paths.diff_file(embedder, lid, f, "features.parquet") for f in suite.families]
            out.append(paths.sae_metrics(embedder, lid, paths.BASE_SCHEME, 0))
        if embeds_every_round(embedder):
            out += [paths.probe_file(embedder, p, "accuracy.tsv") for p in ("last", "mean")]
    out += potts_scoring.targets(MODELS[0], MODELS[-1]) if study.potts else []
    return out + model_diff.targets(study, suite.layer)


def training_configs(study: Study, suite: Suite) -> tuple[LMTrainingConfig, LMTrainingConfig]:
    """(base, round) training settings."""
    common = dict(batch_size=32, warmup_fraction=0.05, epochs=100)
    base = LMTrainingConfig(
        **common, lr=2e-3, seed=0, max_steps=study.base_steps or suite.base_steps
    )
    rounds = LMTrainingConfig(
        **common,
        lr=suite.round_lr,
        seed=study.seed,
        max_steps=study.round_steps or suite.round_steps,
    )
    return base, rounds


def build(study: Study, suite: Suite, root: Path, workdir: Path) -> list[Path]:
    family = family_sequences()
    base_cfg, round_cfg = training_configs(study, suite)
    shape = suite.shape
    # The base depends only on architecture, shape and steps: suites of one size share it.
    cache = (
        root.parent / "bases" / f"{study.arch}_{shape.n_layer}x{shape.n_embd}_{base_cfg.max_steps}"
    )
    base = build_base(
        cache,
        study.arch,
        suite.shape,
        [s[: study.crop] for s in family],
        base_cfg,
    )
    return build_rounds(
        workdir / "checkpoints",
        base,
        study.arch,
        study.round_data(family, base_sample_data(study, suite, base, len(family))),
        round_cfg,
        from_base=suite.rounds_from_base,
    )


# The name whose sampling stream (plmdiff.sampling.rng.model_seed) draws a null fine-tune's data:
# not a model of the workflow, so the rounds are not trained on the very samples of r0 the
# workflow analyses.
FINETUNE_STREAM = "null_finetune_data"


def base_sample_data(study: Study, suite: Suite, base: Path, n: int) -> list[str]:
    """The base's kept samples (the workflow's sampling and filter, n draws) that an
    `on_base_samples` study's rounds are fine-tuned on; nothing for any other study."""
    if not study.on_base_samples:
        return []
    config = study_config(study, suite, [base] * len(MODELS))
    config["sampling"]["n_sequences"] = n
    return sample_kept(base, FINETUNE_STREAM, validate_config(config))


def run_workflow(workdir: Path, configfile: Path, wanted: list[str], cores: int) -> float:
    """snakemake on the study, as a user runs it (and as tests/conftest.py run_snakemake does);
    returns the CPU seconds of snakemake and every job it ran (they are its waited-for
    descendants): on a shared machine the study's cost, where wall time measures the load."""
    bindir = Path(sys.executable).parent
    cmd = [
        str(bindir / "snakemake"),
        "--snakefile",
        str(REPO / "Snakefile"),
        "--directory",
        str(workdir),
        "--configfile",
        str(configfile),
        "--cores",
        str(cores),
        *wanted,
    ]
    env = {**os.environ, "PATH": f"{bindir}{os.pathsep}{os.environ.get('PATH', '')}"}
    with open(workdir / "snakemake.log", "w") as logfile:
        proc = subprocess.Popen(cmd, stdout=logfile, stderr=subprocess.STDOUT, env=env, cwd=workdir)
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        tail = (workdir / "snakemake.log").read_text()[-3000:]
        raise RuntimeError(f"snakemake failed on {workdir} ({proc.returncode}):\n{tail}")
    return usage.ru_utime + usage.ru_stime


def own_cpu_seconds() -> float:
    """CPU seconds of this process, every thread (torch's included)."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    return own.ru_utime + own.ru_stime


@dataclass(frozen=True)
class Cost:
    """What one study cost: wall seconds, CPU seconds of training and of the workflow."""

    seconds: float = 0.0
    train_cpu_seconds: float = 0.0
    workflow_cpu_seconds: float = 0.0

    @property
    def cpu_seconds(self) -> float:
        return self.train_cpu_seconds + self.workflow_cpu_seconds


def prepare(study: Study, suite: Suite, root: Path) -> tuple[Path, float]:
    """Build (or reuse) the study's checkpoints and write its workflow config; returns the
    config file and the training's CPU seconds (run one study at a time, so that the process's
    CPU time is this study's)."""
    workdir = root / study.name
    workdir.mkdir(parents=True, exist_ok=True)
    cpu = own_cpu_seconds()
    checkpoints = build(study, suite, root, workdir)
    config = study_config(study, suite, checkpoints)
    shared = model_diff.write_shared_family(
        study, family_sequences(), model_diff.SETTINGS["max_sequences"], workdir
    )
    if shared is not None:
        config["model_diff"] = model_diff.config_section(study, shared)
    if study.potts_family:
        family = potts_scoring.write_family(family_sequences(), study.crop, workdir)
        config["potts"] = potts_scoring.config_section(family)
    configfile = workdir / "config.yaml"
    configfile.write_text(yaml.safe_dump(config, sort_keys=False))
    return configfile, own_cpu_seconds() - cpu


def execute(study: Study, suite: Suite, configfile: Path, cores: int) -> tuple[float, float]:
    """The study's workflow: (wall seconds, CPU seconds)."""
    start = time.monotonic()
    cpu = run_workflow(configfile.parent, configfile, targets(study, suite), cores)
    log.info(
        "study %s: workflow done in %.0f s (%.0f CPU s)", study.name, time.monotonic() - start, cpu
    )
    return time.monotonic() - start, cpu


@dataclass(frozen=True)
class StudyResult:
    study: Study
    samples: dict
    probes: list
    sae_fit: list
    analyses: list


def score_study(study: Study, suite: Suite, root: Path) -> StudyResult:
    """Score a study whose workflow has finished (validation.scoring)."""
    workdir = root / study.name
    planted = study.planted()
    analyses = []
    lenses = lens_dirs(study)
    layers = study.sae_layers(suite.layer)
    for lens, embedder in lenses.items():
        for layer in layers:
            analyses += scoring.score_embedder(
                workdir,
                study.name,
                embedder,
                layer,
                MODELS,
                planted,
                study.kind,
                suite.families,
                lens,
            )
    return StudyResult(
        study=study,
        samples=scoring.sample_summary(workdir, MODELS, planted, study.kind),
        probes=scoring.probe_margins(workdir, lenses),
        sae_fit=[row for layer in layers for row in scoring.sae_fit(workdir, lenses, layer)],
        analyses=scoring.as_dicts(analyses),
    )


def run_studies(
    studies: Sequence[Study], suite: Suite, root: Path, cores: int, parallel: int
) -> dict[str, Cost]:
    """Train every study's checkpoints (one at a time), then run the workflows, `parallel` at a
    time with cores // parallel cores each: a workflow's jobs mostly run one after another and
    spend much of their CPU starting Python, so two studies on one core each keep 2 cores
    busier than one study on 2."""
    prepared = {}
    for study in studies:
        log.info("study %s: %s %s, building checkpoints", study.name, study.kind, study.arch)
        prepared[study.name] = prepare(study, suite, root)
    each = max(1, cores // parallel)
    with ThreadPoolExecutor(max_workers=parallel) as pool:
        runs = {s.name: pool.submit(execute, s, suite, prepared[s.name][0], each) for s in studies}
        return {
            name: Cost(run.result()[0], prepared[name][1], run.result()[1])
            for name, run in runs.items()
        }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--suite", choices=sorted(SUITES), default="full")
    parser.add_argument("--only", nargs="*", default=None, help="study names to run")
    parser.add_argument("--cores", type=int, default=2)
    parser.add_argument(
        "--parallel", type=int, default=None, help="studies run at once (default: --cores)"
    )
    parser.add_argument("--score-only", action="store_true", help="re-score finished studies")
    parser.add_argument("--work", type=Path, default=WORK)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    suite = SUITES[args.suite]()
    names = [s.name for s in suite.studies]
    unknown = sorted(set(args.only or ()) - set(names))
    if unknown:
        parser.error(
            f"--only {', '.join(unknown)}: no such study in suite '{suite.name}'; studies: {', '.join(names)}"
        )
    selected = [s for s in suite.studies if args.only is None or s.name in args.only]
    root = args.work / suite.name
    root.mkdir(parents=True, exist_ok=True)
    results_path = root / "scores.json"
    scores = json.loads(results_path.read_text()) if results_path.is_file() else {}
    studies = scores.get("studies", {})
    start = time.monotonic()
    costs = (
        {}
        if args.score_only
        else run_studies(selected, suite, root, args.cores, args.parallel or args.cores)
    )
    for study in selected:
        result = score_study(study, suite, root)
        cost = costs.get(study.name)
        studies[study.name] = {
            "kind": study.kind,
            "arch": study.arch,
            "rates": list(study.rates),
            "planted": study.planted(),
            **(
                {k: studies.get(study.name, {}).get(k) for k in COST_KEYS}
                if cost is None
                else {k: getattr(cost, k) for k in COST_KEYS}
            ),
            "samples": result.samples,
            "probes": result.probes,
            "sae_fit": result.sae_fit,
            "analyses": result.analyses,
        }
        if study.model_diff is not None:
            studies[study.name]["model_diff"] = model_diff.score_study(
                root / study.name, suite.layer, MODELS, study.model_diff[0]
            )
        if study.potts:
            potts = potts_scoring.score_study(root / study.name, study.motif, MODELS[0], MODELS[-1])
            studies[study.name]["potts"] = {**potts, "verdict": potts_verdict(potts)}
        studies[study.name]["verdict"] = study_verdict(studies[study.name])
    scores = {
        "suite": suite.name,
        "studies": studies,
        "null_fdp": null_fdp(studies),
        **({"run": run_summary(costs, time.monotonic() - start, args.cores)} if costs else {}),
    }
    results_path.write_text(json.dumps(scores, indent=1, default=float))
    (root / "summary.md").write_text(summary_markdown(scores))
    print((root / "summary.md").read_text())
    return 0


COST_KEYS = ("seconds", "train_cpu_seconds", "workflow_cpu_seconds", "cpu_seconds")


def run_summary(costs: Mapping[str, Cost], seconds: float, cores: int) -> dict[str, float]:
    """This run's wall seconds and CPU seconds, and the wall time the CPU seconds would take
    on `cores` idle cores (a lower bound: it assumes every core busy all the time)."""
    cpu = sum(c.cpu_seconds for c in costs.values())
    return {
        "seconds": seconds,
        "cpu_seconds": cpu,
        "cores": cores,
        "idle_seconds_bound": cpu / cores,
    }


if __name__ == "__main__":
    raise SystemExit(main())
