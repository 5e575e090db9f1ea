"""Sparse autoencoders with sae-lens: settings, training SAEs, training, fine-tuning, save and load.

sae-lens does the SAE work (its training SAEs, its `SAETrainer`, its on-disk format); this module
feeds it token activations from any iterator of [batch, d_in] tensors (the Parquet shards of
`plmdiff.activations.loader.iter_tokens` in the workflow, an in-memory tensor in tests) and records
training curves.

Input normalisation 'unit_norm' is the study's per-token standardisation (Zym_SAEs'
`input_unit_norm`: subtract the token's mean over dimensions, divide by its standard deviation
+ 1e-5), which is exactly sae-lens's `normalize_activations="layer_norm"`. It is applied to the
batches before the SAE sees them, and the saved config says "layer_norm", so that a loaded SAE
encodes raw activations and decodes back to raw scale. (Training with sae-lens's own layer_norm
would make its TopK auxiliary loss refuse to run once a feature dies.)
"""

from __future__ import annotations

import itertools
import logging
import math
import os
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from plmdiff.config.sections import from_section
from plmdiff.core.errors import ConfigError, DataError
from plmdiff.core.runtime import atomic_path
from plmdiff.sae.sources import SAE_FILES

log = logging.getLogger(__name__)

ARCHITECTURES = ("batchtopk", "topk", "jumprelu", "standard")
NORMALISATIONS = ("unit_norm", "expected_average_only_in", "none")
# sae-lens's layer_norm and Zym_SAEs' input_unit_norm both add this to the standard deviation.
UNIT_NORM_EPS = 1e-5
# Input normalisations a loaded SAE applies itself (sae-lens names).
LAYER_NORM = "layer_norm"
NO_NORM = "none"
# Share of the steps spent warming the learning rate up, and decaying it linearly to 0 at the end.
WARM_UP_SHARE = 0.05
DECAY_SHARE = 0.2
CURVE_POINTS = 200
# Batches whose mean initialises the decoder bias of an SAE trained from scratch.
B_DEC_INIT_BATCHES = 16


# ----------------------------------------------------------------------------- settings


@dataclass(frozen=True)
class SAESettings:
    """The `sae` config section; meanings and defaults in config/schema.yaml (which also checks
    the enums and bounds), `import_path` from `sae.base.import`."""

    architecture: str
    expansion: int
    d_sae: int | None
    k: int
    l1_coefficient: float
    lr: float
    finetune_lr: float
    batch_size: int
    training_tokens: int
    finetune_tokens: int
    shuffle_buffer: int
    normalize: str
    kfold: int
    dead_window: int
    dense_threshold: float
    eval_sequences: int
    seed: int
    import_path: str | None

    @classmethod
    def from_section(cls, sae_section: Mapping[str, Any]) -> SAESettings:
        return from_section(cls, sae_section, "sae", import_path=sae_section["base"]["import"])

    def dictionary_size(self, d_in: int) -> int:
        return int(self.d_sae) if self.d_sae else int(self.expansion) * int(d_in)

    @property
    def dead_window_steps(self) -> int:
        """sae-lens counts the dead-feature window in steps; the config counts tokens."""
        return max(1, math.ceil(self.dead_window / self.batch_size))


# ----------------------------------------------------------------------------- data


def standardize_tokens(x: torch.Tensor) -> torch.Tensor:
    """Per-token standardisation, identical to sae-lens's layer_norm input normalisation."""
    centred = x - x.mean(dim=-1, keepdim=True)
    return centred / (centred.std(dim=-1, keepdim=True) + UNIT_NORM_EPS)


def sae_batches(
    source: Iterator[torch.Tensor], *, standardize: bool, device: Any = "cpu"
) -> Iterator[torch.Tensor]:
    """Batches as the SAE trains on them: on its device, float32, standardised if asked."""
    for batch in source:
        batch = batch.to(device=device, dtype=torch.float32, non_blocking=True)
        yield standardize_tokens(batch) if standardize else batch


