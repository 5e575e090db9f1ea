"""Benchmark: batched torch probes (plmdiff.probes.probes.cv_accuracy) vs scikit-learn, one run.

Same synthetic embeddings (anisotropic, power-law spectrum, a few massive dimensions, round
signal rising with depth), same folds, same C, same stopping rule (max |gradient| <= tol or
max_iter) on both sides; scikit-learn is the usual
`make_pipeline(StandardScaler(), LogisticRegression(C=C))` looped over layers and folds.

Prints the wall-clock ratio and the largest per-layer difference of mean accuracy (in
percentage points). Both sides get max_iter=1000 by default because on embeddings this
anisotropic scikit-learn's lbfgs needs a few hundred iterations to converge; with its default
100 it stops early and its accuracies are a few points off the optimum (--sklearn-max-iter 100
shows it: its own ConvergenceWarnings are counted).

Default size: 4000 sequences x 512 dims x 8 rounds x 37 layers x 5 folds, C=0.1 (the
middle of the default C grid): the study's ratio of sequences to dimensions (10k x 1280), at a
size where scikit-learn takes a few minutes on 2 cores. --full is the issue's size, where
scikit-learn alone takes the better part of an hour. Wall-clock and process CPU time are both
printed: on a shared machine the CPU-time ratio is the steadier of the two.

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
    parser.add_argument("--max-iter", type=int, default=1000)
    parser.add_argument("--sklearn-max-iter", type=int, default=None)
    parser.add_argument("--tol", type=float, default=1e-4)
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--full", action="store_true", help="10k sequences x 1280 dims")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if args.full:
        args.sequences, args.dims = 10_000, 1280

    import torch
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    from threadpoolctl import threadpool_limits

    from plmdiff.probes.logreg import SolverSettings
    from plmdiff.probes.probes import cv_accuracy, stratified_folds
    from plmdiff.testing.synthetic import planted_embeddings

    torch.set_num_threads(args.threads)
    # Signal from nothing at layer 0 to a clear one at the last, as in the study's table.
    signal = np.linspace(0.0, 0.105, args.layers) * np.sqrt(1280 / args.dims)
    data = planted_embeddings(
        args.sequences // args.rounds, args.rounds, args.dims, signal, seed=args.seed
    )
    X, y = data.X, data.y
    folds = stratified_folds(y, args.folds, args.seed)
    print(
        f"data: {len(y)} sequences x {args.dims} dims x {args.rounds} rounds x "
        f"{args.layers} layers x {args.folds} folds, C={args.C}, tol={args.tol}, "
        f"{args.threads} threads, torch on {args.device}"
    )

    # Warm-up on a sliver, so one-off library initialisation is not billed to either side.
    cv_accuracy([X[0][:200]], y[:200], folds[:200] % 2, args.C, device=args.device)

    started, cpu = time.perf_counter(), time.process_time()
    ours, converged = cv_accuracy(
        list(X),
        y,
        folds,
        args.C,
        SolverSettings(max_iter=args.max_iter, tol=args.tol),
        device=args.device,
    )
    if args.device.startswith("cuda"):
        torch.cuda.synchronize()
    t_ours, cpu_ours = time.perf_counter() - started, time.process_time() - cpu
    print(
        f"plmdiff (torch, batched): {t_ours:8.1f} s wall, {cpu_ours:8.1f} s CPU, "
        f"converged {converged.mean():.0%} of fits"
    )

    sk_iter = args.sklearn_max_iter or args.max_iter
    theirs = np.zeros_like(ours)
    not_converged = 0
    started, cpu = time.perf_counter(), time.process_time()
    with threadpool_limits(args.threads), warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ConvergenceWarning)
        for layer in range(args.layers):
            for f in range(args.folds):
                train, test = folds != f, folds == f
                model = make_pipeline(
                    StandardScaler(), LogisticRegression(C=args.C, max_iter=sk_iter, tol=args.tol)
                )
                model.fit(X[layer][train], y[train])
                theirs[layer, f] = model.score(X[layer][test], y[test])
        not_converged = sum(issubclass(w.category, ConvergenceWarning) for w in caught)
    t_sklearn, cpu_sklearn = time.perf_counter() - started, time.process_time() - cpu
    fits = args.layers * args.folds
    print(
        f"scikit-learn (lbfgs, max_iter={sk_iter}): {t_sklearn:8.1f} s wall, "
        f"{cpu_sklearn:8.1f} s CPU, {not_converged} of {fits} fits hit max_iter"
    )

    diff = np.abs(ours.mean(1) - theirs.mean(1)) * 100
    print(f"per-layer mean accuracy, plmdiff:      {np.round(ours.mean(1), 3).tolist()}")
    print(f"per-layer mean accuracy, scikit-learn: {np.round(theirs.mean(1), 3).tolist()}")
    print(
        f"speed ratio (scikit-learn / plmdiff): {t_sklearn / t_ours:.1f}x wall-clock, "
        f"{cpu_sklearn / cpu_ours:.1f}x CPU time"
    )
    print(f"max per-layer |mean accuracy difference|: {diff.max():.2f} percentage points")


if __name__ == "__main__":
    main()
