"""The rules of the model_diff stage (rules/model_diff.smk).

model_diff_sequences -> model_diff_extract(model, part) -> model_diff_profile,
diff_sae(layer), crosscoder(layer) -> model_diff_agreement(layer). Paths come from
plmdiff.config.paths through the rules; each function here takes what its rule script unpacks.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
import torch

from plmdiff.activations.extraction import ExtractionSettings, ExtractionSummary
from plmdiff.activations.job import extract
from plmdiff.core.errors import DataError
from plmdiff.core.fasta import read_fasta
from plmdiff.core.runtime import derive_seed, read_json, resolve_device, write_json
from plmdiff.core.tables import write_parquet, write_table
from plmdiff.model_diff.agreement import agreement_summary, max_cosine
from plmdiff.model_diff.crosscoder import (
    BatchTopKCrosscoder,
    TrainingLog,
    load_crosscoder,
    save_crosscoder,
    train_crosscoder,
)
from plmdiff.model_diff.diff_sae import difference_batches, difference_rows
from plmdiff.model_diff.figures import plot_classes, plot_profile
from plmdiff.model_diff.paired import (
    PairedLayer,
    check_alignment,
    iter_paired,
    iter_paired_rows,
    paired_extraction_settings,
    split_ids,
    write_shared_sequences,
)
from plmdiff.model_diff.profile import build_profile
from plmdiff.model_diff.scaling import (
    ROUND_ONLY,
    class_counts,
    evaluate,
    latent_examples,
    latent_table,
    top_round_only,
)
from plmdiff.model_diff.settings import ModelDiffSettings
from plmdiff.sae.training import load_sae

log = logging.getLogger(__name__)


def model_diff_sequences(
    base_fasta: str | os.PathLike,
    extra_fasta: str | os.PathLike | None,
    section: Mapping[str, Any],
    out: str | os.PathLike,
) -> int:
    """Rule model_diff_sequences: the shared sequences every checkpoint embeds."""
    n = write_shared_sequences(base_fasta, extra_fasta, int(section["max_sequences"]), out)
    log.info("%d shared sequences in %s", n, out)
    return n


def model_diff_extract(
    *,
    fasta_path: str | os.PathLike,
    record_path: str | os.PathLike,
    checkpoint_dir: str | os.PathLike,
    model: str,
    part: int,
    prompt_section: Mapping[str, Any],
    activations_section: Mapping[str, Any],
    model_diff_section: Mapping[str, Any],
    layers: Sequence[int],
    pooled_path: str | os.PathLike,
    token_paths: Sequence[str | os.PathLike],
    device: str,
    allow_pickle: bool,
    threads: int | None,
) -> ExtractionSummary:
    """Rule model_diff_extract: `model`'s checkpoint embeds part `part` of the shared sequences
    at model_diff's layers (the activations stage's extraction and format)."""
    return extract(
        fasta_path=fasta_path,
        record_path=record_path,
        checkpoint_dir=checkpoint_dir,
        embedder=model,
        model="shared",
        part=part,
        prompt_section=prompt_section,
        settings=paired_extraction_settings(
            ExtractionSettings.from_section(activations_section),
            layers,
            int(model_diff_section["shards"]),
        ),
        pooled_path=pooled_path,
        token_paths=dict(zip(sorted(int(x) for x in layers), token_paths, strict=True)),
        device=device,
        allow_pickle=allow_pickle,
        threads=threads,
    )


def open_layer(layer_dirs: Mapping[str, str | os.PathLike]) -> PairedLayer:
    """The paired parts of one layer, checked to align token by token."""
    layer = PairedLayer.open(layer_dirs)
    rows = check_alignment(layer)
    log.info("%d paired tokens of %s aligned", rows, ", ".join(layer.models))
    return layer


def model_diff_profile(
    layer_dirs: Mapping[int, Mapping[str, str | os.PathLike]],
    kl_tables: Mapping[str, str | os.PathLike],
    section: Mapping[str, Any],
    table_path: str | os.PathLike,
    figure_paths: Sequence[str | os.PathLike],
) -> pd.DataFrame:
    """Rule model_diff_profile: the activation-difference profile of every layer and round."""
    cfg = ModelDiffSettings.from_section(section)
    layers = {int(layer): open_layer(dirs) for layer, dirs in layer_dirs.items()}
    kl = {m: pd.read_parquet(p) for m, p in kl_tables.items()}
    profile = build_profile(layers, cfg.position_bins, kl)
    write_table(profile, table_path, float_format="%.5g")
    plot_profile(profile, figure_paths)
    return profile


def _split(fasta: str | os.PathLike, cfg: ModelDiffSettings) -> tuple[list[str], list[str]]:
    ids = [e.seq_id for e in read_fasta(fasta)]
    train, held = split_ids(ids, cfg.seed, cfg.eval_fraction)
    if not train or not held:
        raise DataError(
            f"model_diff: {fasta} has {len(ids)} sequence(s); training and held-out "
            "evaluation need at least 2 (raise model_diff.max_sequences)"
        )
    return train, held


def _layer_job(
    layer_dirs: Mapping[str, str | os.PathLike],
    sequences: str | os.PathLike,
    section: Mapping[str, Any],
    device: str,
    threads: int | None,
) -> tuple[ModelDiffSettings, Any, PairedLayer, list[str], list[str]]:
    """What a per-layer training job starts from: settings, device, the aligned paired layer
    and the (train, held-out) sequence IDs."""
    if threads:
        torch.set_num_threads(threads)
    cfg = ModelDiffSettings.from_section(section)
    dev = resolve_device(device)
    paired = open_layer(layer_dirs)
    train, held = _split(sequences, cfg)
    return cfg, dev, paired, train, held


def _train_dictionary(
    paired: PairedLayer,
    cfg: ModelDiffSettings,
    device: Any,
    train: Sequence[str],
    seed: int,
    *,
    n_sources: int,
    expansion: int,
    k: int,
    differences: bool,
) -> tuple[BatchTopKCrosscoder, TrainingLog]:
    """A BatchTopK dictionary over `n_sources` activation sources of `paired`, trained on the
    `train` sequences: the models' activations side by side, or with `differences` their
    difference to the base (one source)."""
    torch.manual_seed(seed)
    model = BatchTopKCrosscoder(n_sources, paired.d_model, expansion * paired.d_model, k, seed=seed)
    batches = iter_paired(
        paired,
        cfg.batch_size,
        shuffle_buffer=cfg.shuffle_buffer,
        seed=seed,
        seq_ids=train,
        loop=True,
    )
    log_ = train_crosscoder(
        model,
        difference_batches(batches, 1) if differences else batches,
        tokens=cfg.training_tokens,
        lr=cfg.lr,
        aux_penalty=cfg.aux_penalty,
        dead_tokens=cfg.dead_tokens,
        device=device,
    )
    return model, log_


def run_crosscoder(
    *,
    layer: int,
    layer_dirs: Mapping[str, str | os.PathLike],
    sequences: str | os.PathLike,
    section: Mapping[str, Any],
    device: str,
    threads: int | None,
    outputs: Mapping[str, Any],
) -> pd.DataFrame:
    """Rule crosscoder: train the layer's crosscoder over every model (config order, the base
    first), classify its latents per round, run latent scaling on the held-out tokens.

    outputs: weights, latents (Parquet, every latent), classes (TSV), top (TSV), examples (TSV),
    metrics (JSON), curves (TSV), figures (PNG, SVG)."""
    cfg, dev, paired, train, held = _layer_job(layer_dirs, sequences, section, device, threads)
    model, log_ = _train_dictionary(
        paired,
        cfg,
        dev,
        train,
        derive_seed(cfg.seed, "crosscoder", layer),
        n_sources=len(paired.models),
        expansion=cfg.expansion,
        k=cfg.k,
        differences=False,
    )
    log.info(
        "crosscoder layer %d: %d steps, %.0f tokens/s", layer, log_.steps, log_.tokens_per_second
    )
    model.eval()
    save_crosscoder(model, outputs["weights"])
    ev = evaluate(model, iter_paired_rows(paired, seq_ids=held), n_top=cfg.top_examples, device=dev)
    latents = latent_table(
        model,
        ev,
        list(paired.models),
        exclusive_cut=cfg.exclusive_cut,
        shared_width=cfg.shared_width,
        nu_max=cfg.nu_max,
        min_firings=cfg.min_firings,
    )
    latents.insert(0, "layer", layer)
    write_parquet(latents, outputs["latents"])
    counts = class_counts(latents)
    counts.insert(0, "layer", layer)
    write_table(counts, outputs["classes"])
    top = top_round_only(latents, cfg.top_latents)
    write_table(top, outputs["top"], float_format="%.4g")
    seqs = {e.seq_id: e.sequence for e in read_fasta(sequences)}
    write_table(
        latent_examples(top, ev, seqs, n_examples=cfg.top_examples),
        outputs["examples"],
        float_format="%.4g",
    )
    write_json(
        outputs["metrics"],
        {
            "layer": layer,
            "models": list(paired.models),
            "d_model": paired.d_model,
            "d_dict": model.d_dict,
            "k": model.k,
            "train_sequences": len(train),
            "held_out_sequences": len(held),
            "held_out_tokens": ev.n_tokens,
            "steps": log_.steps,
            "training_tokens": log_.tokens,
            "tokens_per_second": log_.tokens_per_second,
            "fvu": dict(zip(paired.models, map(float, ev.fvu), strict=True)),
            "dead_fraction": ev.dead_fraction,
            "inference_l0": float(ev.fires.sum() / max(ev.n_tokens, 1)),
        },
    )
    write_table(pd.DataFrame(log_.curve), outputs["curves"])
    plot_classes(latents, layer, outputs["figures"])
    return latents


def run_diff_saes(
    *,
    layer: int,
    layer_dirs: Mapping[str, str | os.PathLike],
    sequences: str | os.PathLike,
    section: Mapping[str, Any],
    device: str,
    threads: int | None,
    weights: Mapping[str, str | os.PathLike],
    metrics: Mapping[str, str | os.PathLike],
) -> dict[str, dict[str, Any]]:
    """Rule diff_sae: one BatchTopK SAE per round on h_round - h_base at this layer."""
    cfg, dev, paired, train, held = _layer_job(layer_dirs, sequences, section, device, threads)
    base = paired.models[0]
    out = {}
    for model_name in weights:
        pair = paired.select([base, model_name])
        sae, log_ = _train_dictionary(
            pair,
            cfg,
            dev,
            train,
            derive_seed(cfg.seed, "diff_sae", layer, model_name),
            n_sources=1,
            expansion=cfg.diff_expansion,
            k=cfg.diff_k,
            differences=True,
        )
        sae.eval()
        save_crosscoder(sae, weights[model_name])
        ev = evaluate(
            sae, difference_rows(iter_paired_rows(pair, seq_ids=held), 1), n_top=1, device=dev
        )
        out[model_name] = {
            "layer": layer,
            "model": model_name,
            "d_dict": sae.d_dict,
            "k": sae.k,
            "steps": log_.steps,
            "tokens_per_second": log_.tokens_per_second,
            "held_out_tokens": ev.n_tokens,
            "fvu": float(ev.fvu[0]),
            "dead_fraction": ev.dead_fraction,
            "fires": ev.fires.astype(int).tolist(),
        }
        write_json(metrics[model_name], out[model_name])
        log.info(
            "diff SAE %s layer %d: FVU %.3f, dead %.2f",
            model_name,
            layer,
            out[model_name]["fvu"],
            out[model_name]["dead_fraction"],
        )
    return out


def sae_diff_directions(
    features: str | os.PathLike | None, sae_dir: str | os.PathLike | None
) -> np.ndarray:
    """Decoder rows of the SAE diff's changed features (family base), or none."""
    if features is None or sae_dir is None:
        return np.zeros((0, 0))
    table = pd.read_parquet(features)
    changed = table.loc[table["changed"].astype(bool), "feature"].to_numpy(dtype=np.int64)
    sae = load_sae(sae_dir)
    return sae.W_dec.detach().cpu().numpy()[np.unique(changed)]


