"""SAE training settings against a study's planted residues, without the workflow.

`python -m validation.sae_sweep WORKDIR --layer 1 --lr 2e-3 --tokens 400000` trains one SAE as
the workflow's `train_sae` does (sae-lens's trainer through `plmdiff.sae.training`, the study
config's `sae` section with the given overrides) on every base-model token of the layer that a
finished composition or motif study wrote, then encodes the last round's fold-0 held-out tokens
and reports, per planted residue (each alone, then the class), the latent with the largest
precision x coverage and how many latents meet the composition bar (precision >= 0.8,
coverage >= 0.25). This is how VALIDATION.md "SAE training" found the suite's SAEs undertrained.
The SAE trains on the base's tokens only, so the scored (last-round) tokens are never seen.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

from plmdiff.activations.readers import iter_token_batches
from plmdiff.config import paths
from plmdiff.config.schema import load_yaml, validate_config
from plmdiff.diff.feature_stats import FeatureStats
from plmdiff.sae.training import SAESettings, build_training_sae, standardize_tokens, train
from validation import scoring

MODELS = ("r0", "r1", "r2")
BAR_PRECISION, BAR_COVERAGE = 0.8, 0.25


@dataclasses.dataclass(frozen=True)
class ResidueLatents:
    """The best latent for one planted residue set, and the latents that meet the bar."""

    planted: str
    alive: int
    best: int
    precision: float
    coverage: float
    qualifying: int


def summarise(match: scoring.FeatureMatch, planted: str) -> ResidueLatents:
    """The latent with the largest precision x coverage, and the count meeting the bar."""
    score = match.precision * match.coverage
    best = int(np.argmax(score))
    ok = (match.precision >= BAR_PRECISION) & (match.coverage >= BAR_COVERAGE)
    return ResidueLatents(
        planted=planted,
        alive=int((match.n_fire > 0).sum()),
        best=best,
        precision=float(match.precision[best]),
        coverage=float(match.coverage[best]),
        qualifying=int(ok.sum()),
    )


def shuffled_batches(x: torch.Tensor, batch_size: int, seed: int, standardize: bool) -> Iterator:
    """Endless epochs over `x` in a fresh seeded order each, whole batches only."""
    g = torch.Generator().manual_seed(seed)
    while True:
        order = torch.randperm(len(x), generator=g)
        for i in range(0, len(order) - batch_size + 1, batch_size):
            batch = x[order[i : i + batch_size]]
            yield standardize_tokens(batch) if standardize else batch


def layer_tokens(workdir: Path, model: str, layer: int) -> np.ndarray:
    """Every token of `model`'s samples at `layer`, embedded by the base model."""
    lid = paths.layer_id(layer)
    source = workdir / paths.token_layer_dir(MODELS[0], model, lid)
    return np.concatenate(
        [np.asarray(b.act, dtype=np.float32) for b in iter_token_batches([source], batch_rows=8192)]
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("workdir", type=Path, help="a finished study's work directory")
    parser.add_argument("--layer", type=int, required=True)
    parser.add_argument("--lr", type=float)
    parser.add_argument("--tokens", type=int, help="training tokens (sae.training_tokens)")
    parser.add_argument("--batch-size", type=int)
    parser.add_argument("--planted", default="KR", help="residues, scored alone and together")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    config = validate_config(load_yaml(args.workdir / "config.yaml"))
    settings = SAESettings.from_section(config["sae"])
    over = {"lr": args.lr, "training_tokens": args.tokens, "batch_size": args.batch_size}
    settings = dataclasses.replace(settings, **{k: v for k, v in over.items() if v is not None})
    standardize = settings.normalize == "unit_norm"
    x = torch.from_numpy(layer_tokens(args.workdir, MODELS[0], args.layer))
    sae = build_training_sae(settings, x.shape[1], seed=settings.seed)
    start = time.monotonic()
    result = train(
        sae,
        shuffled_batches(x, settings.batch_size, settings.seed, standardize),
        tokens=settings.training_tokens,
        batch_size=settings.batch_size,
        lr=settings.lr,
        dead_window_steps=settings.dead_window_steps,
    )
    seconds = time.monotonic() - start
    lid = paths.layer_id(args.layer)
    stats = FeatureStats.open(args.workdir / paths.feature_stats(MODELS[0], lid, "base", 0))
    held_out = stats.model_sequences(MODELS[-1])["seq_id"].tolist()
    last = args.workdir / paths.token_layer_dir(MODELS[0], MODELS[-1], lid)
    print(
        f"layer {args.layer}, lr {settings.lr:g}, {result.tokens} tokens of {len(x)}, batch "
        f"{settings.batch_size}: {seconds:.0f} s, dead in training {result.dead_fraction:.2f}"
    )
    for planted in [*args.planted, args.planted] if len(args.planted) > 1 else [args.planted]:
        tokens = scoring.read_tokens(last, held_out, planted, "composition")
        act = torch.from_numpy(tokens.act)
        with torch.inference_mode():
            codes = result.sae.encode(standardize_tokens(act) if standardize else act).numpy()
        row = summarise(scoring.match_features(codes, tokens), planted)
        print(
            f"  {row.planted}: alive {row.alive}, best latent {row.best} precision "
            f"{row.precision:.2f} coverage {row.coverage:.2f}, qualifying {row.qualifying}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
