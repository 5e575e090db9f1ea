"""Benchmark: the whole probe sweep (plmdiff.probes.probes.probe_sweep) vs scikit-learn.

Same synthetic embeddings (anisotropic, power-law spectrum, a few massive dimensions, round
signal rising with depth), same folds, same C, same stopping rule (max |gradient| <= tol or
max_iter) on both sides. plmdiff runs what the `probes` rule runs: every layer on grouped and
plain folds and on the schema's default number of label permutations (99), the length,
composition, dipeptide and layer-0 baselines, balanced accuracy from pooled out-of-fold
predictions, cluster-bootstrap intervals and the margin tests. scikit-learn is the usual
`make_pipeline(StandardScaler(), LogisticRegression(C=C))`; looping it over every one of those
fits would take the better part of a day on 2 cores, so it fits the real-label grouped folds of
every --sklearn-every-th layer and of the baselines, and its time for the whole sweep is those
fits' mean time per fit times the number of fits the sweep makes (printed). Balanced accuracies
are compared on the layers it fitted (same folds, pooled predictions).

Both sides get max_iter=1000 by default because on embeddings this anisotropic scikit-learn's
lbfgs needs a few hundred iterations to converge. Default size: 4000 sequences x 512 dims x 8
rounds x 37 layers x 5 folds, C=0.1; --full is 10k x 1280. Wall-clock and process CPU time are
both printed: on a shared machine the CPU-time ratio is the steadier of the two.

    .venv/bin/python bench/probes.py [--threads 2] [--full] [--device cpu]
"""

from __future__ import annotations

import argparse
import os
import time
import warnings

