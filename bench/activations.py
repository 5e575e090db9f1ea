"""Benchmark: the extract rule's code (plmdiff.activations.extraction) vs a naive loop, one run.

CPU mode (default), on a demo-size GPT-2 (6 layers x 128, random weights: speed does not depend
on them) and real sequences of the shipped family, storing what the demo stores (pooled last
and mean of layers 0..6, tokens of layers 3 and 6, float16, zstd):

- extraction: plmdiff.activations.extraction.extract_part (length-sorted token-budget batches, hooks that
  pool on the fly, writer threads, streaming Parquet);
- naive: one sequence at a time, `output_hidden_states=True`, `.numpy()`, everything collected
  in Python lists, pandas `to_parquet` at the end.

Each run is a separate process, so its peak RSS (ru_maxrss) is its own. Prints residues per
second and peak RSS of both, the speed ratio (target >= 5x) and the peak RSS of extraction at
1x and 10x the sequences (target: 10x within 1.3x of 1x), and checks that both wrote the
same vectors.

--zymctrl-shape (CUDA): a random-weight model of ZymCTRL's shape (36 x 1280, 738M parameters)
on the GPU; time of the full extraction (37 pooled layers, token layers of Zym_SAEs, Parquet
written) vs bare forward passes over the same batches (target: within 1.5x).

    .venv/bin/python bench/activations.py [--sequences 200] [--threads 2]
    .venv/bin/python bench/activations.py --zymctrl-shape [--sequences 1024]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def bench_token_part(layer: int) -> str:
    """Where the workflow would put this layer's one token part (plmdiff.config.paths)."""
    from plmdiff.config import paths

    return paths.token_part("bench", "model", paths.layer_id(layer), paths.extract_part_ids(1)[0])


def _demo_settings() -> tuple[dict, tuple[int, ...], int]:
    """The demo model's shape and what the demo stores (config/demo.yaml)."""
    from plmdiff.config.schema import DEMO_CONFIG_PATH, load_config

    demo = load_config(DEMO_CONFIG_PATH)
    shape = {k: demo["demo"]["base"][k] for k in ("n_layer", "n_embd", "n_head", "n_positions")}
    activations = demo["activations"]
    return shape, tuple(activations["token_layers"]), int(activations["batch_tokens"])


DEMO_SHAPE, DEMO_TOKEN_LAYERS, DEMO_BATCH_TOKENS = _demo_settings()
ZYM_SAE_LAYERS = (5, 10, 15, 25, 30, 35)


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


# ----------------------------------------------------------------------------- inputs


def write_inputs(root: Path, n_sequences: int) -> Path:
    """FASTA of n sequences drawn (cycling) from the shipped family, as the filter writes it."""
    from plmdiff.core.fasta import SequenceEntry, write_fasta
    from plmdiff.testing.checkpoints import family_sequences

    family = family_sequences()
    entries = [
        SequenceEntry(f"iteration1_000_{i:05d}", family[i % len(family)], {"model": "iteration1"})
        for i in range(n_sequences)
    ]
    path = root / f"seqs_{n_sequences}.fasta"
    write_fasta(path, entries)
    return path


def build_checkpoint(root: Path) -> tuple[Path, Path]:
    from plmdiff.core.runtime import write_json
    from plmdiff.models.checkpoints import inspect_checkpoint
    from plmdiff.models.zymctrl import (
        gpt2_config,
        load_zymctrl_tokenizer,
        new_gpt2,
        save_checkpoint,
    )
    from plmdiff.testing.checkpoints import ZYMCTRL_FORMAT

    directory = save_checkpoint(
        new_gpt2(gpt2_config(**DEMO_SHAPE)), load_zymctrl_tokenizer(), root / "checkpoint"
    )
    record = inspect_checkpoint(directory, "iteration0", ZYMCTRL_FORMAT)
    write_json(root / "record.json", record.to_json())
    return directory, root / "record.json"


# ----------------------------------------------------------------------------- workers


def warm_imports() -> None:
    """Import the model code before the clock starts: both sides pay it once per process, and
    on a busy machine it would otherwise dominate a short run."""
    import transformers.models.gpt2.modeling_gpt2  # noqa: F401
    from transformers import AutoModelForCausalLM, AutoTokenizer  # noqa: F401


