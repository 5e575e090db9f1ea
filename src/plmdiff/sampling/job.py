"""The sampling stage's rule entry functions: `sample`, `import_fasta`, `filter_samples`,
`sampling_summary`.

Each takes what its rule script unpacks from `snakemake` (paths, wildcards, validated config
sections), runs the stage's logic (plmdiff.sampling.loop, .filtering, .summary) and writes the
rule's outputs (paths from plmdiff.config.paths, chosen by rules/sampling.smk).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from typing import Any

import pandas as pd
import pyarrow as pa

from plmdiff.core.errors import DataError
from plmdiff.core.fasta import read_fasta, write_fasta
from plmdiff.core.runtime import read_json, resolve_device, write_json
from plmdiff.core.tables import write_table
from plmdiff.models.checkpoints import CheckpointRecord, load_model, load_tokenizer
from plmdiff.models.text import PromptFormat
from plmdiff.sampling.filtering import (
    FilterResult,
    FilterSettings,
    check_enough,
    fasta_entries,
    filter_model,
)
from plmdiff.sampling.given import given_samples_table, read_given_sequences
from plmdiff.sampling.io import samples_table, shard_indices, write_samples
from plmdiff.sampling.loop import sample_sequences
from plmdiff.sampling.rng import model_seed
from plmdiff.sampling.settings import SamplingSettings
from plmdiff.sampling.summary import kept_ppl_frame, sample_frame, summary_figure, summary_table

log = logging.getLogger(__name__)


def sample_shard(
    record_path: str,
    model: str,
    shard: int,
    sampling_section: Mapping[str, Any],
    prompt_section: Mapping[str, Any],
    *,
    device: str = "auto",
    allow_pickle: bool = False,
    threads: int | None = None,
) -> pa.Table:
    """Load the recorded checkpoint, draw this shard's sequences, return the shard table."""
    import torch

    if threads:
        torch.set_num_threads(threads)
    record = CheckpointRecord.read(record_path)
    settings = SamplingSettings.from_section(sampling_section)
    fmt = PromptFormat.from_section(prompt_section)
    indices = shard_indices(sampling_section["n_sequences"], sampling_section["shards"], shard)
    dev = resolve_device(device)
    model_obj = load_model(record.path, allow_pickle=allow_pickle, device=dev)
    tokenizer = load_tokenizer(record.path)
    seed = model_seed(sampling_section["seed"], model)
    log.info(
        "model %s shard %d: sequences %s, %s",
        model,
        shard,
        f"{indices[0]}..{indices[-1]}" if indices else "none",
        settings,
    )
    start = time.perf_counter()
    samples = sample_sequences(
        model_obj, tokenizer, fmt, record.special_ids, indices, settings, seed, dev
    )
    seconds = time.perf_counter() - start
    n_tokens = sum(s.n_tokens for s in samples)
    log.info(
        "%d sequences, %d ended, %d tokens in %.1f s (%.0f tokens/s)",
        len(samples),
        sum(s.ended for s in samples),
        n_tokens,
        seconds,
        n_tokens / seconds if seconds else float("nan"),
    )
    metadata = {
        "model": model,
        "shard": shard,
        "checkpoint_fingerprint": record.fingerprint,
        "seed": sampling_section["seed"],
        "model_seed": seed,
        "settings": {k: getattr(settings, k) for k in settings.__dataclass_fields__},
        "prompt": fmt.generation_prompt(),
        "device": str(dev),
        "torch": torch.__version__,
    }
    return samples_table(samples, model, shard, metadata)


def sample(
    record_path: str,
    model: str,
    shard: int,
    sampling_section: Mapping[str, Any],
    prompt_section: Mapping[str, Any],
    out_path: str,
    *,
    device: str,
    allow_pickle: bool,
    threads: int | None,
) -> None:
    """Rule `sample`: one shard of a model's sequences (every output, truncated ones included)."""
    table = sample_shard(
        record_path,
        model,
        shard,
        sampling_section,
        prompt_section,
        device=device,
        allow_pickle=allow_pickle,
        threads=threads,
    )
    write_samples(out_path, table)


def import_fasta(model: str, fasta_files: Sequence[str], out_path: str) -> None:
    """Rule `import_fasta`: a model's own FASTA (models[].fasta) as its sample shard 0."""
    given = read_given_sequences(model, fasta_files)
    log.info("model %s: %d given sequences from %d file(s)", model, len(given), len(fasta_files))
    metadata = {"source": "models[].fasta", "files": list(map(str, fasta_files))}
    write_samples(out_path, given_samples_table(model, given, metadata))


def filter_samples(
    model: str,
    shard_paths: Sequence[str],
    filter_section: Mapping[str, Any],
    base_model: str | None,
    base_shard_paths: Sequence[str],
    fasta_path: str,
    stats_path: str,
) -> FilterResult:
    """Rule `filter_samples`: validity, length window and duplicates; FASTA plus stats JSON.

    Too few sequences kept fails with one line that names the model and every count (also in
    the job's log, where a cluster user looks first).
    """
    settings = FilterSettings.from_section(filter_section)
    result, stats = filter_model(
        model, shard_paths, settings, base_model=base_model, base_shard_paths=base_shard_paths
    )
    try:
        check_enough(model, result, settings.min_sequences)
    except DataError as exc:
        log.error("%s", exc)
        raise
    write_fasta(fasta_path, fasta_entries(model, result.kept))
    write_json(stats_path, stats)
    return result


def sampling_summary(
    models: Sequence[str],
    stats_paths: Sequence[str],
    fasta_paths: Sequence[str],
    shard_paths: Mapping[str, Sequence[str]],
    tsv_path: str,
    figure_paths: Sequence[str],
) -> pd.DataFrame:
    """Rule `sampling_summary`: table (TSV) and figure (PNG, SVG) over all models."""
    table = summary_table([read_json(p) for p in stats_paths])
    valid = pd.concat([sample_frame(m, shard_paths[m]) for m in models], ignore_index=True)
    kept_ppl = kept_ppl_frame(
        {m: read_fasta(path) for m, path in zip(models, fasta_paths, strict=True)}
    )
    write_table(table, tsv_path)
    summary_figure(table, valid, kept_ppl, figure_paths)
    return table