@torch.no_grad()
def init_b_dec_to_mean(
    sae: Any, batches: Iterator[torch.Tensor], n_batches: int = B_DEC_INIT_BATCHES
) -> Iterator[torch.Tensor]:
    """Set the decoder bias to the mean of the first batches; return the batches, replayed.

    Residual streams share a large common direction. An SAE whose b_dec starts at zero spends
    its first steps (and kills features) learning it; starting from the mean, as the TopK SAE
    papers do, its features model the variation between tokens from the first step.
    """
    head = list(itertools.islice(batches, n_batches))
    if head:
        mean = torch.cat([b.float() for b in head]).mean(0)
        sae.b_dec.copy_(mean.to(device=sae.b_dec.device, dtype=sae.b_dec.dtype))
    return itertools.chain(head, batches)


def input_normalisation(sae: Any) -> str:
    """'layer_norm' or 'none': what a loaded SAE does to its input before encoding.

    sae-lens applies no run-time normalisation for 'expected_average_only_in' (the trainer
    folds the estimated scale into the weights), so such an SAE takes raw activations.
    """
    norm = sae.cfg.normalize_activations
    if norm in (LAYER_NORM, NO_NORM, "expected_average_only_in"):
        return LAYER_NORM if norm == LAYER_NORM else NO_NORM
    raise DataError(
        f"SAE input normalisation '{norm}' is not supported here; accepted: layer_norm "
        "(per-token standardisation), none, expected_average_only_in (folded)"
    )


# ----------------------------------------------------------------------------- building


def build_training_sae(
    settings: SAESettings,
    d_in: int,
    *,
    d_sae: int | None = None,
    seed: int = 0,
    rescale_acts_by_decoder_norm: bool = True,
) -> Any:
    """A fresh sae-lens training SAE of the configured architecture (on CPU, float32).

    For 'unit_norm' the SAE itself does not normalise (the batches are standardised, see the
    module docstring); 'expected_average_only_in' is left to sae-lens's trainer, which estimates
    the scale, trains, then folds it into the weights.
    """
    from sae_lens import (
        BatchTopKTrainingSAE,
        BatchTopKTrainingSAEConfig,
        JumpReLUTrainingSAE,
        JumpReLUTrainingSAEConfig,
        StandardTrainingSAE,
        StandardTrainingSAEConfig,
        TopKTrainingSAE,
        TopKTrainingSAEConfig,
    )

    common: dict[str, Any] = {
        "d_in": int(d_in),
        "d_sae": int(d_sae or settings.dictionary_size(d_in)),
        "dtype": "float32",
        "device": "cpu",
        "normalize_activations": (
            "expected_average_only_in"
            if settings.normalize == "expected_average_only_in"
            else NO_NORM
        ),
    }
    arch = settings.architecture
    torch.manual_seed(seed)
    if arch == "batchtopk":
        cfg = BatchTopKTrainingSAEConfig(
            **common, k=settings.k, rescale_acts_by_decoder_norm=rescale_acts_by_decoder_norm
        )
        return BatchTopKTrainingSAE(cfg)
    if arch == "topk":
        cfg = TopKTrainingSAEConfig(
            **common, k=settings.k, rescale_acts_by_decoder_norm=rescale_acts_by_decoder_norm
        )
        return TopKTrainingSAE(cfg)
    if arch == "jumprelu":
        cfg = JumpReLUTrainingSAEConfig(**common, l0_coefficient=settings.l1_coefficient)
        return JumpReLUTrainingSAE(cfg)
    if arch == "standard":
        cfg = StandardTrainingSAEConfig(**common, l1_coefficient=settings.l1_coefficient)
        return StandardTrainingSAE(cfg)
    raise ConfigError(f"sae.architecture = '{arch}'; accepted: {', '.join(ARCHITECTURES)}")


def _unit_decoder(sae: Any, tol: float = 1e-4) -> bool:
    norms = sae.W_dec.detach().norm(dim=-1)
    return bool(torch.allclose(norms, torch.ones_like(norms), atol=tol))


