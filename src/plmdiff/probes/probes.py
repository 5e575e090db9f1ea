"""Per-layer probes: which layers tell the rounds apart beyond length and composition.

For every layer a multinomial logistic regression predicts the round of a sequence from its
pooled embedding, under stratified K-fold cross-validation with standardised features (scaler
fitted on the training fold only) and C fixed or chosen per layer by nested CV. Three schemes
share one batched solve (plmdiff.probes.logreg):

- grouped: stratified *group* K-fold, groups = sequence-identity clusters, so near-identical
  sequences (mode collapse across rounds) never sit on both sides of a split. The headline.
- ungrouped: plain stratified K-fold on the real labels, for comparison (leakage shows as a gap).
- permutation: the grouped pipeline, nested C choice included, on labels permuted with whole
  clusters as units (plmdiff.core.stats.permute_clusters); the null of the headline.

The headline is the balanced accuracy (mean per-round recall, chance 1/K) of the out-of-fold
predictions pooled over the folds, so folds weigh by their size and imbalanced rounds do not
inflate it; plain accuracy, per-round recall and a cluster-bootstrap interval sit beside it.
Every layer's permutation p is adjusted across layers by the max statistic (Westfall-Young)
over the shared permutations. Baselines (plmdiff.probes.baselines: length, composition,
dipeptides, layer 0) are probed on the same folds, and each layer's margin over the best of
them is tested by cluster-wise swaps of the two probes' hits (plmdiff.probes.inference).
"""

from __future__ import annotations

import logging
import os
import time
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import psutil
import torch
from sklearn.model_selection import StratifiedKFold

from plmdiff.activations.readers import load_pooled, pooled_layers
from plmdiff.config.sections import from_section
from plmdiff.core.errors import DataError
from plmdiff.core.fasta import read_fasta
from plmdiff.core.runtime import derive_seed
from plmdiff.core.stats import (
    balanced_accuracy_from_counts,
    benjamini_hochberg,
    min_permutation_p,
    permutation_p,
    permute_clusters,
    westfall_young,
)
from plmdiff.core.tables import write_table
from plmdiff.probes.baselines import LAYER0, sequences_for
from plmdiff.probes.clustering import groups_for, read_cluster_method, read_clusters
from plmdiff.probes.inference import bootstrap_balanced_accuracy, margin_test
from plmdiff.probes.logreg import Problems, SolverSettings, fit_multinomial

log = logging.getLogger(__name__)

GROUPED, UNGROUPED, PERMUTED = "grouped", "ungrouped", "permutation"
LAYER_FEATURES = "layer"

# Per-round recall columns follow `balanced_accuracy_ci_high` as recall_<round>.
ACCURACY_COLUMNS = [
    "features",
    "layer",
    "balanced_accuracy",
    "balanced_accuracy_ci_low",
    "balanced_accuracy_ci_high",
    "std_balanced_accuracy",
    "accuracy",
    "std_accuracy",
    "chance",
    "majority_rate",
    "permutation_mean",
    "permutation_q05",
    "permutation_q95",
    "permutation_p",
    "permutation_p_fwer",
    "permutation_q",
    "permutation_min_p",
    "best_baseline",
    "margin",
    "margin_p",
    "margin_p_fwer",
    "margin_min_p",
    "balanced_accuracy_ungrouped",
    "accuracy_ungrouped",
    "C",
    "C_ungrouped",
    "converged",
    "n_sequences",
    "n_clusters",
    "cluster_method",
]


@dataclass(frozen=True)
class ProbeSettings:
    """The probe keys of the `probes` section (defaults: config/schema.yaml).

    The cluster_* keys belong to plmdiff.probes.clustering.ClusterSettings.
    """

    folds: int
    permutations: int
    margin_permutations: int
    bootstrap: int
    C: float | None
    C_grid: tuple[float, ...]
    inner_folds: int
    max_iter: int
    tol: float
    seed: int

    @classmethod
    def from_section(cls, section: Mapping[str, Any]) -> ProbeSettings:
        return from_section(
            cls,
            section,
            "probes",
            convert={
                "C_grid": lambda grid: tuple(float(c) for c in grid),
                "C": lambda c: None if c is None else float(c),
            },
        )

    @property
    def grid(self) -> tuple[float, ...]:
        """Candidate C values, ascending (ties in nested CV go to the stronger penalty)."""
        return (float(self.C),) if self.C is not None else tuple(sorted(set(self.C_grid)))

    def solver(self) -> SolverSettings:
        return SolverSettings(max_iter=self.max_iter, tol=self.tol)


