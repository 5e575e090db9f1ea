"""What the rounds learned, measured cheaply: train the studies' checkpoints and sample them,
without the rest of the workflow.

    python -m validation.calibrate --suite full            # every study of the suite
    python -m validation.calibrate --suite ci --only ci_motif_gpt2

For each study and model it reports what the kept samples carry (motif share, residue-class
share, mean length) and the CPU seconds that training and sampling took (process time, so a
loaded machine does not inflate it). Checkpoints are built where `validation.run` builds them,
so a later `make validate` reuses them. Sampling and filtering are the workflow's own
(plmdiff.sampling) with the study's validated config, so the shares are the ones the workflow's
FASTA will hold. Writes `calibration.json` and `calibration.md` next to `scores.json`.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from plmdiff.config.schema import validate_config
from validation.run import MODELS, WORK, build, study_config
from validation.samples import sample_kept
from validation.scoring import carried
from validation.studies import SUITES, Study, Suite

log = logging.getLogger("validation")


@dataclass
class Calibration:
    """One study: what each model's kept samples carry, and the CPU seconds it cost."""

    study: str
    kind: str
    arch: str
    rates: list[float]
    train_cpu_s: float
    sample_cpu_s: float
    models: dict[str, dict[str, float]] = field(default_factory=dict)


def calibrate_study(study: Study, suite: Suite, root: Path) -> Calibration:
    """Build (or reuse) the study's checkpoints and sample every model."""
    workdir = root / study.name
    workdir.mkdir(parents=True, exist_ok=True)
    start = time.process_time()
    checkpoints = build(study, suite, root, workdir)
    train_cpu = time.process_time() - start
    config = validate_config(study_config(study, suite, checkpoints))
    start = time.process_time()
    out = Calibration(study.name, study.kind, study.arch, list(study.rates), train_cpu, 0.0)
    for model, checkpoint in zip(MODELS, checkpoints, strict=True):
        kept = sample_kept(checkpoint, model, config)
        out.models[model] = carried(kept, study.planted(), study.kind)
        log.info("%s %s: %s", study.name, model, out.models[model])
    out.sample_cpu_s = time.process_time() - start
    return out


def _cell(row: Mapping[str, float]) -> str:
    extra = row.get("motif_share", row.get("class_share"))
    return f"n {row['n']:.0f}, len {row['mean_length']:.1f}" + (
        f", {extra:.0%}" if extra is not None else ""
    )


def calibration_markdown(rows: Sequence[Calibration]) -> str:
    """One line per study: every model's kept samples and the CPU seconds."""
    lines = [
        "| study | kind | arch | rates | " + " | ".join(MODELS) + " | train CPU s | sample CPU s |",
        "|---" * (len(MODELS) + 6) + "|",
    ]
    for r in rows:
        cells = " | ".join(_cell(r.models[m]) for m in MODELS)
        rates = ", ".join(f"{x:g}" for x in r.rates)
        lines.append(
            f"| {r.study} | {r.kind} | {r.arch} | {rates} | {cells} | "
            f"{r.train_cpu_s:.0f} | {r.sample_cpu_s:.0f} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    import torch

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--suite", choices=sorted(SUITES), default="full")
    parser.add_argument("--only", nargs="*", default=None, help="study names to calibrate")
    parser.add_argument("--work", type=Path, default=WORK)
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    torch.set_num_threads(args.threads)
    suite = SUITES[args.suite]()
    names = [s.name for s in suite.studies]
    unknown = sorted(set(args.only or ()) - set(names))
    if unknown:
        parser.error(
            f"--only {', '.join(unknown)}: no such study in suite '{suite.name}'; "
            f"studies: {', '.join(names)}"
        )
    root = args.work / suite.name
    root.mkdir(parents=True, exist_ok=True)
    path = root / "calibration.json"
    saved = json.loads(path.read_text()) if path.is_file() else {}
    for study in suite.studies:
        if args.only is not None and study.name not in args.only:
            continue
        saved[study.name] = calibrate_study(study, suite, root).__dict__
        path.write_text(json.dumps(saved, indent=1))
    table = calibration_markdown([Calibration(**v) for v in saved.values()])
    (root / "calibration.md").write_text(table)
    print(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