def worker_extract(args: argparse.Namespace) -> dict:
    from plmdiff.activations.extraction import ExtractionSettings, extract_part
    from plmdiff.config.sections import section_defaults
    from plmdiff.models.checkpoints import CheckpointRecord
    from plmdiff.testing.checkpoints import ZYMCTRL_FORMAT

    out = Path(args.out)
    warm_imports()
    start = time.perf_counter()
    summary = extract_part(
        fasta_path=args.fasta,
        record=CheckpointRecord.read(args.record),
        checkpoint_dir=args.checkpoint,
        embedder="iteration0",
        model="iteration1",
        part=0,
        fmt=ZYMCTRL_FORMAT,
        settings=ExtractionSettings.from_section(
            {
                **section_defaults("activations"),
                "token_layers": list(DEMO_TOKEN_LAYERS),
                "batch_tokens": args.batch_tokens,
                "dtype": "float16",
            }
        ),
        pooled_path=out / "pooled.parquet",
        token_paths={layer: out / bench_token_part(layer) for layer in DEMO_TOKEN_LAYERS},
    )
    return {"seconds": time.perf_counter() - start, "tokens": summary.n_tokens}


def worker_naive(args: argparse.Namespace) -> dict:
    """What a first script does: one sequence at a time, all hidden states, pandas at the end."""
    import numpy as np
    import pandas as pd
    import torch

    from plmdiff.core.fasta import read_fasta
    from plmdiff.models.checkpoints import load_model, load_tokenizer
    from plmdiff.models.text import encode_sequences
    from plmdiff.testing.checkpoints import ZYMCTRL_FORMAT, ZYMCTRL_IDS

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    warm_imports()
    start = time.perf_counter()
    model = load_model(args.checkpoint)
    tokenizer = load_tokenizer(args.checkpoint)
    entries = list(read_fasta(args.fasta))
    pooled_rows = []
    token_rows: dict[int, list[pd.DataFrame]] = {layer: [] for layer in DEMO_TOKEN_LAYERS}
    n_tokens = 0
    for entry in entries:
        enc = encode_sequences(tokenizer, ZYMCTRL_FORMAT, ZYMCTRL_IDS, [entry.sequence])[0]
        with torch.no_grad():
            hidden = model(torch.tensor([enc.ids]), output_hidden_states=True).hidden_states
        layers = [h[0].numpy() for h in hidden]
        row = {"seq_id": entry.seq_id, "model": "iteration1", "length": len(entry.sequence)}
        for layer, h in enumerate(layers):
            residues = h[enc.start : enc.stop]
            row[f"last_{layer:02d}"] = residues[-1].astype(np.float16)
            row[f"mean_{layer:02d}"] = residues.mean(0).astype(np.float16)
        pooled_rows.append(row)
        for layer in DEMO_TOKEN_LAYERS:
            residues = layers[layer][enc.start : enc.stop]
            token_rows[layer].append(
                pd.DataFrame(
                    {
                        "seq_id": entry.seq_id,
                        "pos": np.arange(len(residues)),
                        "residue": list(entry.sequence),
                        "act": list(residues.astype(np.float16)),
                    }
                )
            )
        n_tokens += enc.n_residues
    pd.DataFrame(pooled_rows).to_parquet(out / "pooled.parquet", compression="zstd")
    for layer, frames in token_rows.items():
        pd.concat(frames).to_parquet(out / f"layer_{layer:02d}.parquet", compression="zstd")
    return {"seconds": time.perf_counter() - start, "tokens": n_tokens}