@torch.no_grad()
def training_sae_from(base: Any, settings: SAESettings, *, seed: int = 0) -> Any:
    """A training SAE (settings.architecture) that starts exactly from `base`'s weights.

    `base` is an inference SAE as `load_sae` returns it (a BatchTopK SAE is stored as JumpReLU
    with its global threshold). W_enc, W_dec, b_enc and b_dec are copied unchanged; JumpReLU
    thresholds are copied, and a BatchTopK fine-tune starts its running threshold from their
    mean. TopK/BatchTopK scale pre-activations by the decoder norms, which is the identity for
    the unit-norm decoders sae-lens saves; for a base whose decoder is not unit-norm that scaling
    is switched off so that the fine-tune starts from the base's function, not just its weights.
    The fine-tune keeps the base's dictionary size and input normalisation.
    """
    arch = settings.architecture
    rescale = arch not in ("topk", "batchtopk") or _unit_decoder(base)
    if not rescale:
        log.info("base decoder rows are not unit-norm: fine-tuning without decoder-norm rescaling")
    fine = build_training_sae(
        replace(settings, normalize=NO_NORM),
        base.cfg.d_in,
        d_sae=base.cfg.d_sae,
        seed=seed,
        rescale_acts_by_decoder_norm=rescale,
    )
    for name in ("W_enc", "W_dec", "b_enc", "b_dec"):
        source = getattr(base, name, None)
        if source is None:
            raise DataError(f"base SAE has no '{name}'; cannot fine-tune it as {arch}")
        target = getattr(fine, name)
        if target.shape != source.shape:
            raise DataError(
                f"base SAE '{name}' has shape {tuple(source.shape)}, expected {tuple(target.shape)}"
            )
        target.copy_(source.detach().to(target.dtype))
    threshold = getattr(base, "threshold", None)
    if arch == "jumprelu" and threshold is not None:
        fine.threshold.copy_(threshold.detach().to(fine.threshold.dtype))
    if arch == "batchtopk" and threshold is not None:
        finite = threshold.detach()[torch.isfinite(threshold.detach())]
        start = finite.double().mean() if len(finite) else torch.tensor(0.0, dtype=torch.double)
        fine.topk_threshold = start.to(fine.topk_threshold.device)
    base_k = getattr(base.cfg, "k", None)
    if base_k is not None and arch in ("topk", "batchtopk") and int(base_k) != settings.k:
        log.warning("base SAE has k=%s, fine-tuning with sae.k=%s", base_k, settings.k)
    return fine


# ----------------------------------------------------------------------------- training


@dataclass
class TrainingResult:
    """A trained (training-mode) SAE and how training went."""

    sae: Any
    curves: pd.DataFrame
    tokens: int
    steps: int
    dead_fraction: float


