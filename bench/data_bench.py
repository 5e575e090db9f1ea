"""The scaffold of the data-source benchmarks (bench/sae_data.py, bench/crosscoder_data.py).

A dictionary trains once per side from the same data: `parquet` streams it from token parts on
disk, `memory` draws batches from one in-memory tensor. After an untimed warm-up (torch
kernels, allocator, imports) the sides alternate `--repeats` times and each side's median time
counts, so that a burst of load from other processes does not decide the ratio.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

SIDES = ("parquet", "memory")
TARGET = 0.9  # parquet / memory tokens per second


@dataclass(frozen=True)
class Size:
    name: str
    d_model: int
    expansion: int
    k: int
    batch_size: int
    steps: int


# Seconds to train `steps` steps of `size` from a source of batches.
TrainOnce = Callable[[Size, Iterator[torch.Tensor], int, str], float]


def timed(device: str, run: Callable[[], object]) -> float:
    """Seconds `run` takes; on a GPU only once the work queued before and by it has finished."""
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    start = time.perf_counter()
    run()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return time.perf_counter() - start


def memory_batches(x: torch.Tensor, batch_size: int, seed: int) -> Iterator[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    while True:
        perm = torch.randperm(len(x), generator=g)
        for i in range(0, len(x) - batch_size + 1, batch_size):
            yield x[perm[i : i + batch_size]]


def add_arguments(parser: argparse.ArgumentParser, tokens: int, tokens_help: str) -> None:
    """The options every data benchmark takes; `tokens` is the default of --tokens."""
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--tokens", type=int, default=tokens, help=tokens_help)
    parser.add_argument("--parts", type=int, default=4, help="token part files per size")
    parser.add_argument("--steps", type=int, default=None, help="training steps per run")
    parser.add_argument("--shuffle-buffer", type=int, default=262_144)
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per side (median)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")


def compare_sides(
    size: Size,
    train_once: TrainOnce,
    parquet: Callable[[], Iterator[torch.Tensor]],
    in_memory: torch.Tensor,
    steps: int,
    args: argparse.Namespace,
    order: Sequence[str] = SIDES,
) -> dict[str, Any]:
    """Warm up, time both sides alternately; tokens/s of each, their ratio and every time."""
    train_once(
        size, memory_batches(in_memory, size.batch_size, 0), max(5, steps // 10), args.device
    )
    runs: dict[str, list[float]] = {name: [] for name in SIDES}
    for _ in range(args.repeats):
        for name in order:
            source = (
                parquet() if name == "parquet" else memory_batches(in_memory, size.batch_size, 1)
            )
            runs[name].append(train_once(size, source, steps, args.device))
    seconds = {name: float(np.median(times)) for name, times in runs.items()}
    tokens = steps * size.batch_size
    return {
        "memory_tokens_per_s": round(tokens / seconds["memory"]),
        "parquet_tokens_per_s": round(tokens / seconds["parquet"]),
        "ratio_parquet_over_memory": round(seconds["memory"] / seconds["parquet"], 3),
        "seconds": {name: [round(t, 2) for t in times] for name, times in runs.items()},
    }


def speeds(result: dict[str, Any]) -> str:
    """The tail of a size's line: both speeds and the ratio against the target."""
    return (
        f"memory {result['memory_tokens_per_s']:,} tokens/s, "
        f"parquet {result['parquet_tokens_per_s']:,} tokens/s, "
        f"ratio {result['ratio_parquet_over_memory']:.3f} (target >= {TARGET})"
    )


def run_sizes(
    args: argparse.Namespace,
    sizes: Sequence[Size],
    cuda_sizes: Sequence[Size],
    prefix: str,
    bench_size: Callable[[Size, Path, argparse.Namespace], dict[str, Any]],
) -> None:
    """Every size (with --device cuda also `cuda_sizes`) in one temporary directory; the
    results as JSON."""
    if args.threads:
        torch.set_num_threads(args.threads)
    chosen = list(sizes) + (list(cuda_sizes) if args.device.startswith("cuda") else [])
    with tempfile.TemporaryDirectory(prefix=prefix) as tmp:
        results = [bench_size(size, Path(tmp), args) for size in chosen]
    print(json.dumps(results, indent=2))