def run_worker(
    mode: str,
    fasta: Path,
    checkpoint: Path,
    record: Path,
    out: Path,
    threads: int,
    batch_tokens: int,
) -> dict:
    cmd = [
        sys.executable,
        __file__,
        "--worker",
        mode,
        "--fasta",
        str(fasta),
        "--checkpoint",
        str(checkpoint),
        "--record",
        str(record),
        "--out",
        str(out),
        "--threads",
        str(threads),
        "--batch-tokens",
        str(batch_tokens),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise SystemExit(f"worker {mode} failed:\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def same_vectors(extracted: Path, naive: Path) -> float:
    """Largest difference between the two runs' pooled vectors (layers 0..L-1, both poolings)."""
    import numpy as np
    import pandas as pd

    from plmdiff.activations.readers import load_pooled

    frame = pd.read_parquet(naive).set_index("seq_id")
    worst = 0.0
    for layer in range(DEMO_SHAPE["n_layer"]):  # naive's layer L is after ln_f: not comparable
        for pooling in ("last", "mean"):
            m = load_pooled([extracted], layer, pooling)
            ref = np.stack(frame.loc[m.seq_id, f"{pooling}_{layer:02d}"].to_numpy()).astype(
                np.float32
            )
            worst = max(worst, float(np.abs(m.X - ref).max() / (np.abs(ref).max() + 1e-9)))
    return worst


def cpu_benchmark(args: argparse.Namespace) -> None:
    import torch

    with tempfile.TemporaryDirectory(prefix="bench_activations_") as tmp:
        root = Path(tmp)
        checkpoint, record = build_checkpoint(root)
        small = write_inputs(root, args.sequences)
        large = write_inputs(root, 10 * args.sequences)
        print(
            f"demo-size GPT-2 {DEMO_SHAPE['n_layer']} x {DEMO_SHAPE['n_embd']}, {args.sequences} "
            f"sequences, batches of {args.batch_tokens} tokens, torch {torch.__version__}, {args.threads} threads, {os.cpu_count()} CPUs, "
            f"load average {os.getloadavg()[0]:.1f}"
        )
        common = (checkpoint, record)
        ext = run_worker("extract", small, *common, root / "ext", args.threads, args.batch_tokens)
        naive = run_worker("naive", small, *common, root / "naive", args.threads, args.batch_tokens)
        ext10 = run_worker(
            "extract", large, *common, root / "ext10", args.threads, args.batch_tokens
        )
        diff = same_vectors(root / "ext" / "pooled.parquet", root / "naive" / "pooled.parquet")
    rows = [("extraction", ext), ("naive loop", naive), ("extraction 10x", ext10)]
    print(f"{'':16s} {'residues':>9s} {'seconds':>8s} {'residues/s':>11s} {'peak RSS MB':>12s}")
    for name, r in rows:
        print(
            f"{name:16s} {r['tokens']:9d} {r['seconds']:8.2f} "
            f"{r['tokens'] / r['seconds']:11.0f} {r['rss_mb']:12.0f}"
        )
    speed = (ext["tokens"] / ext["seconds"]) / (naive["tokens"] / naive["seconds"])
    memory = ext10["rss_mb"] / ext["rss_mb"]
    print(f"speed: extraction / naive = {speed:.1f}x (target >= 5x)")
    print(f"peak RSS: naive / extraction = {naive['rss_mb'] / ext['rss_mb']:.2f}x")
    print(f"peak RSS of extraction: 10x sequences / 1x = {memory:.2f} (target <= 1.3)")
    print(f"same pooled vectors (layers 0..L-1): max relative difference {diff:.1e}")


# ----------------------------------------------------------------------------- GPU


def zymctrl_shape_benchmark(args: argparse.Namespace) -> None:
    import torch
    from transformers import GPT2Config

    from plmdiff.activations.extraction import (
        ExtractionSettings,
        ResidualExtractor,
        iter_batch_activations,
        length_batches,
        prepare_sequences,
        write_activations,
    )
    from plmdiff.config.sections import section_defaults
    from plmdiff.core.fasta import SequenceEntry
    from plmdiff.models.zymctrl import load_zymctrl_tokenizer, new_gpt2, zymctrl_config_dict
    from plmdiff.testing.checkpoints import ZYMCTRL_FORMAT, ZYMCTRL_IDS, family_sequences

    if not torch.cuda.is_available():
        raise SystemExit("--zymctrl-shape needs a CUDA GPU")
    device = torch.device("cuda")
    config = GPT2Config(**{k: v for k, v in zymctrl_config_dict().items() if k != "architectures"})
    model = new_gpt2(config).to(device)
    tokenizer = load_zymctrl_tokenizer()
    family = family_sequences()
    entries = [
        SequenceEntry(f"m_000_{i:05d}", family[i % len(family)]) for i in range(args.sequences)
    ]
    sequences = prepare_sequences(
        entries,
        tokenizer,
        ZYMCTRL_FORMAT,
        ZYMCTRL_IDS,
        n_positions=config.n_positions,
        truncate=True,
    )
    n_tokens = sum(s.n_residues for s in sequences)
    batches = [[sequences[i] for i in b] for b in length_batches(sequences, args.batch_tokens)]
    body = model.transformer

    def bare() -> float:
        torch.cuda.synchronize()
        start = time.perf_counter()
        with torch.inference_mode():
            for batch in batches:
                width = max(len(s.ids) for s in batch)
                ids = torch.full((len(batch), width), ZYMCTRL_IDS.eos, dtype=torch.long)
                for i, s in enumerate(batch):
                    ids[i, : len(s.ids)] = torch.from_numpy(s.ids)
                body(input_ids=ids.to(device), use_cache=False)
        torch.cuda.synchronize()
        return time.perf_counter() - start

    settings = ExtractionSettings.from_section(
        {
            **section_defaults("activations"),
            "token_layers": list(ZYM_SAE_LAYERS),
            "batch_tokens": args.batch_tokens,
        }
    )
    extractor = ResidualExtractor(
        model,
        pooled_layers=list(range(config.n_layer + 1)),
        token_layers=ZYM_SAE_LAYERS,
        poolings=("last", "mean"),
        dtype="float16",
        pad_id=ZYMCTRL_IDS.eos,
    )

    def extraction(out: Path) -> float:
        torch.cuda.synchronize()
        start = time.perf_counter()
        write_activations(
            iter_batch_activations(extractor, sequences, args.batch_tokens),
            pooled_path=out / "pooled.parquet",
            token_paths={layer: out / bench_token_part(layer) for layer in ZYM_SAE_LAYERS},
            pooled_layers=list(range(config.n_layer + 1)),
            poolings=("last", "mean"),
            d_model=config.n_embd,
            settings=settings,
            model="m",
            metadata={"embedder": "random-zymctrl-shape"},
        )
        torch.cuda.synchronize()
        return time.perf_counter() - start

    bare()  # warm-up: kernels, allocator
    with tempfile.TemporaryDirectory(prefix="bench_zymctrl_", dir=args.tmp) as tmp:
        bare_s = min(bare() for _ in range(2))
        ext_s = extraction(Path(tmp) / "run")
    print(
        f"ZymCTRL shape {config.n_layer} x {config.n_embd} on {torch.cuda.get_device_name()}: "
        f"{len(sequences)} sequences, {n_tokens} residues, {len(batches)} batches of <= "
        f"{args.batch_tokens} tokens; 37 pooled layers x 2, token layers {list(ZYM_SAE_LAYERS)}"
    )
    print(f"bare forward passes: {bare_s:.2f} s ({n_tokens / bare_s:.0f} residues/s)")
    print(
        f"extraction (hooks, pooling, transfer, Parquet): {ext_s:.2f} s ({n_tokens / ext_s:.0f} residues/s)"
    )
    print(f"extraction / bare = {ext_s / bare_s:.2f}x (target <= 1.5x)")
    print(f"peak GPU memory {torch.cuda.max_memory_allocated() / 2**30:.1f} GiB")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sequences", type=int, default=None)
    parser.add_argument("--threads", type=int, default=min(4, os.cpu_count() or 1))
    parser.add_argument("--zymctrl-shape", action="store_true")
    parser.add_argument(
        "--batch-tokens",
        type=int,
        default=None,
        help="token budget per batch (default: the demo's activations.batch_tokens on CPU, 16384 on GPU)",
    )
    parser.add_argument("--tmp", default=None, help="scratch directory (GPU mode writes GBs)")
    parser.add_argument("--worker", choices=["extract", "naive"], help=argparse.SUPPRESS)
    parser.add_argument("--fasta", help=argparse.SUPPRESS)
    parser.add_argument("--checkpoint", help=argparse.SUPPRESS)
    parser.add_argument("--record", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    if args.worker:
        result = (worker_extract if args.worker == "extract" else worker_naive)(args)
        print(json.dumps({**result, "rss_mb": peak_rss_mb()}))
    elif args.zymctrl_shape:
        args.sequences = args.sequences or 1024
        args.batch_tokens = args.batch_tokens or 16384
        zymctrl_shape_benchmark(args)
    else:
        args.sequences = args.sequences or 200
        args.batch_tokens = args.batch_tokens or DEMO_BATCH_TOKENS
        cpu_benchmark(args)


if __name__ == "__main__":
    main()
