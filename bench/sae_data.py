"""Benchmark: SAE training fed from the Parquet token shards vs from an in-memory tensor, one run.

Both sides train the same sae-lens BatchTopK SAE (same seed, batch size, steps, per-token
standardisation, background prefetch of batches) with plmdiff.sae.training.train; only the data
source differs:

- parquet: plmdiff.activations.loader.iter_tokens over float16 zstd token shards written by the
  activations stage's TokenWriter (row groups read in random order, shuffle buffer, loop=True),
  never more than the buffer in memory;
- memory: every token already in one float32 tensor, batches by random permutation.

Prints tokens/s of both and the ratio parquet / memory (target >= 0.9), for each size: the
demo's SAE (its embedder's d_model and its sae keys, read from config/demo.yaml), a wide SAE
(d_model 128, expansion 32, batch 2048) where training dominates a step, and, with --device cuda, also
ZymCTRL's d_model 1280 (expansion 12, batch 4096, the study's SAEs). A short warm-up run comes
first so that neither side pays torch's first-call costs; then the sides alternate, --repeats
times each, and each side's median time counts.

    .venv/bin/python bench/sae_data.py [--tokens 400000] [--steps N] [--repeats 3] [--threads 2]
    .venv/bin/python bench/sae_data.py --device cuda
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from data_bench import Size, add_arguments, compare_sides, run_sizes, speeds, timed


def _demo_size() -> Size:
    """The demo's SAE (config/demo.yaml): its embedder's width and its sae keys."""
    from plmdiff.config.schema import DEMO_CONFIG_PATH, load_config

    demo = load_config(DEMO_CONFIG_PATH)
    sae = demo["sae"]
    d_model = demo["demo"]["base"]["n_embd"]
    return Size("demo SAE", d_model, sae["expansion"], sae["k"], sae["batch_size"], 150)


# The demo's SAE and an SAE large enough that training, not data, dominates a step (what the
# target is about).
DEMO = _demo_size()
WIDE = Size("wide SAE", 128, 32, 32, 2048, 40)
ZYMCTRL = Size("ZymCTRL SAE", 1280, 12, 32, 4096, 200)
RESIDUES_PER_SEQUENCE = 300


def write_shards(root: Path, d_model: int, n_tokens: int, parts: int, seed: int = 0) -> Path:
    """Token shards of one layer as the extract rule writes them (float16, zstd, 64k row groups).

    The vectors have what residual streams have (a large common offset, a few heavy dimensions,
    per-token scale); speed does not depend on it, but the SAE then trains on sensible data.
    """
    from plmdiff.activations.writers import TokenWriter

    rng = np.random.default_rng(seed)
    layer_dir = root / f"d{d_model}" / "layer_03"
    if layer_dir.is_dir():  # sizes of one d_model share their shards
        return layer_dir
    offset = rng.normal(0, 3, d_model).astype(np.float32)
    offset[:4] *= 8
    n_seq = max(parts, n_tokens // RESIDUES_PER_SEQUENCE)
    per_part = np.array_split(np.arange(n_seq), parts)
    for part, seqs in enumerate(per_part):
        with TokenWriter(
            layer_dir / f"part-{part:05d}.parquet",
            layer=3,
            d_model=d_model,
            dtype="float16",
            metadata={"embedder": "bench", "d_model": d_model},
        ) as writer:
            for start in range(0, len(seqs), 64):
                chunk = seqs[start : start + 64]
                residues = ["A" * RESIDUES_PER_SEQUENCE for _ in chunk]
                n = RESIDUES_PER_SEQUENCE * len(chunk)
                scale = rng.uniform(0.5, 2.0, (n, 1)).astype(np.float32)
                acts = offset + scale * rng.standard_normal((n, d_model), dtype=np.float32)
                writer.write([f"bench_000_{i:05d}" for i in chunk], residues, acts)
    return layer_dir


def load_all(layer_dir: Path) -> torch.Tensor:
    from plmdiff.activations.readers import iter_token_batches

    parts = [b.act for b in iter_token_batches([layer_dir], batch_rows=1 << 16)]
    return torch.from_numpy(np.concatenate(parts).astype(np.float32))


def train_once(size: Size, source: Iterator[torch.Tensor], steps: int, device: str) -> float:
    """Seconds to train `steps` steps from `source` (SAE built, moved and trained inside)."""
    from plmdiff.sae.training import build_training_sae, sae_batches, train
    from plmdiff.testing.settings import sae_settings

    settings = sae_settings(
        architecture="batchtopk",
        expansion=size.expansion,
        k=size.k,
        batch_size=size.batch_size,
        lr=4e-4,
    )
    sae = build_training_sae(settings, size.d_model, seed=0)
    return timed(
        device,
        lambda: train(
            sae,
            sae_batches(source, standardize=True, device=device),
            tokens=steps * size.batch_size,
            batch_size=size.batch_size,
            lr=settings.lr,
            dead_window_steps=settings.dead_window_steps,
            device=device,
        ),
    )


def bench_size(size: Size, root: Path, args: argparse.Namespace) -> dict:
    from plmdiff.activations.loader import iter_tokens

    t0 = time.perf_counter()
    layer_dir = write_shards(root, size.d_model, args.tokens, args.parts)
    write_s = time.perf_counter() - t0
    in_memory = load_all(layer_dir)
    steps = args.steps or size.steps

    def parquet() -> Iterator[torch.Tensor]:
        return iter_tokens(
            [layer_dir],
            size.batch_size,
            shuffle_buffer=min(args.shuffle_buffer, len(in_memory)),  # as train_sae caps it
            seed=1,
            loop=True,
        )

    result = {
        "size": size.name,
        "d_model": size.d_model,
        "d_sae": size.d_model * size.expansion,
        "batch_size": size.batch_size,
        "steps": steps,
        "tokens_on_disk": len(in_memory),
        "shard_write_s": round(write_s, 2),
        **compare_sides(size, train_once, parquet, in_memory, steps, args, args.order),
    }
    print(
        f"{size.name}: {size.d_model} -> {result['d_sae']}, batch {size.batch_size}, "
        f"{steps} steps on {args.device}: {speeds(result)}",
        flush=True,
    )
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_arguments(parser, 400_000, "tokens written per size")
    parser.add_argument(
        "--order", nargs=2, default=["parquet", "memory"], choices=["parquet", "memory"]
    )
    args = parser.parse_args()
    run_sizes(args, [DEMO, WIDE], [ZYMCTRL], "bench_sae_data_", bench_size)


if __name__ == "__main__":
    main()
