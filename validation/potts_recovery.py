"""Full-size checks of the Potts stage's numerics (VALIDATION.md, "Potts").

    python -m validation.potts_recovery [--threads 2] [--out validation/work/potts.json]

1. Recovery: a planted Potts model (L = 50, q = 21, L sparse coupled pairs, fields N(0, 0.3^2),
   coupling blocks N(0, 0.7^2), zero-sum gauge), 5,000 sequences by Gibbs sampling (independent
   chains, 100 sweeps), fitted with the stage's defaults (reweighting at 0.8, plmc-like L2).
   Scored: Pearson of the pair coupling norms (Frobenius, all pairs i < j), Pearson of the
   coupling entries of the planted pairs and of all pairs, top-L precision of APC-corrected norms.
   Timed: the fit (weights + pseudo-likelihood), wall and CPU seconds.
2. Null: two disjoint sets of 2,500 sequences of that model, each fitted with 20 bootstrap
   refits; the fraction of pairs whose coupling change is called at BH q < 0.05.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from plmdiff.potts import compare
from plmdiff.potts import model as pm
from plmdiff.potts.synthetic import gibbs_sample, planted_model

LENGTH = 50
SEQUENCES = 5000
SWEEPS = 100


def recovery(true: pm.PottsModel, pairs: list[tuple[int, int]], states: np.ndarray) -> dict:
    wall, cpu = time.perf_counter(), time.process_time()
    weights = pm.sequence_weights(states, 0.8, "cpu")
    lh, lj = pm.regularization(LENGTH, 0.01, 0.01)
    fit, info = pm.fit_pseudolikelihood(
        states, weights, lambda_h=lh, lambda_j=lj, max_iterations=200, device="cpu"
    )
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    gauged = pm.zero_sum_gauge(fit)
    iu = np.triu_indices(LENGTH, 1)
    planted = np.zeros((LENGTH, LENGTH), dtype=bool)
    for i, j in pairs:
        planted[i, j] = True
    entries_true = true.J.transpose(0, 2, 1, 3)[iu]
    entries_fit = gauged.J.transpose(0, 2, 1, 3)[iu]
    on = planted[iu]
    top = pm.top_pairs(pm.coupling_scores(fit), LENGTH)
    return {
        "neff": float(weights.sum()),
        "iterations": info.iterations,
        "fit_wall_s": wall,
        "fit_cpu_s": cpu,
        "pearson_pair_norms": float(
            np.corrcoef(pm.frobenius(true)[iu], pm.frobenius(fit)[iu])[0, 1]
        ),
        "pearson_planted_entries": float(
            np.corrcoef(entries_true[on].ravel(), entries_fit[on].ravel())[0, 1]
        ),
        "pearson_all_entries": float(np.corrcoef(entries_true.ravel(), entries_fit.ravel())[0, 1]),
        "top_L_precision": float(np.mean([planted[i, j] for i, j in top])),
    }


def null(states: np.ndarray) -> dict:
    half = len(states) // 2
    fits = []
    wall = time.perf_counter()
    for part, seed in ((states[:half], 1), (states[half:], 2)):
        weights = pm.sequence_weights(part, 0.8, "cpu")
        result, _ = pm.fit_with_bootstrap(
            part,
            weights,
            lambda_h=0.01,
            lambda_j=0.01,
            max_iterations=200,
            bootstrap=20,
            seed=seed,
            device="cpu",
        )
        fits.append(result)
    changes = compare.coupling_changes(fits[0], fits[1], fdr=0.05)
    return {
        "pairs": len(changes),
        "significant": int(changes["significant"].sum()),
        "significant_fraction": float(changes["significant"].mean()),
        "min_q": float(changes["q_value"].min()),
        "wall_s": time.perf_counter() - wall,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--skip-null", action="store_true")
    parser.add_argument("--out", type=Path, default=Path("validation/work/potts.json"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    true, pairs = planted_model(LENGTH, LENGTH, seed=1, field_scale=0.3, coupling_scale=0.7)
    t = time.perf_counter()
    states = gibbs_sample(true, SEQUENCES, sweeps=SWEEPS, seed=2)
    scores: dict = {"threads": args.threads, "gibbs_s": time.perf_counter() - t}
    scores["recovery"] = recovery(true, pairs, states)
    print(json.dumps(scores, indent=2), flush=True)
    if not args.skip_null:
        scores["null"] = null(states)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(scores, indent=2))
    print(json.dumps(scores, indent=2))


if __name__ == "__main__":
    main()