# ----------------------------------------------------------------------------- labels, folds


def round_labels(models: Sequence[str] | np.ndarray, rounds: Sequence[str]) -> np.ndarray:
    """Class index of each row: the position of its model in the config's model order."""
    index = {name: i for i, name in enumerate(rounds)}
    unknown = sorted(set(map(str, models)) - set(index))
    if unknown:
        raise DataError(
            f"pooled rows of model(s) {', '.join(unknown)} are not in config models "
            f"({', '.join(rounds)})"
        )
    return np.array([index[str(m)] for m in models], dtype=np.int64)


def check_class_sizes(
    y: np.ndarray, groups: np.ndarray, folds: int, class_names: Sequence[str]
) -> None:
    """Every round needs >= `folds` sequences, or some test folds could not hold it.

    A round with fewer sequence clusters than folds is allowed (it is what mode collapse looks
    like) but cannot appear in every grouped test fold; that is logged.
    """
    present = np.unique(y)
    if present.size < 2:
        raise DataError(
            f"probes need sequences of at least 2 rounds; found only {class_names[present[0]]}"
        )
    for k in present:
        n_k = int((y == k).sum())
        if n_k < folds:
            raise DataError(
                f"round '{class_names[k]}' has {n_k} sequences, fewer than probes.folds={folds}; "
                f"lower probes.folds to <= {n_k} or keep more of its sequences"
            )
        clusters = np.unique(groups[y == k]).size
        if clusters < folds:
            log.warning(
                "round '%s' has %d sequences in only %d clusters (< %d folds): grouped test "
                "folds without it cannot score it",
                class_names[k],
                n_k,
                clusters,
                folds,
            )


def stratified_folds(y: np.ndarray, k: int, seed: int) -> np.ndarray:
    """Fold index per row, stratified by label."""
    folds = np.empty(len(y), dtype=np.int64)
    splitter = StratifiedKFold(n_splits=k, shuffle=True, random_state=seed % 2**32)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # small classes: checked and logged by us
        for f, (_, test) in enumerate(splitter.split(np.zeros(len(y)), y)):
            folds[test] = f
    return folds


def stratified_group_folds(y: np.ndarray, groups: np.ndarray, k: int, seed: int) -> np.ndarray:
    """Fold index per row, stratified by label, with every group inside one fold.

    The greedy rule of scikit-learn's StratifiedGroupKFold, in a loop cheap enough for the
    hundred label permutations a sweep refolds: groups in random order, larger ones first, each
    to the fold where it leaves the per-round counts closest (least squares) to an equal share.
    scikit-learn's version takes about 2 s for 4,000 groups, which a sweep pays per permutation.
    """
    uniq, codes = np.unique(groups, return_inverse=True)
    if uniq.size < k:
        raise DataError(
            f"only {uniq.size} sequence clusters for {k} folds; lower probes.folds "
            "or probes.inner_folds, or raise probes.cluster_identity"
        )
    y = np.asarray(y, dtype=np.int64)
    counts = np.zeros((uniq.size, int(y.max()) + 1))
    np.add.at(counts, (codes, y), 1.0)
    rng = np.random.default_rng(seed % 2**32)
    order = rng.permutation(uniq.size)
    order = order[np.argsort(-counts[order].sum(1), kind="stable")]
    target = counts.sum(0) / k
    fold_counts = np.zeros((k, counts.shape[1]))
    excess = ((fold_counts - target) ** 2).sum(1)
    assigned = np.empty(uniq.size, dtype=np.int64)
    for g in order:
        after = ((fold_counts + counts[g] - target) ** 2).sum(1)
        # Ties (common for single sequences) go to the fold with fewer rows.
        f = int(np.argmin(after - excess + 1e-9 * fold_counts.sum(1)))
        assigned[g] = f
        fold_counts[f] += counts[g]
        excess[f] = after[f]
    return assigned[codes]


# ----------------------------------------------------------------------------- inputs


@dataclass
class RoundEmbeddings:
    """Pooled embeddings of every stored layer with each row's round, cluster and sequence.

    Rows are sorted by seq_id, so neither the number of extraction shards nor the order in
    which batches finished (free memory decides it) changes the rows, the folds or a result.
    """

    X: dict[int, np.ndarray]  # layer -> float32 [n, d]
    y: np.ndarray  # round index per row (position of its model in config models)
    rounds: list[str]  # config model names, in order
    seq_id: np.ndarray
    groups: np.ndarray | None  # cluster per row, when a cluster table was given
    cluster_method: str  # how the clusters were made ("none" without a cluster table)
    sequences: list[str] | None  # residues per row, when FASTA files were given


