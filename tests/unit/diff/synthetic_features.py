"""Synthetic token activations built from a known dictionary, with a planted change.

Every token is a sum of dictionary atoms (3 background atoms drawn uniformly, the same law in
every round) plus the planted atom with a probability that grows with the round. SAEs whose
decoder is that dictionary (or a permutation of it) are real sae-lens JumpReLU SAEs saved to disk.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from plmdiff.activations.writers import TokenWriter
from plmdiff.config.sections import section_defaults
from plmdiff.diff.feature_stats import (
    FeatureStats,
    compute_feature_stats,
    held_out_sequences,
    sae_decoder,
)
from plmdiff.diff.settings import DiffConfig, FeatureStatsConfig
from plmdiff.sae.training import load_sae, save_sae

AMINO = "ACDEFGHIKLMNPQRSTVWY"


def diff_config(**overrides: object) -> DiffConfig:
    """The diff settings of the schema's defaults, with `overrides` (as a config would set)."""
    return DiffConfig.from_section({**section_defaults("diff"), **overrides})


def stats_config(**overrides: object) -> FeatureStatsConfig:
    """The feature_stats settings of the schema's defaults, with `overrides`."""
    return FeatureStatsConfig.from_section({**section_defaults("diff"), **overrides})


@dataclass(frozen=True)
class Plant:
    models: tuple[str, ...] = ("r0", "r1", "r2")
    d_in: int = 24
    planted: int = 0
    planted_prob: tuple[float, ...] = (0.03, 0.15, 0.35)
    n_sequences: int = 40
    background: int = 3
    seed: int = 0


def dictionary(d: int, seed: int = 0) -> np.ndarray:
    q, _ = np.linalg.qr(np.random.default_rng(seed).normal(size=(d, d)))
    return q.T.astype(np.float32)  # rows are orthonormal atoms


def write_tokens(root: Path, plant: Plant, atoms: np.ndarray) -> dict[str, list[Path]]:
    """One token layer directory per model (two part files each); returns model -> [dir]."""
    rng = np.random.default_rng(plant.seed)
    d_sae = atoms.shape[0]
    dirs = {}
    for r, model in enumerate(plant.models):
        directory = root / model / "layer_01"
        ids, residues, acts = [], [], []
        for i in range(plant.n_sequences):
            length = int(rng.integers(15, 31))
            coef = np.zeros((length, d_sae), dtype=np.float32)
            for t in range(length):
                bg = rng.choice(np.arange(1, d_sae), size=plant.background, replace=False)
                coef[t, bg] = rng.uniform(1.0, 2.0, size=plant.background)
                if rng.random() < plant.planted_prob[r]:
                    coef[t, plant.planted] = rng.uniform(1.0, 2.0)
            x = coef @ atoms + rng.normal(0, 0.05, size=(length, atoms.shape[1]))
            ids.append(f"{model}_000_{i:05d}")
            residues.append("".join(rng.choice(list(AMINO), size=length)))
            acts.append(x.astype(np.float32))
        half = plant.n_sequences // 2
        for part, sl in enumerate((slice(0, half), slice(half, None))):
            with TokenWriter(
                directory / f"part-{part:05d}.parquet",
                layer=1,
                d_model=atoms.shape[1],
                dtype="float32",
                metadata={"embedder": plant.models[0]},
                row_group_rows=128,
            ) as writer:
                writer.write(ids[sl], residues[sl], np.concatenate(acts[sl]))
        dirs[model] = [directory]
    return dirs


def dictionary_sae(atoms: np.ndarray, threshold: float = 0.5):
    """A sae-lens JumpReLU SAE that encodes with the dictionary itself."""
    from sae_lens import JumpReLUSAE, JumpReLUSAEConfig

    d_sae, d_in = atoms.shape
    sae = JumpReLUSAE(JumpReLUSAEConfig(d_in=d_in, d_sae=d_sae))
    with torch.no_grad():
        sae.W_dec.copy_(torch.from_numpy(atoms))
        sae.W_enc.copy_(torch.from_numpy(atoms.T.copy()))
        sae.b_enc.zero_()
        sae.b_dec.zero_()
        sae.threshold.fill_(threshold)
    return sae


def save_dictionary_sae(path: Path, atoms: np.ndarray) -> Path:
    return save_sae(dictionary_sae(atoms), path)


def permuted_noisy(
    atoms: np.ndarray, seed: int, noise: float = 0.02
) -> tuple[np.ndarray, np.ndarray]:
    """(perm, atoms[perm] + noise, renormalised): another replica of the same dictionary."""
    rng = np.random.default_rng(seed)
    perm = rng.permutation(atoms.shape[0])
    other = atoms[perm] + rng.normal(0, noise, size=atoms.shape).astype(np.float32)
    return perm, (other / np.linalg.norm(other, axis=1, keepdims=True)).astype(np.float32)


PLANT = Plant()
K, SEED = 2, 0  # fold replicas of the planted study's SAE, and the fold split's seed


def build_planted(root: Path, plant: Plant = Plant(), k: int = 2, seed: int = 0) -> dict:
    """Token dirs of every round, two fold replicas of the base SAE (the second a permuted,
    perturbed copy) and their feature stats written as the feature_stats rule writes them."""
    atoms = dictionary(plant.d_in)
    dirs = write_tokens(root / "acts", plant, atoms)
    perm, atoms1 = permuted_noisy(atoms, seed=1)
    saes = {
        0: save_dictionary_sae(root / "sae0", atoms),
        1: save_dictionary_sae(root / "sae1", atoms1),
    }
    cfg = stats_config(batch_tokens=100, top_examples=3, example_window=4)
    stats, decoders, paths = {}, {}, {}
    for fold, path in saes.items():
        sae = load_sae(path)
        seq_ids = {m: held_out_sequences(d, k, seed, fold, True) for m, d in dirs.items()}
        fs = compute_feature_stats(sae, dirs, cfg, seq_ids=seq_ids, metadata={"scheme": "base"})
        out = root / f"features/fold_{fold}.parquet"
        fs.write(out)
        stats[("base", fold)] = FeatureStats.read(out)
        decoders[("base", fold)] = sae_decoder(sae)
        paths[("base", fold)] = str(out)
    return {
        "root": root,
        "dirs": dirs,
        "atoms": atoms,
        "perm": perm,
        "stats": stats,
        "decoders": decoders,
        "stats_paths": paths,
        "sae_paths": {("base", f): str(p) for f, p in saes.items()},
    }
