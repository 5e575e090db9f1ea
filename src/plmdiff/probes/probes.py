"""Per-layer probes: which layers tell the rounds apart, honestly, and fast.

For every layer a multinomial logistic regression predicts the round of a sequence from its
pooled embedding, under stratified K-fold cross-validation with standardised features (scaler
fitted on the training fold only) and C fixed or chosen per layer by nested CV. Three schemes
share one batched solve (plmdiff.probes.logreg):

- grouped: stratified *group* K-fold, groups = sequence-identity clusters, so near-identical
  sequences (mode collapse across rounds) never sit on both sides of a split. The headline.
- ungrouped: plain stratified K-fold on the real labels, for comparison (leakage shows as a gap).
- permutation: the grouped pipeline, nested C choice included, on labels permuted between
  clusters; its mean fold accuracy per permutation is the null distribution of the headline.
"""

from __future__ import annotations

import logging
import time
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from sklearn.model_selection import StratifiedGroupKFold, StratifiedKFold

from plmdiff.core.errors import ConfigError, DataError
from plmdiff.core.runtime import derive_seed
from plmdiff.core.stats import benjamini_hochberg
from plmdiff.probes.logreg import Problems, SolverSettings, fit_multinomial

log = logging.getLogger(__name__)

GROUPED, UNGROUPED, PERMUTED = "grouped", "ungrouped", "permutation"

ACCURACY_COLUMNS = [
    "layer",
    "mean_accuracy",
    "std_accuracy",
    "chance",
    "permutation_mean",
    "permutation_p",
    "permutation_q",
    "permutation_q05",
    "permutation_q95",
    "mean_accuracy_ungrouped",
    "std_accuracy_ungrouped",
    "C",
    "C_ungrouped",
    "converged",
    "n_sequences",
    "n_clusters",
]