def load_round_embeddings(
    pooled_paths: Sequence[str | Path],
    pooling: str,
    rounds: Sequence[str],
    *,
    layers: Sequence[int] | None = None,
    clusters: str | Path | None = None,
    fasta: Sequence[str | Path] | None = None,
) -> RoundEmbeddings:
    """Read one pooling of `layers` (default: every stored layer) from the pooled files."""
    layers = pooled_layers(pooled_paths[0]) if layers is None else list(layers)
    X: dict[int, np.ndarray] = {}
    seq_id: np.ndarray | None = None
    models: np.ndarray | None = None
    order: np.ndarray | None = None
    for layer in layers:
        matrix = load_pooled(pooled_paths, layer, pooling)
        if seq_id is None:
            order = np.argsort(matrix.seq_id, kind="stable")
            seq_id, models = matrix.seq_id[order], matrix.model[order]
        elif not np.array_equal(seq_id, matrix.seq_id[order]):
            raise DataError(f"pooled files {pooled_paths} list different rows for layer {layer}")
        X[layer] = matrix.X[order]
    if seq_id is None or models is None:
        raise DataError(f"pooled files {pooled_paths}: no layers to read")
    groups: np.ndarray | None = None
    method = "none"
    if clusters is not None:
        groups = np.asarray(groups_for(seq_id, read_clusters(clusters), str(clusters)))
        method = read_cluster_method(clusters)
    sequences = None
    if fasta is not None:
        sequence_of = {e.seq_id: e.sequence for path in fasta for e in read_fasta(path)}
        sequences = sequences_for(seq_id, sequence_of, ", ".join(map(str, fasta)))
    return RoundEmbeddings(
        X, round_labels(models, rounds), list(rounds), seq_id, groups, method, sequences
    )


# ----------------------------------------------------------------------------- design


@dataclass
class _Split:
    scheme: str
    label: int  # row of the label matrix (0 = real rounds)
    fold: int
    train: np.ndarray
    test: np.ndarray
    outer: int = -1  # for an inner split: the outer split it selects C for


@dataclass
class CVDesign:
    """Every split and label vector the sweep fits: outer splits first, then inner ones."""

    labels: np.ndarray  # [Y, n]
    splits: list[_Split] = field(default_factory=list)

    @property
    def outer(self) -> list[int]:
        return [i for i, s in enumerate(self.splits) if s.outer < 0]

    @property
    def inner(self) -> list[int]:
        return [i for i, s in enumerate(self.splits) if s.outer >= 0]


def build_design(
    y: np.ndarray, groups: np.ndarray, settings: ProbeSettings, *, permutations: int | None = None
) -> CVDesign:
    """Label vectors (real + permutations) and every outer and inner split of the sweep.

    permutations: overrides settings.permutations (0 for the baselines, which are compared
    with the layers on the real labels only); the real-label folds do not depend on it.
    """
    seed = settings.seed
    n_perm = settings.permutations if permutations is None else permutations
    labels = [y]
    for p in range(n_perm):
        rng = np.random.default_rng(derive_seed(seed, "permutation", p))
        labels.append(permute_clusters(y, groups, rng))
    design = CVDesign(labels=np.stack(labels))
    schemes = [(GROUPED, 0), (UNGROUPED, 0)] + [(PERMUTED, p) for p in range(1, len(labels))]
    for scheme, p in schemes:
        lab = labels[p]
        if scheme == UNGROUPED:
            folds = stratified_folds(lab, settings.folds, derive_seed(seed, scheme, p))
        else:
            folds = stratified_group_folds(
                lab, groups, settings.folds, derive_seed(seed, GROUPED, p)
            )
        for f in range(settings.folds):
            design.splits.append(_Split(scheme, p, f, folds != f, folds == f))
    if settings.C is None:
        for o in list(design.outer):
            outer = design.splits[o]
            rows = np.flatnonzero(outer.train)
            inner_seed = derive_seed(seed, "inner", outer.scheme, outer.label, outer.fold)
            lab = labels[outer.label][rows]
            if outer.scheme == UNGROUPED:
                inner = stratified_folds(lab, settings.inner_folds, inner_seed)
            else:
                inner = stratified_group_folds(lab, groups[rows], settings.inner_folds, inner_seed)
            for j in range(settings.inner_folds):
                train = np.zeros_like(outer.train)
                test = np.zeros_like(outer.train)
                train[rows[inner != j]] = True
                test[rows[inner == j]] = True
                design.splits.append(_Split(outer.scheme, outer.label, j, train, test, o))
    return design


