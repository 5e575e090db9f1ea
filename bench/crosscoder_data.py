"""Benchmark: crosscoder training fed from paired Parquet token parts vs an in-memory tensor.

Both sides train the same BatchTopK crosscoder (plmdiff.model_diff.crosscoder, same seed, batch
size and steps, background prefetch) over two models; only the data source differs:

- parquet: plmdiff.model_diff.paired.iter_paired over float16 zstd token parts of each model
  (written by the activations stage's TokenWriter), read side by side through the SAE loader's
  shuffle buffer (loop=True);
- memory: every paired token already in one float32 tensor [n, 2, d], batches by permutation.

Prints tokens/s of both and the ratio parquet / memory (target >= 0.9) for the demo's width
(d_model 64, expansion 16, k 32, batch 2048) and a wide one (d_model 128, expansion 32); with
--device cuda also ZymCTRL's d_model 1280 (expansion 16, batch 4096). The sides alternate
--repeats times after an untimed warm-up; each side's median counts.

    .venv/bin/python bench/crosscoder_data.py [--tokens 300000] [--repeats 3] [--threads 2]
    .venv/bin/python bench/crosscoder_data.py --device cuda
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from data_bench import Size, add_arguments, compare_sides, run_sizes, speeds, timed

from plmdiff.activations.writers import TokenWriter
from plmdiff.model_diff.crosscoder import BatchTopKCrosscoder, train_crosscoder
from plmdiff.model_diff.paired import PairedLayer, iter_paired, iter_paired_rows

RESIDUES_PER_SEQUENCE = 300
MODELS = ("base", "round")


DEMO = Size("demo width", 64, 16, 32, 2048, 60)
WIDE = Size("wide", 128, 32, 32, 2048, 20)
ZYMCTRL = Size("ZymCTRL width", 1280, 16, 32, 4096, 100)


def write_paired(root: Path, d_model: int, n_tokens: int, parts: int) -> PairedLayer:
    """The same tokens of two models: the round is the base plus a shift on a few tokens."""
    rng = np.random.default_rng(0)
    offset = rng.normal(0, 3, d_model).astype(np.float32)
    shift = rng.normal(0, 1, d_model).astype(np.float32)
    n_seq = max(parts, n_tokens // RESIDUES_PER_SEQUENCE)
    dirs = {m: root / f"d{d_model}" / m / "layer_03" for m in MODELS}
    for part, seqs in enumerate(np.array_split(np.arange(n_seq), parts)):
        writers = {
            m: TokenWriter(
                dirs[m] / f"part-{part:05d}.parquet",
                layer=3,
                d_model=d_model,
                dtype="float16",
                metadata={"embedder": m},
            )
            for m in MODELS
        }
        for start in range(0, len(seqs), 64):
            chunk = seqs[start : start + 64]
            n = RESIDUES_PER_SEQUENCE * len(chunk)
            base = offset + rng.standard_normal((n, d_model), dtype=np.float32)
            moved = base + (rng.random((n, 1)) < 0.1) * shift
            ids = [f"base_000_{i:05d}" for i in chunk]
            residues = ["A" * RESIDUES_PER_SEQUENCE for _ in chunk]
            writers["base"].write(ids, residues, base)
            writers["round"].write(ids, residues, moved)
        for w in writers.values():
            w.close()
    return PairedLayer.open(dirs)


def train_once(size: Size, source: Iterator[torch.Tensor], steps: int, device: str) -> float:
    model = BatchTopKCrosscoder(len(MODELS), size.d_model, size.expansion * size.d_model, size.k)
    return timed(
        device,
        lambda: train_crosscoder(
            model,
            source,
            tokens=steps * size.batch_size,
            lr=2e-4,
            aux_penalty=1 / 32,
            dead_tokens=10**6,
            device=device,
        ),
    )


def bench_size(size: Size, root: Path, args: argparse.Namespace) -> dict:
    t0 = time.perf_counter()
    layer = write_paired(root, size.d_model, args.tokens, args.parts)
    write_s = time.perf_counter() - t0
    in_memory = torch.from_numpy(np.concatenate([r.act for r in iter_paired_rows(layer)]))
    steps = args.steps or size.steps

    def parquet() -> Iterator[torch.Tensor]:
        return iter_paired(
            layer,
            size.batch_size,
            shuffle_buffer=min(args.shuffle_buffer, len(in_memory)),
            seed=1,
            loop=True,
        )

    result = {
        "size": size.name,
        "d_model": size.d_model,
        "d_dict": size.d_model * size.expansion,
        "batch_size": size.batch_size,
        "steps": steps,
        "paired_tokens_on_disk": len(in_memory),
        "write_s": round(write_s, 2),
        **compare_sides(size, train_once, parquet, in_memory, steps, args),
    }
    print(
        f"{size.name}: 2 x {size.d_model} -> {result['d_dict']}, batch {size.batch_size}, "
        f"{steps} steps on {args.device}: {speeds(result)}",
        flush=True,
    )
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_arguments(parser, 300_000, "paired tokens per size")
    args = parser.parse_args()
    run_sizes(args, [DEMO, WIDE], [ZYMCTRL], "bench_crosscoder_", bench_size)


if __name__ == "__main__":
    main()
