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
from dataclasses import dataclass
from pathlib import Path

import yaml

from plmdiff.config import paths
from plmdiff.config.schema import BASE_EMBEDDER
from plmdiff.models.lm_training import LMTrainingConfig
from plmdiff.testing.checkpoints import family_sequences
from validation import scoring
from validation.checkpoints import PROMPT_FORMAT, build_base, build_rounds
from validation.report import summary_markdown
from validation.studies import SUITES, Study, Suite
from validation.verdicts import null_fdp, study_verdict

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
            "n_sequences": suite.n_sequences,
            "shards": 1,
            "batch_size": 64,
            "max_length": study.crop + 24,
            "seed": study.seed,
            **suite.sampling,
        },
        "filter": {"min_length": 10, "dedupe": True, "min_sequences": 20},
        "activations": {
            "embedders": list(study.embedders),
            "token_layers": [suite.layer],
            "batch_tokens": 4096,
            "shards": 1,
            "rows_per_file": 8192,
        },
        "probes": {"folds": 3, "permutations": suite.probe_permutations, "C": 1.0, "max_iter": 100},
        "sae": {
            "layers": [suite.layer],
            "d_sae": suite.d_sae,
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
    }


def lens_dirs(study: Study) -> dict[str, str]:
    """Lens label -> the embedder directory the workflow writes ('base' is the base model)."""
    return {e: MODELS[0] if e == BASE_EMBEDDER else e for e in study.embedders}


def targets(study: Study, suite: Suite) -> list[str]:
    """What scoring reads: every diff family's feature table and the probes (no report, KL, t-SNE)."""
    lid = paths.layer_id(suite.layer)
    out = []
    for embedder in lens_dirs(study).values():
        out += [paths.diff_file(embedder, lid, f, "features.parquet") for f in suite.families]
        out += [paths.probe_file(embedder, p, "accuracy.tsv") for p in ("last", "mean")]
        out.append(paths.sae_metrics(embedder, lid, paths.BASE_SCHEME, 0))
    return out


def training_configs(study: Study, suite: Suite) -> tuple[LMTrainingConfig, LMTrainingConfig]:
    """(base, round) training settings."""
    common = dict(batch_size=32, warmup_fraction=0.05, epochs=100)
    base = LMTrainingConfig(**common, lr=2e-3, seed=0, max_steps=suite.base_steps)
    rounds = LMTrainingConfig(
        **common, lr=suite.round_lr, seed=study.seed, max_steps=suite.round_steps
    )
    return base, rounds


def build(study: Study, suite: Suite, root: Path, workdir: Path) -> list[Path]:
    family = family_sequences()
    base_cfg, round_cfg = training_configs(study, suite)
    shape = suite.shape
    # The base depends only on architecture, shape and steps: suites of one size share it.
    cache = (
        root.parent / "bases" / f"{study.arch}_{shape.n_layer}x{shape.n_embd}_{suite.base_steps}"
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
        study.round_data(family),
        round_cfg,
        from_base=suite.rounds_from_base,
    )


def run_workflow(workdir: Path, configfile: Path, wanted: list[str], cores: int) -> None:
    """snakemake on the study, as a user runs it (and as tests/conftest.py run_snakemake does)."""
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
        proc = subprocess.run(cmd, stdout=logfile, stderr=subprocess.STDOUT, env=env, cwd=workdir)
    if proc.returncode != 0:
        tail = (workdir / "snakemake.log").read_text()[-3000:]
        raise RuntimeError(f"snakemake failed on {workdir} ({proc.returncode}):\n{tail}")


def cpu_seconds() -> float:
    """CPU seconds of this process and of every finished child (snakemake and its jobs): on a
    shared machine the study's cost, where wall time measures the other users' load."""
    own, children = (
        resource.getrusage(resource.RUSAGE_SELF),
        resource.getrusage(resource.RUSAGE_CHILDREN),
    )
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


@dataclass(frozen=True)
class StudyResult:
    study: Study
    seconds: float
    cpu_seconds: float
    samples: dict
    probes: list
    sae_fit: list
    analyses: list


def run_study(study: Study, suite: Suite, root: Path, cores: int, score_only: bool) -> StudyResult:
    workdir = root / study.name
    workdir.mkdir(parents=True, exist_ok=True)
    start, cpu_start = time.monotonic(), cpu_seconds()
    if not score_only:
        checkpoints = build(study, suite, root, workdir)
        configfile = workdir / "config.yaml"
        configfile.write_text(
            yaml.safe_dump(study_config(study, suite, checkpoints), sort_keys=False)
        )
        run_workflow(workdir, configfile, targets(study, suite), cores)
    elapsed, cpu = time.monotonic() - start, cpu_seconds() - cpu_start
    planted = study.planted()
    top = 10 if study.kind == "composition" else 5
    analyses = []
    lenses = lens_dirs(study)
    for lens, embedder in lenses.items():
        analyses += scoring.score_embedder(
            workdir,
            study.name,
            embedder,
            suite.layer,
            MODELS,
            planted,
            study.kind,
            top,
            suite.families,
            lens,
        )
    return StudyResult(
        study=study,
        seconds=elapsed,
        cpu_seconds=cpu,
        samples=scoring.sample_summary(workdir, MODELS, planted, study.kind),
        probes=scoring.probe_margins(workdir, lenses),
        sae_fit=scoring.sae_fit(workdir, lenses, suite.layer),
        analyses=scoring.as_dicts(analyses),
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--suite", choices=sorted(SUITES), default="full")
    parser.add_argument("--only", nargs="*", default=None, help="study names to run")
    parser.add_argument("--cores", type=int, default=2)
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
    root = args.work / suite.name
    root.mkdir(parents=True, exist_ok=True)
    results_path = root / "scores.json"
    scores = json.loads(results_path.read_text()) if results_path.is_file() else {}
    studies = scores.get("studies", {})
    for study in suite.studies:
        if args.only is not None and study.name not in args.only:
            continue
        log.info("study %s: %s %s", study.name, study.kind, study.arch)
        result = run_study(study, suite, root, args.cores, args.score_only)
        studies[study.name] = {
            "kind": study.kind,
            "arch": study.arch,
            "rates": list(study.rates),
            "planted": study.planted(),
            **(
                {"seconds": result.seconds, "cpu_seconds": result.cpu_seconds}
                if not args.score_only
                else {k: studies.get(study.name, {}).get(k) for k in ("seconds", "cpu_seconds")}
            ),
            "samples": result.samples,
            "probes": result.probes,
            "sae_fit": result.sae_fit,
            "analyses": result.analyses,
        }
        studies[study.name]["verdict"] = study_verdict(studies[study.name])
        scores = {"suite": suite.name, "studies": studies, "null_fdp": null_fdp(studies)}
        results_path.write_text(json.dumps(scores, indent=1, default=float))
        log.info("study %s done in %.0f s", study.name, result.seconds)
    (root / "summary.md").write_text(summary_markdown(scores))
    print((root / "summary.md").read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