# ----------------------------------------------------------------------------- solving


def _bytes_per_problem(n: int, d: int, K: int, history: int) -> int:
    """float32 working memory of one (layer, problem) pair in fit_multinomial."""
    return 4 * (3 * n * K + (d + 1) * K * (2 * history + 12) + 4 * d)


def default_memory_budget(device: torch.device) -> int:
    """Bytes one batch may use: half the free GPU memory, or a quarter of free RAM (<= 8 GiB)."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free * 0.5)
    return int(min(psutil.virtual_memory().available * 0.25, 8 * 2**30))


def _chunks(
    n_layers: int, n_problems: int, n: int, d: int, K: int, history: int, budget: int
) -> tuple[int, int]:
    """(layers per batch, problems per batch) that fit the memory budget."""
    per_problem = _bytes_per_problem(n, d, K, history)
    per_layer_fixed = 4 * (n * d * 2 + d * d * 2)
    problems = max(1, min(n_problems, (budget - per_layer_fixed) // per_problem))
    if problems < n_problems:
        return 1, problems
    layers = max(1, min(n_layers, budget // (per_layer_fixed + per_problem * n_problems)))
    return layers, n_problems


@dataclass
class _Solved:
    """Test-fold results of P problems on L layers."""

    hits: np.ndarray  # [L, P, K] correct test predictions per true class
    counts: np.ndarray  # [P, K] test rows per class
    converged: np.ndarray  # [L, P]
    predictions: np.ndarray | None  # [L, P_kept, n] int8, -1 off the test rows

    @property
    def accuracy(self) -> np.ndarray:
        """[L, P] test accuracy of each problem."""
        return self.hits.sum(-1) / np.maximum(self.counts.sum(-1), 1)


def _solve(
    X_layers: Sequence[np.ndarray],
    labels: torch.Tensor,
    train: torch.Tensor,
    test: torch.Tensor,
    split: np.ndarray,
    label: np.ndarray,
    C: np.ndarray,
    n_classes: int,
    solver: SolverSettings,
    device: torch.device,
    budget: int,
    keep_predictions: np.ndarray | None = None,
) -> _Solved:
    """Fit problems (split[p], label[p], C[l, p]) on every layer; score their test rows.

    keep_predictions: bool [P], the problems whose test-row predictions are returned.
    """
    L, (n, d), P, K = len(X_layers), X_layers[0].shape, len(split), n_classes
    hits = np.zeros((L, P, K))
    counts = np.zeros((P, K))
    converged = np.zeros((L, P), dtype=bool)
    kept = np.flatnonzero(keep_predictions) if keep_predictions is not None else np.array([], int)
    slot = np.full(P, -1)
    slot[kept] = np.arange(kept.size)
    pred = np.full((L, kept.size, n), -1, dtype=np.int8) if kept.size else None
    n_layers, n_problems = _chunks(L, P, n, d, K, solver.history, budget)
    for l0 in range(0, L, n_layers):
        layers = range(l0, min(L, l0 + n_layers))
        ls = slice(l0, l0 + len(layers))
        X = torch.from_numpy(np.stack([X_layers[layer] for layer in layers])).to(device)
        for p0 in range(0, P, n_problems):
            ps = slice(p0, min(P, p0 + n_problems))
            started = time.perf_counter()
            uniq, inverse = np.unique(split[ps], return_inverse=True)
            problems = Problems(
                labels=labels,
                train=train[torch.from_numpy(uniq).to(device)],
                split=torch.from_numpy(inverse).to(device),
                label=torch.from_numpy(label[ps]).to(device),
                C=torch.from_numpy(C[ls, ps]).to(device),
                n_classes=K,
            )
            fit = fit_multinomial(X, problems, solver)
            predicted = fit.predict(X)  # [L', P', n]
            y_true = labels[problems.label]  # [P', n]
            mask = test[torch.from_numpy(split[ps]).to(device)]  # [P', n]
            hit = ((predicted == y_true[None]) & mask[None]).to(X.dtype)
            per_class = torch.zeros(len(layers), hit.shape[1], K, dtype=X.dtype, device=device)
            per_class.scatter_add_(2, y_true[None].expand_as(hit), hit)
            hits[ls, ps] = per_class.cpu().numpy()
            rows = torch.zeros(hit.shape[1], K, dtype=X.dtype, device=device)
            counts[ps] = rows.scatter_add_(1, y_true, mask.to(X.dtype)).cpu().numpy()
            converged[ls, ps] = fit.converged.cpu().numpy()
            local = np.flatnonzero(slot[ps] >= 0)
            if pred is not None and local.size:
                chosen = torch.from_numpy(local).to(device)
                pred[ls, slot[ps][local]] = (
                    torch.where(mask[chosen][None], predicted[:, chosen], -1)
                    .to(torch.int8)
                    .cpu()
                    .numpy()
                )
            log.info(
                "layers %d-%d, problems %d-%d of %d: median %d iterations, %.1fs",
                layers[0],
                layers[-1],
                ps.start,
                ps.stop - 1,
                P,
                int(fit.n_iter.median()),
                time.perf_counter() - started,
            )
    return _Solved(hits, counts, converged, pred)


def cv_accuracy(
    X_layers: Sequence[np.ndarray],
    y: np.ndarray,
    folds: np.ndarray,
    C: float,
    solver: SolverSettings | None = None,
    *,
    device: torch.device | str = "cpu",
    memory_budget: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Test accuracy [L, F] and convergence [L, F] of one C on given folds (fold id per row).

    The building block of the sweep, for notebooks and the benchmark: scaler and model fitted
    on each fold's training rows, all layers and folds in one batched solve.
    """
    y = np.asarray(y, dtype=np.int64)
    device = torch.device(device)
    budget = default_memory_budget(device) if memory_budget is None else memory_budget
    n_folds = int(folds.max()) + 1
    train = np.stack([folds != f for f in range(n_folds)])
    mats = [_standardise(np.asarray(x, dtype=np.float32)) for x in X_layers]
    solved = _solve(
        mats,
        labels=torch.from_numpy(y[None]).to(device),
        train=torch.from_numpy(train).to(device),
        test=torch.from_numpy(~train).to(device),
        split=np.arange(n_folds),
        label=np.zeros(n_folds, dtype=np.int64),
        C=np.full((len(mats), n_folds), float(C)),
        n_classes=int(y.max()) + 1,
        solver=solver or SolverSettings(),
        device=device,
        budget=budget,
    )
    return solved.accuracy, solved.converged