def run_agreement(
    *,
    layer: int,
    crosscoder: str | os.PathLike,
    latents: str | os.PathLike,
    diff_saes: Mapping[str, str | os.PathLike],
    diff_sae_metrics: Mapping[str, str | os.PathLike],
    sae_diff_features: str | os.PathLike | None,
    sae_diff_sae: str | os.PathLike | None,
    section: Mapping[str, Any],
    table_path: str | os.PathLike,
    matches_path: str | os.PathLike,
) -> pd.DataFrame:
    """Rule model_diff_agreement: per round, how the crosscoder's genuine round-only latents,
    the difference SAE's live latents and the SAE diff's changed features match."""
    cfg = ModelDiffSettings.from_section(section)
    cc = load_crosscoder(crosscoder)
    table = pd.read_parquet(latents)
    changed = sae_diff_directions(sae_diff_features, sae_diff_sae)
    models = list(diff_saes)
    frames, matches = [], []
    for model_name in models:
        r = 1 + models.index(model_name)
        genuine = table[
            (table["model"] == model_name)
            & (table["class"] == ROUND_ONLY)
            & table["nu_error"].notna()
            & ~table["artifact"].astype(bool)
        ]["latent"].to_numpy(dtype=np.int64)
        # In raw units: each model's decoder times its input scale (crosscoder.normalise).
        dec = (cc.W_dec * cc.scale[None, :, None]).detach().cpu().numpy()
        cc_dirs = dec[genuine, r] - dec[genuine, 0]
        sae = load_crosscoder(diff_saes[model_name])
        fires = np.asarray(read_json(diff_sae_metrics[model_name])["fires"])
        sae_dirs = sae.W_dec.detach().cpu().numpy()[fires > 0, 0]
        views = {"crosscoder_round_only": cc_dirs, "diff_sae": sae_dirs}
        if sae_diff_features is not None:
            views["sae_diff_changed"] = changed
        frames.append(agreement_summary(views, cfg.match_cosine, model=model_name, layer=layer))
        to_sae, which = max_cosine(cc_dirs, sae_dirs)
        row = {
            "layer": layer,
            "model": model_name,
            "latent": genuine,
            "diff_sae_cosine": to_sae,
            "diff_sae_latent": which,
        }
        if sae_diff_features is not None:
            row["sae_diff_cosine"], _ = max_cosine(cc_dirs, changed)
        matches.append(pd.DataFrame(row))
    summary = pd.concat(frames, ignore_index=True)
    write_table(summary, table_path, float_format="%.4g")
    write_table(pd.concat(matches, ignore_index=True), matches_path, float_format="%.4g")
    return summary