def _trainer_class() -> type:
    from sae_lens import SAETrainer

    class CurveRecordingTrainer(SAETrainer):
        """sae-lens's trainer, recording loss, L0 and dead fraction every `record_every` steps."""

        def __init__(self, *args: Any, record_every: int, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self.record_every = max(1, record_every)
            self.curve_rows: list[dict[str, float]] = []

        def step(self, batch: torch.Tensor) -> Any:
            output = super().step(batch)
            index = self.n_training_steps  # fit() advances it after step() returns
            last = index + 1 >= self.cfg.total_training_steps
            if index % self.record_every == 0 or last:
                self.curve_rows.append(self._curve_row(output, index + 1))
            return output

        @torch.no_grad()
        def _curve_row(self, output: Any, step: int) -> dict[str, float]:
            acts = output.feature_acts
            acts = acts.to_dense() if acts.is_sparse else acts
            sae_in = output.sae_in.float()
            err = (output.sae_out.float() - sae_in).pow(2).sum(-1).mean()
            var = (sae_in - sae_in.mean(0)).pow(2).sum(-1).mean()
            row = {
                "step": step,
                "tokens": self.n_training_samples,
                "lr": self.optimizer.param_groups[0]["lr"],
                "loss": float(output.loss.item()),
                **{name: float(value.item()) for name, value in output.losses.items()},
                "l0": float((acts != 0).float().sum(-1).mean().item()),
                "dead_fraction": float(self.dead_neurons.float().mean().item()),
                "explained_variance": float((1 - err / var).item()) if var > 0 else math.nan,
            }
            threshold = getattr(self.sae, "topk_threshold", None)
            if threshold is not None:
                # BatchTopK keeps k per token on average by construction; what the saved
                # (JumpReLU) SAE will fire is set by the running threshold.
                fires = (output.hidden_pre > threshold.to(output.hidden_pre.dtype)).float()
                row["l0_inference"] = float(fires.sum(-1).mean().item())
            return row

    return CurveRecordingTrainer


def train(
    sae: Any,
    batches: Iterator[torch.Tensor],
    *,
    tokens: int,
    batch_size: int,
    lr: float,
    dead_window_steps: int,
    device: Any = "cpu",
    prefetch: int = 4,
    on_start: Callable[[Any], None] | None = None,
) -> TrainingResult:
    """Train `sae` with sae-lens's SAETrainer on `batches` (full [batch_size, d_in] tensors).

    The batches are drawn in a background thread (`prefetch` ahead), so reading Parquet overlaps
    the SAE's steps. `tokens` is rounded down to whole batches. The learning rate warms up over
    5% of the steps and decays linearly to 0 over the last 20%.
    """
    from sae_lens.config import SAETrainerConfig
    from sae_lens.training.prefetch import PrefetchingIterator

    steps = max(1, tokens // batch_size)
    trainer_cfg = SAETrainerConfig(
        total_training_samples=steps * batch_size,
        train_batch_size_samples=batch_size,
        lr=lr,
        lr_end=lr,  # sae-lens asserts it is set; the constant schedule then decays from lr
        lr_scheduler_name="constant",
        lr_warm_up_steps=int(steps * WARM_UP_SHARE),
        lr_decay_steps=int(steps * DECAY_SHARE),
        device=str(device),
        dead_feature_window=dead_window_steps,
        n_batches_for_norm_estimate=max(1, min(100, steps)),
    )
    sae.to(str(device))
    if on_start is not None:
        on_start(sae)
    data = PrefetchingIterator(batches, prefetch=prefetch)
    trainer = _trainer_class()(
        cfg=trainer_cfg,
        sae=sae,
        data_provider=data,
        record_every=max(1, steps // CURVE_POINTS),
    )
    try:
        trainer.fit()
    finally:
        data.close()
        close = getattr(batches, "close", None)
        if close is not None:  # a generator: runs its cleanup (the reader's own threads)
            close()
    dead = float(trainer.dead_neurons.float().mean().item())
    log.info(
        "trained %s SAE %d -> %d for %d steps (%d tokens); dead fraction %.3f",
        sae.cfg.architecture(),
        sae.cfg.d_in,
        sae.cfg.d_sae,
        steps,
        steps * batch_size,
        dead,
    )
    return TrainingResult(
        sae=sae,
        curves=pd.DataFrame(trainer.curve_rows),
        tokens=steps * batch_size,
        steps=steps,
        dead_fraction=dead,
    )


# ----------------------------------------------------------------------------- save, load


def _json_safe(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return value


def save_sae(
    sae: Any,
    path: str | os.PathLike,
    *,
    normalisation: str | None = None,
    metadata: Mapping[str, Any] | None = None,
) -> Path:
    """Write `sae` as a sae-lens directory (cfg.json + sae_weights.safetensors), atomically.

    A training SAE is saved in its inference form (BatchTopK becomes JumpReLU with its
    threshold, TopK decoders are folded to unit norm). `normalisation` ('layer_norm' or 'none')
    is what the saved config tells a loaded SAE to do with raw input: 'layer_norm' for an SAE
    trained on standardised batches. `metadata` goes into cfg.json's metadata.
    """
    from sae_lens.saes.sae import TrainingSAE

    final = Path(path)
    sae.to("cpu")  # cfg.json records the device; a loaded SAE should not ask for a GPU
    previous = sae.cfg.normalize_activations
    if normalisation is not None:
        sae.cfg.normalize_activations = normalisation
    for key, value in (metadata or {}).items():
        sae.cfg.metadata[key] = _json_safe(value)
    try:
        with atomic_path(final) as tmp:
            if isinstance(sae, TrainingSAE):
                sae.save_inference_model(tmp)
            else:
                sae.save_model(tmp)
    finally:
        # The SAE object's own forward pass is unchanged by a config edit; keep its cfg honest.
        sae.cfg.normalize_activations = previous
    return final


def load_sae(path: str | os.PathLike, device: Any = "cpu") -> Any:
    """An inference SAE from a sae-lens directory, in eval mode."""
    from sae_lens import SAE

    directory = Path(path)
    missing = [name for name in SAE_FILES if not (directory / name).is_file()]
    if missing:
        raise DataError(
            f"SAE directory {directory} lacks {', '.join(missing)}; expected a sae-lens "
            "directory (cfg.json + sae_weights.safetensors)"
        )
    try:
        sae = SAE.load_from_disk(str(directory), device=str(device))
    except Exception as exc:
        raise DataError(
            f"SAE directory {directory} cannot be loaded by sae-lens ({type(exc).__name__}: {exc})"
        ) from None
    return sae.eval()