def _standardise(X: np.ndarray) -> np.ndarray:
    """Global z-scoring: exact under the per-fold scaler, and keeps float32 sums accurate."""
    mean = X.mean(0, dtype=np.float64)
    sd = X.std(0, dtype=np.float64)
    sd[sd < 1e-12] = 1.0
    return (X - mean.astype(np.float32)) * (1.0 / sd).astype(np.float32)


@dataclass
class _SetFit:
    """Outer-split results of one family of feature sets (the layers, or one baseline)."""

    outer: list[_Split]
    solved: _Solved  # over the outer splits
    chosen: np.ndarray  # [L, O] C used


def _fit_feature_sets(
    mats: Sequence[np.ndarray],
    design: CVDesign,
    settings: ProbeSettings,
    run: dict[str, Any],
) -> _SetFit:
    """Nested C choice (when C is not fixed), then the outer fits of every feature set."""
    grid = np.array(settings.grid)
    L, outer, inner = len(mats), design.outer, design.inner
    chosen = np.full((L, len(outer)), grid[0])
    if settings.C is None:
        # Nested CV: every inner split x every candidate C, one batch; scored by balanced
        # accuracy pooled over the inner folds, the headline's own measure.
        split = np.repeat(inner, len(grid))
        cs = np.tile(grid, len(inner))
        label = np.array([design.splits[s].label for s in split])
        solved = _solve(mats, split=split, label=label, C=np.tile(cs, (L, 1)), **run)
        owner = np.array([design.splits[s].outer for s in split])
        for o_index, o in enumerate(outer):
            scores = np.stack(
                [
                    balanced_accuracy_from_counts(
                        solved.hits[:, (owner == o) & (cs == c)].sum(1),
                        solved.counts[(owner == o) & (cs == c)].sum(0),
                    )
                    for c in grid
                ],
                1,
            )
            chosen[:, o_index] = grid[np.nan_to_num(scores, nan=-1).argmax(1)]  # smallest C
    splits = [design.splits[s] for s in outer]
    keep = np.array([s.scheme == GROUPED for s in splits])
    solved = _solve(
        mats,
        split=np.array(outer),
        label=np.array([s.label for s in splits]),
        C=chosen,
        keep_predictions=keep,
        **run,
    )
    return _SetFit(splits, solved, chosen)


# ----------------------------------------------------------------------------- the sweep


@dataclass
class ProbeResult:
    accuracy: pd.DataFrame  # one row per layer, then one per baseline (ACCURACY_COLUMNS)
    folds: pd.DataFrame  # features, layer, scheme, permutation, fold, accuracies, C
    confusion: pd.DataFrame  # counts at the best layer (rows true round, columns predicted)
    best_layer: int