@dataclass(frozen=True)
class ProbeSettings:
    """The `probes` config section (cluster_identity belongs to plmdiff.probes.clustering)."""

    folds: int = 5
    permutations: int = 49
    C: float | None = None
    C_grid: tuple[float, ...] = (0.01, 0.1, 1.0, 10.0)
    inner_folds: int = 3
    max_iter: int = 100
    tol: float = 1e-4
    seed: int = 0

    @classmethod
    def from_config(cls, section: Mapping[str, Any]) -> ProbeSettings:
        known = {"folds", "permutations", "C", "C_grid", "inner_folds", "max_iter", "tol", "seed"}
        kwargs = {k: v for k, v in section.items() if k in known}
        if "C_grid" in kwargs:
            kwargs["C_grid"] = tuple(float(c) for c in kwargs["C_grid"])
        settings = cls(**kwargs)
        settings.check()
        return settings

    def check(self) -> None:
        if self.folds < 2:
            raise ConfigError(f"probes.folds: {self.folds} is not accepted; expected >= 2")
        if self.C is None and (not self.C_grid or min(self.C_grid) <= 0):
            raise ConfigError("probes.C_grid: expected a non-empty list of numbers > 0")
        if self.C is None and self.inner_folds < 2:
            raise ConfigError(
                f"probes.inner_folds: {self.inner_folds} is not accepted; expected >= 2"
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
    """Fold index per row, stratified by label, with every group inside one fold."""
    if np.unique(groups).size < k:
        raise DataError(
            f"only {np.unique(groups).size} sequence clusters for {k} folds; lower probes.folds "
            "or probes.inner_folds, or raise probes.cluster_identity"
        )
    folds = np.empty(len(y), dtype=np.int64)
    splitter = StratifiedGroupKFold(n_splits=k, shuffle=True, random_state=seed % 2**32)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        for f, (_, test) in enumerate(splitter.split(np.zeros(len(y)), y, groups)):
            folds[test] = f
    return folds


def permute_between_clusters(
    y: np.ndarray, groups: np.ndarray, rng: np.random.Generator
) -> np.ndarray:
    """Labels permuted as runs over shuffled clusters: the null of 'no round signal'.

    Rows are laid out cluster by cluster; the clusters are shuffled and the original label
    sequence (in original cluster order) is laid over the shuffled layout. Round sizes are
    kept exactly, and a cluster that held one round mostly still does, so the permuted data
    keep the clumping of labels that grouped folds see. (Permuting rows freely would break
    that clumping and give a null that is too narrow; permuting within clusters would keep
    each cluster's round and is no null at all.)
    """
    _, codes = np.unique(groups, return_inverse=True)
    order = np.argsort(codes, kind="stable")
    shuffled_clusters = rng.permutation(codes.max() + 1)
    rank = np.empty_like(shuffled_clusters)
    rank[shuffled_clusters] = np.arange(shuffled_clusters.size)
    within = np.arange(len(y)) - np.searchsorted(codes[order], codes[order])
    new_order = order[np.lexsort((within, rank[codes[order]]))]
    permuted = np.empty_like(y)
    permuted[new_order] = y[order]
    return permuted


# ----------------------------------------------------------------------------- inputs


@dataclass
class RoundEmbeddings:
    """Pooled embeddings of every stored layer with each row's round and cluster."""

    X: dict[int, np.ndarray]  # layer -> float32 [n, d]
    y: np.ndarray  # round index per row (position of its model in config models)
    rounds: list[str]  # config model names, in order
    seq_id: np.ndarray
    groups: np.ndarray | None  # cluster per row, when a cluster table was given


def load_round_embeddings(
    pooled_paths: Sequence[str | Path],
    pooling: str,
    rounds: Sequence[str],
    *,
    layers: Sequence[int] | None = None,
    clusters: str | Path | None = None,
) -> RoundEmbeddings:
    """Read one pooling of `layers` (default: every stored layer) from the pooled files."""
    from plmdiff.activations.readers import load_pooled, pooled_layers
    from plmdiff.probes.clustering import groups_for, read_clusters

    layers = pooled_layers(pooled_paths[0]) if layers is None else list(layers)
    X: dict[int, np.ndarray] = {}
    seq_id = models = None
    for layer in layers:
        matrix = load_pooled(pooled_paths, layer, pooling)
        if seq_id is None:
            seq_id, models = matrix.seq_id, matrix.model
        elif not np.array_equal(seq_id, matrix.seq_id):
            raise DataError(f"pooled files {pooled_paths} list different rows for layer {layer}")
        X[layer] = matrix.X
    groups = None
    if clusters is not None:
        groups = np.asarray(groups_for(seq_id, read_clusters(clusters), str(clusters)))
    return RoundEmbeddings(X, round_labels(models, rounds), list(rounds), seq_id, groups)


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


def build_design(y: np.ndarray, groups: np.ndarray, settings: ProbeSettings) -> CVDesign:
    """Label vectors (real + permutations) and every outer and inner split of the sweep."""
    seed = settings.seed
    labels = [y]
    for p in range(settings.permutations):
        rng = np.random.default_rng(derive_seed(seed, "permutation", p))
        labels.append(permute_between_clusters(y, groups, rng))
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
    import psutil

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
    predictions: bool = False,
) -> tuple[np.ndarray, np.ndarray | None, np.ndarray]:
    """Fit problems (split[p], label[p], C[l, p]) on every layer.

    Returns test accuracy [L, P], test-row predictions [L, P, n] when asked for (int8, -1 off
    the test rows) and convergence [L, P].
    """
    L, (n, d), P = len(X_layers), X_layers[0].shape, len(split)
    acc = np.zeros((L, P))
    converged = np.zeros((L, P), dtype=bool)
    pred = np.full((L, P, n), -1, dtype=np.int8) if predictions else None
    n_layers, n_problems = _chunks(L, P, n, d, n_classes, solver.history, budget)
    for l0 in range(0, L, n_layers):
        layers = range(l0, min(L, l0 + n_layers))
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
                C=torch.from_numpy(C[l0 : l0 + len(layers), ps]).to(device),
                n_classes=n_classes,
            )
            fit = fit_multinomial(X, problems, solver)
            predicted = fit.predict(X)  # [L', P', n]
            y_true = labels[problems.label]  # [P', n]
            mask = test[torch.from_numpy(split[ps]).to(device)]  # [P', n]
            hits = ((predicted == y_true[None]) & mask[None]).sum(-1)
            acc[l0 : l0 + len(layers), ps] = (hits / mask.sum(-1).clamp_min(1)).cpu().numpy()
            converged[l0 : l0 + len(layers), ps] = fit.converged.cpu().numpy()
            if pred is not None:
                pred[l0 : l0 + len(layers), ps] = (
                    torch.where(mask[None], predicted, -1).to(torch.int8).cpu().numpy()
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
    return acc, pred, converged


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
    acc, _, converged = _solve(
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
    return acc, converged


# ----------------------------------------------------------------------------- the sweep


@dataclass
class ProbeResult:
    accuracy: pd.DataFrame  # one row per layer, ACCURACY_COLUMNS
    folds: pd.DataFrame  # layer, scheme, permutation, fold, accuracy, C
    confusion: pd.DataFrame  # counts at the best layer (rows true round, columns predicted)
    best_layer: int


def probe_sweep(
    X_layers: Mapping[int, np.ndarray] | Sequence[np.ndarray],
    y: np.ndarray,
    groups: np.ndarray | None,
    settings: ProbeSettings,
    *,
    class_names: Sequence[str] | None = None,
    layers: Sequence[int] | None = None,
    device: torch.device | str = "cpu",
    memory_budget: int | None = None,
) -> ProbeResult:
    """Cross-validated round probes for every layer (X_layers: float [n, d] per layer)."""
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
    mats = [_standardise(m) for m in mats]

    design = build_design(y, groups, settings)
    labels = torch.from_numpy(design.labels).to(device)
    train = torch.from_numpy(np.stack([s.train for s in design.splits])).to(device)
    test = torch.from_numpy(np.stack([s.test for s in design.splits])).to(device)
    grid = np.array(settings.grid)
    L, outer, inner = len(mats), design.outer, design.inner
    solver = settings.solver()
    run = dict(
        labels=labels,
        train=train,
        test=test,
        n_classes=K,
        solver=solver,
        device=device,
        budget=budget,
    )

    chosen = np.full((L, len(outer)), grid[0])
    if settings.C is None:
        # Nested CV: every inner split x every candidate C, one batch.
        split = np.repeat(inner, len(grid))
        cs = np.tile(grid, len(inner))
        label = np.array([design.splits[s].label for s in split])
        acc, _, _ = _solve(mats, split=split, label=label, C=np.tile(cs, (L, 1)), **run)
        owner = np.array([design.splits[s].outer for s in split])
        for o_index, o in enumerate(outer):
            scores = np.stack([acc[:, (owner == o) & (cs == c)].mean(1) for c in grid], 1)
            chosen[:, o_index] = grid[scores.argmax(1)]  # first maximum: smallest C
    split = np.array(outer)
    label = np.array([design.splits[s].label for s in outer])
    acc, pred, converged = _solve(mats, split=split, label=label, C=chosen, predictions=True, **run)
    return _summarise(design, layers, acc, pred, converged, chosen, y, groups, class_names)


def _standardise(X: np.ndarray) -> np.ndarray:
    """Global z-scoring: exact under the per-fold scaler, and keeps float32 sums accurate."""
    mean = X.mean(0, dtype=np.float64)
    sd = X.std(0, dtype=np.float64)
    sd[sd < 1e-12] = 1.0
    return (X - mean.astype(np.float32)) * (1.0 / sd).astype(np.float32)


def _summarise(
    design: CVDesign,
    layers: list[int],
    acc: np.ndarray,
    pred: np.ndarray,
    converged: np.ndarray,
    chosen: np.ndarray,
    y: np.ndarray,
    groups: np.ndarray,
    class_names: Sequence[str],
) -> ProbeResult:
    outer = [design.splits[s] for s in design.outer]
    scheme = np.array([s.scheme for s in outer])
    label = np.array([s.label for s in outer])
    g, u = scheme == GROUPED, scheme == UNGROUPED
    perm_ids = sorted(set(label[scheme == PERMUTED]))
    # Null distribution: mean fold accuracy of each permutation [L, n_perm].
    null = np.stack([acc[:, label == p].mean(1) for p in perm_ids], 1) if perm_ids else None
    observed = acc[:, g].mean(1)
    permutation_p = (
        (1 + (null >= observed[:, None] - 1e-12).sum(1)) / (1 + null.shape[1])
        if null is not None
        else np.full(len(layers), np.nan)
    )
    table = pd.DataFrame(
        {
            "layer": layers,
            "mean_accuracy": observed,
            # Population std over folds, as `cross_val_score(...).std()` reports it.
            "std_accuracy": acc[:, g].std(1),
            "chance": np.bincount(y).max() / len(y),
            "permutation_mean": null.mean(1) if null is not None else np.nan,
            "permutation_p": permutation_p,
            # Benjamini-Hochberg across layers: every layer's probe is a test of its own.
            "permutation_q": benjamini_hochberg(permutation_p),
            "permutation_q05": np.quantile(null, 0.05, axis=1) if null is not None else np.nan,
            "permutation_q95": np.quantile(null, 0.95, axis=1) if null is not None else np.nan,
            "mean_accuracy_ungrouped": acc[:, u].mean(1),
            "std_accuracy_ungrouped": acc[:, u].std(1),
            "C": [_mode(row) for row in chosen[:, g]],
            "C_ungrouped": [_mode(row) for row in chosen[:, u]],
            "converged": converged.mean(1),
            "n_sequences": len(y),
            "n_clusters": np.unique(groups).size,
        }
    )[ACCURACY_COLUMNS]
    folds = pd.DataFrame(
        [
            {
                "layer": layer,
                "scheme": s.scheme,
                "permutation": s.label,
                "fold": s.fold,
                "accuracy": acc[li, oi],
                "C": chosen[li, oi],
                "converged": bool(converged[li, oi]),
            }
            for li, layer in enumerate(layers)
            for oi, s in enumerate(outer)
        ]
    )
    best = int(np.argmax(observed))  # first maximum: the shallowest best layer
    oof = pred[best, g].max(0)  # each row is a test row of exactly one grouped fold
    K = len(class_names)
    counts = np.zeros((K, K), dtype=np.int64)
    np.add.at(counts, (y, oof.astype(np.int64)), 1)
    confusion = pd.DataFrame(
        counts,
        index=pd.Index(class_names, name="true"),
        columns=pd.Index(class_names, name="predicted"),
    )
    return ProbeResult(table, folds, confusion, layers[best])


def _mode(values: np.ndarray) -> float:
    """Most frequent value (ties: the smallest, i.e. the strongest penalty)."""
    uniq, counts = np.unique(values, return_counts=True)
    return float(uniq[counts.argmax()])


def write_probe_tables(result: ProbeResult, accuracy: str, folds: str, confusion: str) -> None:
    """TSV outputs, each written atomically."""
    from plmdiff.core.runtime import atomic_path

    for frame, path, index in (
        (result.accuracy, accuracy, False),
        (result.folds, folds, False),
        (result.confusion, confusion, True),
    ):
        with atomic_path(path) as tmp:
            frame.to_csv(tmp, sep="\t", index=index, float_format="%.6g")
