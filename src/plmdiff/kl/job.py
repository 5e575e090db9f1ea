"""The rules of the KL stage (rules/diff.smk): kl and kl_summary."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

import pandas as pd

from plmdiff.core.fasta import read_fasta
from plmdiff.core.runtime import resolve_device
from plmdiff.core.tables import write_parquet, write_table
from plmdiff.kl.divergence import check_self_kl, score_model, summarise, top_sequences
from plmdiff.kl.figures import plot_kl_by_round
from plmdiff.kl.settings import KLConfig
from plmdiff.models.checkpoints import CheckpointRecord
from plmdiff.models.text import PromptFormat
from plmdiff.probes.clustering import read_clusters


def run_kl(
    model: str,
    model_dir: str | os.PathLike,
    base: str,
    base_dir: str | os.PathLike,
    fastas: Mapping[str, str | os.PathLike],
    record: str | os.PathLike,
    *,
    prompt: Mapping[str, Any],
    kl_section: Mapping[str, Any],
    device: Any,
    allow_pickle: bool,
    table_path: str | os.PathLike,
    top_path: str | os.PathLike,
) -> pd.DataFrame:
    """The kl rule: score the model's and the base's samples, write the table and top list."""
    cfg = KLConfig.from_section(kl_section)
    sets = {name: list(read_fasta(path)) for name, path in fastas.items()}
    frame = score_model(
        model_dir,
        base_dir,
        sets,
        model_name=model,
        fmt=PromptFormat.from_section(prompt),
        special=CheckpointRecord.read(record).special_ids,
        cfg=cfg,
        device=resolve_device(device),
        allow_pickle=allow_pickle,
    )
    if model == base:
        check_self_kl(frame, model)
    write_parquet(frame, table_path)
    write_table(top_sequences(frame, cfg.top_sequences), top_path, float_format="%.4g")
    return frame


def run_kl_summary(
    tables: Sequence[str | os.PathLike],
    models: Sequence[str],
    summary_path: str | os.PathLike,
    figure_paths: Sequence[str | os.PathLike],
    clusters_path: str | os.PathLike | None = None,
) -> pd.DataFrame:
    """The kl_summary rule: summarise every model's KL table (intervals resampling the sequence
    clusters of cluster_sequences), draw the KL-by-round figure."""
    frames = [pd.read_parquet(t) for t in tables]
    cluster_of = read_clusters(clusters_path) if clusters_path else None
    summary = summarise(frames, models, cluster_of)
    write_table(summary, summary_path, float_format="%.4g")
    plot_kl_by_round(frames, models, figure_paths)
    return summary