def probe_sweep(
    X_layers: Mapping[int, np.ndarray] | Sequence[np.ndarray],
    y: np.ndarray,
    groups: np.ndarray | None,
    settings: ProbeSettings,
    *,
    baselines: Mapping[str, np.ndarray] | None = None,
    class_names: Sequence[str] | None = None,
    layers: Sequence[int] | None = None,
    cluster_method: str = "none",
    device: torch.device | str = "cpu",
    memory_budget: int | None = None,
) -> ProbeResult:
    """Cross-validated round probes for every layer (X_layers: float [n, d] per layer).

    baselines: name -> feature matrix [n, d_b] (plmdiff.probes.baselines), probed on the same
    folds as the layers; every layer is then compared with the best of them. A baseline named
    `layer_0` that is the sweep's own layer 0 reuses that layer's fits. cluster_method: how
    `groups` was made, recorded in every row of the table.
    """
    if isinstance(X_layers, Mapping):
        layers = list(X_layers) if layers is None else list(layers)
        mats = [np.ascontiguousarray(X_layers[layer], dtype=np.float32) for layer in layers]
    else:
        mats = [np.ascontiguousarray(x, dtype=np.float32) for x in X_layers]
        layers = list(range(len(mats))) if layers is None else list(layers)
    y = np.asarray(y, dtype=np.int64)
    n = len(y)
    groups = (
        np.arange(n) if groups is None else np.unique(np.asarray(groups), return_inverse=True)[1]
    )
    class_names = [str(k) for k in range(y.max() + 1)] if class_names is None else list(class_names)
    K = len(class_names)
    if any(m.shape[0] != n for m in mats):
        raise DataError(f"every layer needs {n} rows, one per label")
    check_class_sizes(y, groups, settings.folds, class_names)
    device = torch.device(device)
    budget = default_memory_budget(device) if memory_budget is None else memory_budget
    run: dict[str, Any] = dict(n_classes=K, solver=settings.solver(), device=device, budget=budget)

    design = build_design(y, groups, settings)
    layer_fit = _fit_feature_sets(
        [_standardise(m) for m in mats],
        design,
        settings,
        {**run, **_design_tensors(design, device)},
    )
    baseline_fits: dict[str, _SetFit] = {}
    if baselines:
        base_design = build_design(y, groups, settings, permutations=0)
        tensors = _design_tensors(base_design, device)
        for name, features in baselines.items():
            features = np.ascontiguousarray(features, dtype=np.float32)
            if features.shape[0] != n:
                raise DataError(f"baseline '{name}' has {features.shape[0]} rows, expected {n}")
            if name == LAYER0 and 0 in layers and features is not None:
                baseline_fits[name] = _real_only(layer_fit, layers.index(0))
                continue
            baseline_fits[name] = _fit_feature_sets(
                [_standardise(features)], base_design, settings, {**run, **tensors}
            )
    return _summarise(
        layers, layer_fit, baseline_fits, y, groups, class_names, settings, cluster_method
    )


def _design_tensors(design: CVDesign, device: torch.device) -> dict[str, torch.Tensor]:
    return dict(
        labels=torch.from_numpy(design.labels).to(device),
        train=torch.from_numpy(np.stack([s.train for s in design.splits])).to(device),
        test=torch.from_numpy(np.stack([s.test for s in design.splits])).to(device),
    )


def _real_only(fit: _SetFit, layer_index: int) -> _SetFit:
    """One layer's real-label outer splits of a sweep, as a baseline's fit."""
    keep = np.array([s.label == 0 for s in fit.outer])
    kept_pred = keep[[s.scheme == GROUPED for s in fit.outer]]
    solved = fit.solved
    li = slice(layer_index, layer_index + 1)
    return _SetFit(
        [s for s, k in zip(fit.outer, keep, strict=True) if k],
        _Solved(
            solved.hits[li][:, keep],
            solved.counts[keep],
            solved.converged[li][:, keep],
            None if solved.predictions is None else solved.predictions[li][:, kept_pred],
        ),
        fit.chosen[li][:, keep],
    )


def _scheme_rows(fit: _SetFit, scheme: str, label: int = 0) -> np.ndarray:
    return np.array([s.scheme == scheme and s.label == label for s in fit.outer])


@dataclass
class _Scores:
    """Pooled (fold-size weighted) scores of one family of feature sets on one scheme."""

    balanced: np.ndarray  # [L]
    accuracy: np.ndarray  # [L]
    recall: np.ndarray  # [L, K]
    fold_balanced: np.ndarray  # [L, F]
    fold_accuracy: np.ndarray  # [L, F]


