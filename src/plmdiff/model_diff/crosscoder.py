"""BatchTopK crosscoders: one sparse dictionary read from, and decoded into, several models.

A crosscoder over M models encodes the paired activations x [batch, M, d] of one token with one
encoder, f = ReLU(sum_m x_m W_enc[m] + b_enc), and decodes every model separately,
x_hat_m = f W_dec[:, m] + b_dec[m]. Training keeps the batch's k x batch largest values of
f_j * sum_m |W_dec[j, m]| (BatchTopK, Bussmann et al. 2024; Minder et al. 2025 use it because
an L1 penalty creates "complete shrinkage" and "latent decoupling" artifacts) plus an aux-k
loss that reconstructs the residual from dead latents (weight aux_penalty). Inference uses a
global threshold on the same weighted value (a running mean of the smallest value BatchTopK
kept), so a token's code does not depend on its batch.

plmdiff trains one acausal crosscoder per layer over every model (the base and every round):
one dictionary for the whole trajectory, so a latent's decoder norms across rounds read as its
history, one job per layer instead of one per (layer, round), and with two models it is exactly
the (base, fine-tuned) crosscoder of Minder et al. Classes compare each round with the base.

With M = 1 the same module is a BatchTopK SAE; plmdiff.model_diff.diff_sae trains it on
h_round - h_base. Each model's activations are divided by their own scale (their RMS over the
first batches; per model as in Lindsey et al. 2024 and Minder et al. 2025): with one shared
scale a round whose activations grew (3.6x after the validation suite's fine-tuning) decodes
every latent with larger norms into the round, and the norm-ratio classes call nearly every
latent round-heavy. A change of norm is the profile's to show (||h_round - h_base||, raw).
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from plmdiff.core.errors import DataError
from plmdiff.core.runtime import atomic_path
from plmdiff.sae.training import DECAY_SHARE

log = logging.getLogger(__name__)

# Batches whose statistics set the input scale, the data mean and the decoder bias.
INIT_BATCHES = 8
# Momentum of the running inference threshold.
THRESHOLD_MOMENTUM = 0.99


class BatchTopKCrosscoder(nn.Module):
    """A BatchTopK crosscoder over `n_models` activation spaces of width `d_model`."""

    scale: torch.Tensor  # buffers: input scale per model [M], the data mean, inference threshold
    mean: torch.Tensor
    threshold: torch.Tensor

    def __init__(self, n_models: int, d_model: int, d_dict: int, k: int, *, seed: int = 0) -> None:
        super().__init__()
        if k > d_dict:
            raise DataError(f"crosscoder: k = {k} exceeds the dictionary size {d_dict}")
        gen = torch.Generator().manual_seed(seed)
        dec = torch.randn(d_dict, n_models, d_model, generator=gen)
        # Every latent starts with equal norms in every model (a ratio of 0.5, "shared"): the
        # classes then come from training, not from the initialisation.
        dec = dec / dec.norm(dim=-1, keepdim=True) * 0.1
        self.n_models, self.d_model, self.d_dict, self.k = n_models, d_model, d_dict, k
        self.W_dec = nn.Parameter(dec)
        self.W_enc = nn.Parameter(dec.permute(1, 2, 0).clone())  # [M, d, F]
        self.b_enc = nn.Parameter(torch.zeros(d_dict))
        self.b_dec = nn.Parameter(torch.zeros(n_models, d_model))
        self.register_buffer("scale", torch.ones(n_models))
        self.register_buffer("mean", torch.zeros(n_models, d_model))
        self.register_buffer("threshold", torch.full((), -1.0))

    # -------------------------------------------------------------- forward

    def normalise(self, x: torch.Tensor) -> torch.Tensor:
        """Raw x [B, M, d] divided by each model's scale."""
        return x / self.scale[:, None]

    def pre_acts(self, x: torch.Tensor) -> torch.Tensor:
        """ReLU(encoder) of normalised x [B, M, d] -> [B, F]."""
        return torch.relu(torch.einsum("bmd,mdf->bf", x, self.W_enc) + self.b_enc)

    def decoder_norms(self) -> torch.Tensor:
        """|W_dec[j, m]| -> [F, M]."""
        return self.W_dec.norm(dim=-1)

    def batch_topk(self, pre: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Training code: the k x batch largest weighted values of the batch; also the smallest
        kept weighted value (what the inference threshold tracks)."""
        weighted = pre * self.decoder_norms().sum(-1)
        n_keep = min(self.k * pre.shape[0], weighted.numel())
        values, idx = weighted.flatten().topk(n_keep, sorted=False)
        mask = torch.zeros_like(weighted).flatten()
        mask[idx] = 1.0
        kept = values[values > 0]
        floor = kept.min() if len(kept) else weighted.new_zeros(())
        return pre * mask.view_as(pre), floor

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Inference code of normalised x: weighted pre-activations above the threshold."""
        pre = self.pre_acts(x)
        weighted = pre * self.decoder_norms().sum(-1)
        return pre * (weighted > self.threshold.clamp(min=0)).to(pre.dtype)

    def decode(self, f: torch.Tensor) -> torch.Tensor:
        return torch.einsum("bf,fmd->bmd", f, self.W_dec) + self.b_dec

    # -------------------------------------------------------------- initialisation

    @torch.no_grad()
    def initialise(self, batches: list[torch.Tensor]) -> None:
        """Scale, data mean and decoder bias from the first batches (raw activations)."""
        x = torch.cat(batches).float()
        rms = x.pow(2).sum(-1).mean(0).sqrt() / math.sqrt(self.d_model)  # [M]
        self.scale.copy_(rms.clamp(min=1e-8))
        mean = self.normalise(x).mean(0)
        self.mean.copy_(mean)
        self.b_dec.copy_(mean)


@dataclass
class TrainingLog:
    """How a crosscoder's training went."""

    steps: int = 0
    tokens: int = 0
    seconds: float = 0.0
    curve: list[dict[str, float]] = field(default_factory=list)

    @property
    def tokens_per_second(self) -> float:
        return self.tokens / self.seconds if self.seconds else float("nan")


def _fvu(x: torch.Tensor, x_hat: torch.Tensor) -> torch.Tensor:
    """Fraction of variance unexplained per model of a batch [B, M, d] -> [M]."""
    err = (x - x_hat).pow(2).sum((0, 2))
    var = (x - x.mean(0)).pow(2).sum((0, 2)).clamp(min=1e-12)
    return err / var


def train_crosscoder(
    model: BatchTopKCrosscoder,
    batches: Iterator[torch.Tensor],
    *,
    tokens: int,
    lr: float,
    aux_penalty: float,
    dead_tokens: int,
    device: Any = "cpu",
    record_every: int = 50,
    prefetch: int = 4,
) -> TrainingLog:
    """Train on raw batches [B, M, d] (the first INIT_BATCHES also set scale and biases) for
    `tokens` tokens; Adam, linear decay of the learning rate over the last DECAY_SHARE (the
    SAEs' share).

    Batches are drawn in a background thread (`prefetch` ahead, sae-lens's PrefetchingIterator
    as plmdiff.sae.training.train), so reading Parquet overlaps the steps."""
    from sae_lens.training.prefetch import PrefetchingIterator

    source = batches
    prefetched = PrefetchingIterator(source, prefetch=prefetch)
    try:
        return _train(
            model,
            prefetched,
            tokens=tokens,
            lr=lr,
            aux_penalty=aux_penalty,
            dead_tokens=dead_tokens,
            device=device,
            record_every=record_every,
        )
    finally:
        prefetched.close()
        close = getattr(source, "close", None)
        if close is not None:  # a generator: runs its cleanup (the reader's own threads)
            close()


def _train(
    model: BatchTopKCrosscoder,
    batches: Iterator[torch.Tensor],
    *,
    tokens: int,
    lr: float,
    aux_penalty: float,
    dead_tokens: int,
    device: Any,
    record_every: int,
) -> TrainingLog:
    first = [b for _, b in zip(range(INIT_BATCHES), batches, strict=False)]
    if not first:
        raise DataError("crosscoder: no training batches")
    model.initialise(first)
    model.to(device)
    batch_size = len(first[0])
    steps = max(1, tokens // batch_size)
    opt = torch.optim.Adam(model.parameters(), lr=lr, betas=(0.9, 0.999))
    decay_from = int(steps * (1 - DECAY_SHARE))
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: 1.0 if s < decay_from else max(0.0, (steps - s) / max(1, steps - decay_from))
    )
    since_fired = torch.zeros(model.d_dict, device=device)
    aux_k = max(1, (model.n_models * model.d_model) // 2)
    log_ = TrainingLog()
    start = time.perf_counter()

    def stream() -> Iterator[torch.Tensor]:
        yield from first
        yield from batches

    for step, raw in zip(range(steps), stream(), strict=False):
        x = model.normalise(raw.to(device, non_blocking=True).float())
        pre = model.pre_acts(x)
        f, floor = model.batch_topk(pre)
        x_hat = model.decode(f)
        err = x - x_hat
        mse = err.pow(2).sum(-1).mean()
        variance = (x - x.mean(0)).pow(2).sum(-1).mean().clamp(min=1e-12)
        loss = mse / variance
        with torch.no_grad():
            fired = (f > 0).any(0)
            since_fired = torch.where(fired, torch.zeros_like(since_fired), since_fired + len(x))
            dead = since_fired >= dead_tokens
        if aux_penalty > 0 and bool(dead.any()):
            dead_pre = pre * dead.to(pre.dtype)
            k_aux = min(aux_k, int(dead.sum()))
            values, idx = dead_pre.topk(k_aux, dim=-1)
            aux_f = torch.zeros_like(pre).scatter(-1, idx, values)
            aux_hat = torch.einsum("bf,fmd->bmd", aux_f, model.W_dec)
            residual = err.detach()
            aux = (residual - aux_hat).pow(2).sum(-1).mean()
            norm = (residual - residual.mean(0)).pow(2).sum(-1).mean().clamp(min=1e-12)
            loss = loss + aux_penalty * aux / norm
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        with torch.no_grad():
            if model.threshold < 0:
                model.threshold.copy_(floor)
            else:
                model.threshold.mul_(THRESHOLD_MOMENTUM).add_((1 - THRESHOLD_MOMENTUM) * floor)
        log_.steps = step + 1
        log_.tokens += len(x)
        if step % record_every == 0 or step + 1 == steps:
            with torch.no_grad():
                fvu = _fvu(x, x_hat)
            log_.curve.append(
                {
                    "step": step + 1,
                    "tokens": log_.tokens,
                    "loss": float(loss.detach()),
                    "dead_fraction": float(dead.float().mean()),
                    **{f"fvu_{m}": float(v) for m, v in enumerate(fvu)},
                }
            )
    if device != "cpu" and torch.cuda.is_available():
        torch.cuda.synchronize()
    log_.seconds = time.perf_counter() - start
    if log_.steps < steps:
        log.warning("crosscoder: the data ended after %d of %d steps", log_.steps, steps)
    return log_


# ----------------------------------------------------------------------------- save and load


def save_crosscoder(model: BatchTopKCrosscoder, path: str | os.PathLike) -> None:
    from safetensors.torch import save_file

    tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    meta = {"n_models": str(model.n_models), "d_model": str(model.d_model)}
    meta |= {"d_dict": str(model.d_dict), "k": str(model.k)}
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=meta)


def load_crosscoder(path: str | os.PathLike, device: Any = "cpu") -> BatchTopKCrosscoder:
    from safetensors import safe_open
    from safetensors.torch import load_file

    with safe_open(str(path), framework="pt") as handle:
        meta = handle.metadata()
    model = BatchTopKCrosscoder(
        int(meta["n_models"]), int(meta["d_model"]), int(meta["d_dict"]), int(meta["k"])
    )
    model.load_state_dict(load_file(str(path)))
    return model.to(device)
