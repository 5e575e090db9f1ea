"""The train_sae rule: the fold replicas of one (embedder, layer, scheme), each trained, fine-tuned
or imported, then evaluated on held-out sequences, with its metrics and training curves.

All replicas of a family run in one job (run_train_sae_replicas): at paper scale that is one
GPU job per (embedder, layer, scheme) instead of one per fold, and adding a layer or a scheme
still runs only the new jobs.

Schemes (contracts.md 4): 'base' trains from scratch on the base model's tokens (or imports
sae.base.import); every other scheme fine-tunes the base SAE of the same fold on its models'
tokens. Replica f trains without sequence fold f (whole sequence clusters, plmdiff.sae.folds) and
is evaluated on fold f (the null fine-tune null_ft the other way round, see scheme_split); with
kfold == 1 there is no held-out data and the evaluation uses (a sample of) the training data,
which the metrics say (`eval_split`).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pandas as pd

from plmdiff.activations.loader import count_tokens, iter_tokens
from plmdiff.activations.readers import token_d_model, token_seq_ids
from plmdiff.config.paths import NULL_SCHEME
from plmdiff.core.errors import DataError
from plmdiff.core.fasta import read_fasta, write_fasta
from plmdiff.core.runtime import derive_seed, resolve_device, write_json
from plmdiff.core.tables import write_table
from plmdiff.models.checkpoints import CheckpointRecord, load_model, load_tokenizer
from plmdiff.models.text import EncodedSequence, PromptFormat, encode_sequences
from plmdiff.sae import checks
from plmdiff.sae.folds import read_fold_table, scheme_split
from plmdiff.sae.imports import import_sae
from plmdiff.sae.metrics import (
    SplicedLoss,
    plot_training_curves,
    reconstruction_metrics,
    spliced_lm_loss,
)
from plmdiff.sae.sequences import read_base_sequences
from plmdiff.sae.training import (
    LAYER_NORM,
    SAESettings,
    build_training_sae,
    init_b_dec_to_mean,
    input_normalisation,
    load_sae,
    sae_batches,
    save_sae,
    train,
    training_sae_from,
)

log = logging.getLogger(__name__)

CURVE_COLUMNS = ["step", "tokens", "lr", "loss", "l0", "dead_fraction", "explained_variance"]
CE_BATCH_SEQUENCES = 8


@dataclass(frozen=True)
class SAEJob:
    """Everything one train_sae job needs (paths are the rule's inputs)."""

    embedder: str
    layer: int
    scheme: str
    fold: int
    models: list[str]  # models whose tokens train this scheme
    token_files: list[str]  # their token part files of this layer
    fasta: Mapping[str, str]  # model -> FASTA (sequences for the spliced LM loss)
    checkpoint_records: Mapping[str, str]  # model -> record of the checkpoint that embeds it
    settings: SAESettings
    prompt: PromptFormat
    base_sae: str | None = None  # the base SAE directory of this fold (fine-tunes)
    import_path: str | None = None  # resolved sae.base.import (scheme base only)
    # plmdiff.sae.folds tables of the scheme's models (None: every sequence its own cluster)
    fold_table: Sequence[str] | None = None
    device: str = "auto"
    allow_pickle: bool = False

    @property
    def layer_dirs(self) -> list[str]:
        return list(dict.fromkeys(str(Path(f).parent) for f in self.token_files))

    def for_fold(self, fold: int, base_sae: str | None) -> SAEJob:
        """The same family's replica `fold`, which fine-tunes `base_sae` (the base SAE of that fold)."""
        return replace(self, fold=fold, base_sae=base_sae)

    def seed(self, purpose: str) -> int:
        s = self.settings
        return derive_seed(s.seed, purpose, self.embedder, self.layer, self.scheme, self.fold)


@dataclass(frozen=True)
class SAEOutputs:
    sae_dir: str
    metrics: str
    curves_tsv: str
    curves_png: str


def eval_sample(seq_ids: Sequence[str], n: int, seed: int) -> list[str]:
    """A deterministic sample of n IDs (a hash order, so it does not depend on the input order)."""
    return sorted(seq_ids, key=lambda s: (derive_seed(seed, "sae-eval", s), s))[:n]


def hook_name(layer: int, n_layers: int) -> str:
    """TransformerLens name of residual-stream layer `layer`, for sae-lens users."""
    return (
        f"blocks.{layer}.hook_resid_pre"
        if layer < n_layers
        else f"blocks.{layer - 1}.hook_resid_post"
    )


def _clean(value: Any) -> Any:
    """Strict JSON: NaN and inf become null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Mapping):
        return {k: _clean(v) for k, v in value.items()}
    return value


def _records(job: SAEJob) -> dict[str, Any]:
    return {m: CheckpointRecord.read(p) for m, p in job.checkpoint_records.items()}


def _train_or_import(
    job: SAEJob,
    sae_dir: str,
    *,
    d_in: int,
    train_ids: list[str] | None,
    device: Any,
    metadata: dict[str, Any],
) -> tuple[dict[str, Any], pd.DataFrame]:
    """Write the SAE directory; return what the metrics say about training, and the curves."""
    s = job.settings
    if job.scheme == "base" and job.import_path:
        sae = import_sae(job.import_path, layer=job.layer, d_in=d_in)
        save_sae(sae, sae_dir, metadata=metadata)
        info = {
            "source": "imported",
            "import": str(job.import_path),
            "train_tokens": 0,
            "epochs_over_unique_tokens": None,
            "epochs_warning": None,
        }
        return info, pd.DataFrame(columns=CURVE_COLUMNS)

    if job.scheme == "base":
        sae = build_training_sae(s, d_in, seed=job.seed("sae-init"))
        standardize = s.normalize == "unit_norm"
        normalisation = LAYER_NORM if standardize else None
        tokens, lr, source, tokens_key = s.training_tokens, s.lr, "trained", "sae.training_tokens"
    else:
        if not job.base_sae:
            raise DataError(f"scheme '{job.scheme}' fine-tunes the base SAE, but none was given")
        base = load_sae(job.base_sae)
        normalisation = input_normalisation(base)
        standardize = normalisation == LAYER_NORM
        sae = training_sae_from(base, s, seed=job.seed("sae-init"))
        tokens, lr, source = s.finetune_tokens, s.finetune_lr, "fine-tuned"
        tokens_key = "sae.finetune_tokens"
    available = count_tokens(job.layer_dirs, train_ids)
    epochs_warning = checks.epochs_warning(tokens, available, key=tokens_key)
    if epochs_warning:
        log.warning("%s fold %d: %s", job.scheme, job.fold, epochs_warning)
    # A buffer larger than the data would re-read it epoch after epoch just to fill up.
    stream = iter_tokens(
        job.layer_dirs,
        s.batch_size,
        shuffle_buffer=min(s.shuffle_buffer, available),
        seed=job.seed("sae-data"),
        seq_ids=train_ids,
        loop=True,
    )
    batches = sae_batches(stream, standardize=standardize, device=device)
    if source == "trained" and s.normalize != "expected_average_only_in":
        # (sae-lens rescales expected_average_only_in inputs inside the trainer, after this.)
        batches = init_b_dec_to_mean(sae, batches)
    result = train(
        sae,
        batches,
        tokens=tokens,
        batch_size=s.batch_size,
        lr=lr,
        dead_window_steps=s.dead_window_steps,
        device=device,
    )
    save_sae(result.sae, sae_dir, normalisation=normalisation, metadata=metadata)
    info = {
        "source": source,
        "base_sae": job.base_sae,
        "train_tokens": result.tokens,
        "train_tokens_available": available,
        "train_epochs": result.tokens / available,
        "train_steps": result.steps,
        "train_dead_fraction": result.dead_fraction,
        "epochs_over_unique_tokens": checks.epochs_over_unique_tokens(tokens, available),
        "epochs_warning": epochs_warning,
    }
    return info, result.curves


def _encoded_eval_sequences(
    job: SAEJob, ids: list[str], model: str, record: Any
) -> list[EncodedSequence]:
    wanted = set(ids)
    sequences = [e.sequence for e in read_fasta(job.fasta[model]) if e.seq_id in wanted]
    tokenizer = load_tokenizer(record.path)
    encoded = encode_sequences(tokenizer, job.prompt, record.special_ids, sequences)
    # Longer than the context: score the first positions only (as a truncated extraction does).
    limit = record.n_positions
    return [
        EncodedSequence(
            ids=e.ids[:limit],
            start=e.start,
            stop=min(e.stop, limit),
            spans=e.spans[: min(e.stop, limit) - e.start],
        )
        for e in encoded
        if e.start < limit - 1
    ]


def _spliced_loss(job: SAEJob, sae: Any, eval_ids: list[str], device: Any) -> dict[str, Any]:
    """CE loss recovered on a deterministic sample of the evaluation sequences, with each
    model's sequences run through the checkpoint that embedded them."""
    sample = eval_sample(eval_ids, job.settings.eval_sequences, job.settings.seed)
    records = _records(job)
    by_checkpoint: dict[str, list[str]] = {}
    for model in job.models:
        by_checkpoint.setdefault(records[model].path, []).append(model)
    parts = []
    for path, models in by_checkpoint.items():
        record = records[models[0]]
        encoded = [e for m in models for e in _encoded_eval_sequences(job, sample, m, record)]
        if not encoded:
            continue
        lm = load_model(path, allow_pickle=job.allow_pickle, device=device)
        parts.append(
            spliced_lm_loss(
                lm,
                sae,
                encoded,
                layer=job.layer,
                pad_id=record.special_ids.pad,
                batch_size=CE_BATCH_SEQUENCES,
            )
        )
        del lm
    if not parts:
        log.warning("no evaluation sequences found in the FASTA files: no CE loss recovered")
        return {}
    pooled = SplicedLoss.pool(parts)
    return {
        "ce_sequences": pooled.n_sequences,
        "ce_predictions": pooled.n_predictions,
        "ce_loss_clean": pooled.clean,
        "ce_loss_spliced": pooled.spliced,
        "ce_loss_zero_ablated": pooled.zero_ablated,
        "ce_loss_recovered": pooled.recovered,
    }


def run_train_sae(job: SAEJob, outputs: SAEOutputs) -> dict[str, Any]:
    """Train (or fine-tune, or import) one SAE, evaluate it, write every output. Returns the metrics."""
    s = job.settings
    device = resolve_device(job.device)
    layer_dirs = job.layer_dirs
    d_in = token_d_model(layer_dirs)
    seq_ids = token_seq_ids(layer_dirs)
    fold_of = read_fold_table(job.fold_table, s.kfold) if job.fold_table else None
    train_ids, held_out = scheme_split(job.scheme, seq_ids, s.kfold, s.seed, job.fold, fold_of)
    if not train_ids:
        raise DataError(
            f"fold {job.fold} of {s.kfold} leaves no training sequences in {', '.join(layer_dirs)}"
        )
    if s.kfold > 1 and not held_out:
        log.warning(
            "fold %d of %d holds no sequences; evaluating on training data", job.fold, s.kfold
        )
    records = _records(job)
    first = records[job.models[0]]
    metadata = {
        "model_name": job.embedder,
        "hook_name": hook_name(job.layer, first.n_layers),
        "plmdiff": {
            "embedder": job.embedder,
            "embedder_fingerprints": {m: r.fingerprint for m, r in records.items()},
            "layer": job.layer,
            "layer_convention": "residual stream after `layer` blocks (input of block `layer`)",
            "scheme": job.scheme,
            "fold": job.fold,
            "kfold": s.kfold,
            "fold_seed": s.seed,
            "models": list(job.models),
        },
    }
    info, curves = _train_or_import(
        job,
        outputs.sae_dir,
        d_in=d_in,
        train_ids=train_ids if s.kfold > 1 else None,
        device=device,
        metadata=metadata,
    )

    sae = load_sae(outputs.sae_dir, device=device)
    eval_ids = held_out or train_ids
    split = "heldout" if held_out else "train"
    if job.scheme == NULL_SCHEME and held_out:
        # The null fine-tune's evaluation tokens trained its base replica (scheme_split).
        split = "base_train"
    stream = iter_tokens(
        layer_dirs,
        s.batch_size,
        shuffle_buffer=min(s.shuffle_buffer, s.dead_window),
        seed=job.seed("sae-eval"),
        seq_ids=eval_ids,
        loop=False,
    )
    recon = reconstruction_metrics(
        sae, stream, dense_threshold=s.dense_threshold, max_tokens=s.dead_window, device=device
    )
    close = getattr(stream, "close", None)
    if close is not None:
        close()
    # A BatchTopK SAE is stored as JumpReLU, whose config has no k.
    trained_k = info["source"] != "imported" and s.architecture in ("topk", "batchtopk")
    k = s.k if trained_k else getattr(sae.cfg, "k", None)
    metrics: dict[str, Any] = {
        "embedder": job.embedder,
        "layer": job.layer,
        "scheme": job.scheme,
        "fold": job.fold,
        "kfold": s.kfold,
        "models": list(job.models),
        "architecture": s.architecture if info["source"] != "imported" else None,
        "inference_architecture": sae.cfg.architecture(),
        "d_in": sae.cfg.d_in,
        "d_sae": sae.cfg.d_sae,
        "k": k,
        "input_normalisation": sae.cfg.normalize_activations,
        **info,
        "train_sequences": len(train_ids),
        "heldout_sequences": len(held_out),
        "eval_split": split,
        "eval_tokens": recon.n_tokens,
        **{k: v for k, v in recon.to_json().items() if k != "n_tokens"},
        "dense_threshold": s.dense_threshold,
        "dead_fraction_flag": checks.dead_fraction_flag(recon.dead_fraction),
        **_spliced_loss(job, sae, eval_ids, device),
        "device": str(device),
    }
    if metrics["dead_fraction_flag"]:
        log.warning(
            "SAE %s: %.0f%% of its features never fire on held-out tokens (flagged above %.0f%%)",
            outputs.sae_dir,
            100 * recon.dead_fraction,
            100 * checks.DEAD_FRACTION_FLAG,
        )
    write_json(outputs.metrics, _clean(metrics))
    curves = curves if len(curves) else pd.DataFrame(columns=CURVE_COLUMNS)
    write_table(curves, outputs.curves_tsv, float_format=None)
    plot_training_curves(
        curves,
        outputs.curves_png,
        f"SAE {job.embedder} layer {job.layer} {job.scheme} fold {job.fold} ({info['source']})",
    )
    log.info(
        "SAE %s: FVU %.4f, L0 %.2f, dead %.3f, CE recovered %s",
        outputs.sae_dir,
        recon.fvu,
        recon.l0,
        recon.dead_fraction,
        metrics.get("ce_loss_recovered"),
    )
    return metrics


def run_train_sae_replicas(
    jobs: Sequence[SAEJob], outputs: Sequence[SAEOutputs]
) -> list[dict[str, Any]]:
    """The train_sae rule: every fold replica of one (embedder, layer, scheme), in fold order.

    Replicas are independent (each has its own seeds, split and base SAE), so training them one
    after the other in one process gives the same SAEs as one job each.
    """
    if len(jobs) != len(outputs):
        raise ValueError(f"{len(jobs)} SAE replicas but {len(outputs)} output sets")
    return [run_train_sae(job, out) for job, out in zip(jobs, outputs, strict=True)]


def prepare_base_sequences(
    files: Sequence[str], fasta_out: str | Path, stats_out: str | Path
) -> int:
    """Rule sae_base_sequences: sae.base.sequences as the FASTA of paths.SAE_BASE_SOURCE, with
    its counts; returns how many sequences train the base SAE besides the base model's."""
    base = read_base_sequences(files)
    stats = base.stats(files)
    if base.n_non_canonical or base.n_empty:
        log.warning(
            "sae.base.sequences: dropped %d sequences with letters outside the 20 canonical amino "
            "acids and %d empty ones of %d",
            base.n_non_canonical,
            base.n_empty,
            base.n_records,
        )
    write_fasta(fasta_out, base.entries)
    write_json(stats_out, stats)
    log.info("sae.base.sequences: %d sequences from %s", len(base.entries), ", ".join(files))
    return len(base.entries)
