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
import json
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from plmdiff.activations.writers import TokenWriter
from plmdiff.model_diff.crosscoder import BatchTopKCrosscoder, train_crosscoder
from plmdiff.model_diff.paired import PairedLayer, iter_paired, iter_paired_rows

RESIDUES_PER_SEQUENCE = 300
MODELS = ("base", "round")


@dataclass(frozen=True)
class Size:
    name: str
    d_model: int
    expansion: int
    k: int
    batch_size: int
    steps: int


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


def memory_batches(x: torch.Tensor, batch_size: int, seed: int) -> Iterator[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    while True:
        perm = torch.randperm(len(x), generator=g)
        for i in range(0, len(x) - batch_size + 1, batch_size):
            yield x[perm[i : i + batch_size]]


def train_once(size: Size, source: Iterator[torch.Tensor], steps: int, device: str) -> float:
    model = BatchTopKCrosscoder(len(MODELS), size.d_model, size.expansion * size.d_model, size.k)
    start = time.perf_counter()
    train_crosscoder(
        model,
        source,
        tokens=steps * size.batch_size,
        lr=2e-4,
        aux_penalty=1 / 32,
        dead_tokens=10**6,
        device=device,
    )
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return time.perf_counter() - start


def bench_size(size: Size, root: Path, args: argparse.Namespace) -> dict:
    t0 = time.perf_counter()
    layer = write_paired(root, size.d_model, args.tokens, args.parts)
    write_s = time.perf_counter() - t0
    in_memory = torch.from_numpy(np.concatenate([r.act for r in iter_paired_rows(layer)]))
    steps = args.steps or size.steps
    tokens = steps * size.batch_size

    def parquet() -> Iterator[torch.Tensor]:
        return iter_paired(
            layer,
            size.batch_size,
            shuffle_buffer=min(args.shuffle_buffer, len(in_memory)),
            seed=1,
            loop=True,
        )

    train_once(
        size, memory_batches(in_memory, size.batch_size, 0), max(5, steps // 10), args.device
    )
    runs: dict[str, list[float]] = {"parquet": [], "memory": []}
    for _ in range(args.repeats):
        for name in ("parquet", "memory"):
            source = (
                parquet() if name == "parquet" else memory_batches(in_memory, size.batch_size, 1)
            )
            runs[name].append(train_once(size, source, steps, args.device))
    seconds = {name: float(np.median(times)) for name, times in runs.items()}
    result = {
        "size": size.name,
        "d_model": size.d_model,
        "d_dict": size.d_model * size.expansion,
        "batch_size": size.batch_size,
        "steps": steps,
        "paired_tokens_on_disk": len(in_memory),
        "write_s": round(write_s, 2),
        "memory_tokens_per_s": round(tokens / seconds["memory"]),
        "parquet_tokens_per_s": round(tokens / seconds["parquet"]),
        "ratio_parquet_over_memory": round(seconds["memory"] / seconds["parquet"], 3),
        "seconds": {name: [round(t, 2) for t in times] for name, times in runs.items()},
    }
    print(
        f"{size.name}: 2 x {size.d_model} -> {result['d_dict']}, batch {size.batch_size}, "
        f"{steps} steps on {args.device}: memory {result['memory_tokens_per_s']:,} tokens/s, "
        f"parquet {result['parquet_tokens_per_s']:,} tokens/s, "
        f"ratio {result['ratio_parquet_over_memory']:.3f} (target >= 0.9)",
        flush=True,
    )
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--tokens", type=int, default=300_000, help="paired tokens per size")
    parser.add_argument("--parts", type=int, default=4)
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--shuffle-buffer", type=int, default=262_144)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    sizes = [DEMO, WIDE] + ([ZYMCTRL] if args.device.startswith("cuda") else [])
    with tempfile.TemporaryDirectory(prefix="bench_crosscoder_") as tmp:
        results = [bench_size(size, Path(tmp), args) for size in sizes]
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