def _scores(fit: _SetFit, rows: np.ndarray) -> _Scores:
    hits, counts = fit.solved.hits[:, rows], fit.solved.counts[rows]
    pooled_hits, pooled_counts = hits.sum(1), counts.sum(0)
    with np.errstate(invalid="ignore", divide="ignore"):
        recall = np.where(pooled_counts > 0, pooled_hits / np.maximum(pooled_counts, 1), np.nan)
    return _Scores(
        balanced=balanced_accuracy_from_counts(pooled_hits, pooled_counts),
        accuracy=pooled_hits.sum(-1) / max(pooled_counts.sum(), 1),
        recall=recall,
        fold_balanced=balanced_accuracy_from_counts(hits, counts[None]),
        fold_accuracy=fit.solved.accuracy[:, rows],
    )


def _oof_correct(fit: _SetFit, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Out-of-fold prediction [L, n] of the real grouped folds and whether it is right."""
    pred = fit.solved.predictions
    assert pred is not None
    real = np.array([s.label == 0 for s in fit.outer if s.scheme == GROUPED])
    oof = pred[:, real].max(1).astype(np.int64)  # every row is a test row of one grouped fold
    return oof, oof == y[None]


def _summarise(
    layers: list[int],
    layer_fit: _SetFit,
    baseline_fits: Mapping[str, _SetFit],
    y: np.ndarray,
    groups: np.ndarray,
    class_names: Sequence[str],
    settings: ProbeSettings,
    cluster_method: str,
) -> ProbeResult:
    K = len(class_names)
    grouped = _scores(layer_fit, _scheme_rows(layer_fit, GROUPED))
    ungrouped = _scores(layer_fit, _scheme_rows(layer_fit, UNGROUPED))
    perm_ids = sorted({s.label for s in layer_fit.outer if s.scheme == PERMUTED})
    # Null distribution: pooled balanced accuracy of each permutation [L, B], shared by all
    # layers (the same permuted labels and folds), hence the max-statistic adjustment.
    null = np.stack(
        [_scores(layer_fit, _scheme_rows(layer_fit, PERMUTED, p)).balanced for p in perm_ids]
        or [np.full(len(layers), np.nan)],
        1,
    )[:, : len(perm_ids)]
    p_values = permutation_p(grouped.balanced, null)
    oof, correct = _oof_correct(layer_fit, y)

    names = list(baseline_fits)
    base_scores = {
        name: _scores(fit, _scheme_rows(fit, GROUPED)) for name, fit in baseline_fits.items()
    }
    base_ungrouped = {
        name: _scores(fit, _scheme_rows(fit, UNGROUPED)) for name, fit in baseline_fits.items()
    }
    base_correct = {name: _oof_correct(fit, y)[1][0] for name, fit in baseline_fits.items()}
    all_correct = np.concatenate([correct, *[base_correct[n][None] for n in names]])
    ci_low, ci_high = bootstrap_balanced_accuracy(
        all_correct, y, groups, K, settings.bootstrap, derive_seed(settings.seed, "bootstrap")
    )

    best = ""
    margin = margin_p = margin_fwer = np.full(len(layers), np.nan)
    if names:
        best = max(names, key=lambda name: base_scores[name].balanced[0])
        margin, margin_p, margin_fwer = margin_test(
            correct,
            base_correct[best],
            y,
            groups,
            settings.margin_permutations,
            derive_seed(settings.seed, "margin"),
        )

    def block(scores: _Scores, ungrouped_scores: _Scores, fit: _SetFit, rows: slice) -> dict:
        g, u = _scheme_rows(fit, GROUPED), _scheme_rows(fit, UNGROUPED)
        return {
            "balanced_accuracy": scores.balanced,
            "balanced_accuracy_ci_low": ci_low[rows],
            "balanced_accuracy_ci_high": ci_high[rows],
            # Population std over folds, as `cross_val_score(...).std()` reports it.
            "std_balanced_accuracy": np.nanstd(scores.fold_balanced, 1),
            **{f"recall_{name}": scores.recall[:, k] for k, name in enumerate(class_names)},
            "accuracy": scores.accuracy,
            "std_accuracy": scores.fold_accuracy.std(1),
            "balanced_accuracy_ungrouped": ungrouped_scores.balanced,
            "accuracy_ungrouped": ungrouped_scores.accuracy,
            "C": [_mode(row) for row in fit.chosen[:, g]],
            "C_ungrouped": [_mode(row) for row in fit.chosen[:, u]],
            "converged": fit.solved.converged.mean(1),
        }

    L = len(layers)
    table = pd.DataFrame(
        {
            "features": LAYER_FEATURES,
            "layer": pd.array(layers, dtype="Int64"),
            **block(grouped, ungrouped, layer_fit, slice(0, L)),
            "permutation_mean": null.mean(1) if perm_ids else np.nan,
            "permutation_q05": np.quantile(null, 0.05, axis=1) if perm_ids else np.nan,
            "permutation_q95": np.quantile(null, 0.95, axis=1) if perm_ids else np.nan,
            "permutation_p": p_values,
            "permutation_p_fwer": westfall_young(grouped.balanced, null),
            # Benjamini-Hochberg across layers, kept beside the family-wise p for comparison.
            "permutation_q": benjamini_hochberg(p_values),
            "permutation_min_p": min_permutation_p(len(perm_ids)) if perm_ids else np.nan,
            "best_baseline": best,
            "margin": margin,
            "margin_p": margin_p,
            "margin_p_fwer": margin_fwer,
            "margin_min_p": min_permutation_p(settings.margin_permutations) if names else np.nan,
        }
    )
    rows = [table]
    for i, name in enumerate(names):
        fit = baseline_fits[name]
        rows.append(
            pd.DataFrame(
                {
                    "features": name,
                    "layer": pd.array([pd.NA], dtype="Int64"),
                    **block(base_scores[name], base_ungrouped[name], fit, slice(L + i, L + i + 1)),
                    "best_baseline": best,
                }
            )
        )
    accuracy = pd.concat(rows, ignore_index=True)
    accuracy["chance"] = 1.0 / np.unique(y).size
    accuracy["majority_rate"] = np.bincount(y).max() / len(y)
    accuracy["n_sequences"] = len(y)
    accuracy["n_clusters"] = np.unique(groups).size
    accuracy["cluster_method"] = cluster_method
    recall_columns = [f"recall_{name}" for name in class_names]
    at = ACCURACY_COLUMNS.index("balanced_accuracy_ci_high") + 1
    columns = ACCURACY_COLUMNS[:at] + recall_columns + ACCURACY_COLUMNS[at:]
    accuracy = accuracy.reindex(columns=columns)

    folds = _fold_table(layers, layer_fit, baseline_fits)
    best_index = int(np.argmax(grouped.balanced))  # first maximum: the shallowest best layer
    counts = np.zeros((K, K), dtype=np.int64)
    np.add.at(counts, (y, oof[best_index]), 1)
    confusion = pd.DataFrame(
        counts,
        index=pd.Index(class_names, name="true"),
        columns=pd.Index(class_names, name="predicted"),
    )
    return ProbeResult(accuracy, folds, confusion, layers[best_index])


def _fold_table(
    layers: list[int], layer_fit: _SetFit, baseline_fits: Mapping[str, _SetFit]
) -> pd.DataFrame:
    """One row per feature set x outer split: the fold's own accuracies, C and convergence."""
    frames = []
    sets = [(LAYER_FEATURES, layers, layer_fit)] + [
        (name, [None], fit) for name, fit in baseline_fits.items()
    ]
    for features, names, fit in sets:
        solved = fit.solved
        balanced = balanced_accuracy_from_counts(solved.hits, solved.counts[None])
        for li, layer in enumerate(names):
            frames.append(
                pd.DataFrame(
                    {
                        "features": features,
                        "layer": pd.array([layer] * len(fit.outer), dtype="Int64"),
                        "scheme": [s.scheme for s in fit.outer],
                        "permutation": [s.label for s in fit.outer],
                        "fold": [s.fold for s in fit.outer],
                        "n_test": solved.counts.sum(-1).astype(int),
                        "accuracy": solved.accuracy[li],
                        "balanced_accuracy": balanced[li],
                        "C": fit.chosen[li],
                        "converged": solved.converged[li],
                    }
                )
            )
    return pd.concat(frames, ignore_index=True)


def _mode(values: np.ndarray) -> float:
    """Most frequent value (ties: the smallest, i.e. the strongest penalty)."""
    uniq, counts = np.unique(values, return_counts=True)
    return float(uniq[counts.argmax()])


def write_probe_tables(
    result: ProbeResult,
    accuracy: str | os.PathLike,
    folds: str | os.PathLike,
    confusion: str | os.PathLike,
) -> None:
    """TSV outputs, each written atomically."""
    for frame, path, index in (
        (result.accuracy, accuracy, False),
        (result.folds, folds, False),
        (result.confusion, confusion, True),
    ):
        write_table(frame, path, index=index)