import numpy as np


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sequences", type=int, default=4000)
    parser.add_argument("--dims", type=int, default=512)
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--layers", type=int, default=37)
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--C", type=float, default=0.1)
    parser.add_argument("--permutations", type=int, default=None, help="default: the schema's")
    parser.add_argument("--max-iter", type=int, default=1000)
    parser.add_argument("--tol", type=float, default=1e-4)
    parser.add_argument("--sklearn-every", type=int, default=4, help="fit every n-th layer")
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--full", action="store_true", help="10k sequences x 1280 dims")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if args.full:
        args.sequences, args.dims = 10_000, 1280

    import torch
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import balanced_accuracy_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    from threadpoolctl import threadpool_limits

    from plmdiff.config.sections import section_defaults
    from plmdiff.probes.baselines import AMINO_ACIDS, baseline_features
    from plmdiff.probes.probes import GROUPED, ProbeSettings, build_design, probe_sweep
    from plmdiff.testing.synthetic import planted_embeddings

    torch.set_num_threads(args.threads)
    signal = np.linspace(0.0, 0.105, args.layers) * np.sqrt(1280 / args.dims)
    data = planted_embeddings(
        args.sequences // args.rounds, args.rounds, args.dims, signal, seed=args.seed
    )
    X, y, n = data.X, data.y, len(data.y)
    rng = np.random.default_rng(args.seed)
    lengths = rng.normal(250 + 4 * y, 40).clip(50).astype(int)  # length drifts a little
    sequences = ["".join(rng.choice(list(AMINO_ACIDS), size=k)) for k in lengths]
    baselines = baseline_features(sequences, X[0])
    section = {
        **section_defaults("probes"),
        "folds": args.folds,
        "C": args.C,
        "max_iter": args.max_iter,
        "tol": args.tol,
        "seed": args.seed,
    }
    if args.permutations is not None:
        section["permutations"] = args.permutations
    settings = ProbeSettings.from_section(section)
    groups = np.arange(n)
    print(
        f"data: {n} sequences x {args.dims} dims x {args.rounds} rounds x {args.layers} layers x "
        f"{args.folds} folds, C={args.C}, tol={args.tol}, {settings.permutations} permutations, "
        f"baselines {', '.join(baselines)}, {settings.bootstrap} bootstrap, "
        f"{settings.margin_permutations} margin flips, {args.threads} threads, torch on "
        f"{args.device}"
    )
    # Warm-up on a sliver, so one-off library initialisation is not billed to either side.
    sliver = np.arange(0, n, max(1, n // 200))  # every round, a few rows each
    warm = ProbeSettings.from_section({**section, "permutations": 0, "folds": 2})
    probe_sweep([X[0][sliver]], y[sliver], None, warm)

    started, cpu = time.perf_counter(), time.process_time()
    result = probe_sweep(list(X), y, groups, settings, baselines=baselines, device=args.device)
    if args.device.startswith("cuda"):
        torch.cuda.synchronize()
    t_ours, cpu_ours = time.perf_counter() - started, time.process_time() - cpu
    table = result.accuracy
    layer_fits = args.layers * args.folds * (2 + settings.permutations)
    baseline_fits = (len(baselines) - 1) * args.folds * 2  # layer_0 reuses the layer's fits
    print(
        f"plmdiff (torch, batched): {t_ours:8.1f} s wall, {cpu_ours:8.1f} s CPU for "
        f"{layer_fits} layer fits + {baseline_fits} baseline fits; converged "
        f"{table['converged'].mean():.0%}"
    )

    # The real-label grouped folds of the sweep (the design is deterministic in the seed).
    design = build_design(y, groups, settings, permutations=0)
    folds = np.empty(n, dtype=int)
    for split in design.splits:
        if split.scheme == GROUPED and split.outer < 0:
            folds[split.test] = split.fold

    def fit_predict(features: np.ndarray) -> tuple[np.ndarray, float, float]:
        pred = np.empty(n, dtype=int)
        wall, cpu = time.perf_counter(), time.process_time()
        for f in range(args.folds):
            train, test = folds != f, folds == f
            model = make_pipeline(
                StandardScaler(),
                LogisticRegression(C=args.C, max_iter=args.max_iter, tol=args.tol),
            )
            model.fit(features[train], y[train])
            pred[test] = model.predict(features[test])
        return pred, time.perf_counter() - wall, time.process_time() - cpu

    sampled = list(range(0, args.layers, args.sklearn_every))
    ours_ba = table[table.features == "layer"].set_index("layer")["balanced_accuracy"]
    diffs, layer_wall, layer_cpu = [], 0.0, 0.0
    with threadpool_limits(args.threads), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for layer in sampled:
            pred, wall, cpu = fit_predict(X[layer])
            layer_wall, layer_cpu = layer_wall + wall, layer_cpu + cpu
            diffs.append(abs(balanced_accuracy_score(y, pred) - ours_ba.loc[layer]) * 100)
        base_wall = base_cpu = 0.0
        for name, features in baselines.items():
            if name == "layer_0":
                continue
            pred, wall, cpu = fit_predict(features)
            base_wall, base_cpu = base_wall + wall, base_cpu + cpu
            ours = table.set_index("features").loc[name, "balanced_accuracy"]
            diffs.append(abs(balanced_accuracy_score(y, pred) - ours) * 100)
    per_fit_wall = layer_wall / (len(sampled) * args.folds)
    per_fit_cpu = layer_cpu / (len(sampled) * args.folds)
    t_sklearn = per_fit_wall * layer_fits + base_wall * 2
    cpu_sklearn = per_fit_cpu * layer_fits + base_cpu * 2
    print(
        f"scikit-learn (lbfgs, max_iter={args.max_iter}): {len(sampled) * args.folds} layer fits "
        f"measured, {per_fit_wall:.2f} s wall / {per_fit_cpu:.2f} s CPU per fit; the sweep's "
        f"{layer_fits} layer fits + {baseline_fits} baseline fits: {t_sklearn:8.0f} s wall, "
        f"{cpu_sklearn:8.0f} s CPU"
    )
    print(f"per-layer balanced accuracy, plmdiff: {np.round(ours_ba.to_numpy(), 3).tolist()}")
    print(
        f"speed ratio (scikit-learn / plmdiff): {t_sklearn / t_ours:.1f}x wall-clock, "
        f"{cpu_sklearn / cpu_ours:.1f}x CPU time"
    )
    print(
        f"max |balanced accuracy difference| over {len(sampled)} layers and "
        f"{len(baselines) - 1} baselines: {max(diffs):.2f} percentage points"
    )


if __name__ == "__main__":
    main()
