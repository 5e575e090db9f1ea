"""How good an SAE is: reconstruction, sparsity, and the LM loss with the SAE spliced in.

Reconstruction metrics are computed in the raw activation space (what gets spliced back into the
model), over a stream of token batches, in one pass with float64 accumulators:
- MSE: mean squared error per element;
- FVU: fraction of variance unexplained, sum ||x - x_hat||^2 / sum ||x - mean(x)||^2;
- L0: mean number of active features per token;
- dead fraction: features that never fire on the evaluated tokens;
- dense fraction: features firing on more than `dense_threshold` of the tokens.

CE loss recovered compares the model's next-token loss with the residual stream at the SAE's
layer replaced, at residue positions only, by the SAE's reconstruction (spliced) against the
clean model and against replacing it by zeros (zero ablation):
(zero - spliced) / (zero - clean). 1 means the SAE loses nothing, 0 no better than zeros.
Layer l is the residual stream after l blocks, so the splice rewrites the input of block l (for
l = L, the input of the final LayerNorm). Predictions made at residue positions are scored: the
next residue, and `<end>` after the last one.
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import torch

from plmdiff.core.errors import DataError
from plmdiff.core.runtime import save_figure
from plmdiff.models.anatomy import decoder_anatomy
from plmdiff.models.text import EncodedSequence

log = logging.getLogger(__name__)


# ----------------------------------------------------------------------------- reconstruction


@dataclass(frozen=True)
class ReconstructionMetrics:
    n_tokens: int
    mse: float
    fvu: float
    l0: float
    dead_fraction: float
    dense_fraction: float
    feature_frequency: np.ndarray = field(repr=False)

    @property
    def explained_variance(self) -> float:
        return 1.0 - self.fvu

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        out.pop("feature_frequency")
        out["explained_variance"] = self.explained_variance
        return out


class _RunningVariance:
    """Per-dimension mean and sum of squared deviations, merged batch by batch (Chan et al.),
    so a large common offset (the residual stream has them) does not cancel catastrophically."""

    def __init__(self, d: int, device: Any) -> None:
        self.n = 0
        self.mean = torch.zeros(d, dtype=torch.float64, device=device)
        self.m2 = torch.zeros(d, dtype=torch.float64, device=device)

    def add(self, x: torch.Tensor) -> None:
        x = x.double()
        n_b = x.shape[0]
        if n_b == 0:
            return
        mean_b = x.mean(0)
        m2_b = (x - mean_b).pow(2).sum(0)
        total = self.n + n_b
        delta = mean_b - self.mean
        self.mean += delta * (n_b / total)
        self.m2 += m2_b + delta.pow(2) * (self.n * n_b / total)
        self.n = total

    @property
    def total_variance(self) -> float:
        return float(self.m2.sum().item())


class FitAccumulator:
    """FVU, L0 and dead fraction of an SAE on one token stream, batch by batch (the diff's
    per-model fit: a change in fit must not be read as a change in features)."""

    def __init__(self, d_sae: int, device: Any) -> None:
        self.fired = torch.zeros(d_sae, dtype=torch.int64, device=device)
        self.err = torch.zeros((), dtype=torch.float64, device=device)
        self.active = 0
        self.variance: _RunningVariance | None = None
        self.n = 0
        self.device = device

    @torch.no_grad()
    def add(self, x: torch.Tensor, acts: torch.Tensor, recon: torch.Tensor) -> None:
        """Raw inputs [n, d_in], their codes [n, d_sae] and reconstructions [n, d_in]."""
        if x.shape[0] == 0:
            return
        if self.variance is None:
            self.variance = _RunningVariance(x.shape[1], self.device)
        self.err += (recon.double() - x.double()).pow(2).sum()
        nonzero = acts != 0
        self.active += int(nonzero.sum().item())
        self.fired += nonzero.sum(0)
        self.variance.add(x)
        self.n += x.shape[0]

    def to_json(self) -> dict[str, Any]:
        if self.n == 0 or self.variance is None:
            raise DataError("no token activations to measure the SAE's fit on")
        total = self.variance.total_variance
        return {
            "n_tokens": self.n,
            "fvu": float(self.err.item()) / total if total > 0 else math.nan,
            "l0": self.active / self.n,
            "dead_fraction": float((self.fired == 0).double().mean().item()),
        }


@torch.no_grad()
def reconstruction_metrics(
    sae: Any,
    batches: Iterable[torch.Tensor],
    *,
    dense_threshold: float,
    max_tokens: int | None = None,
    device: Any = None,
) -> ReconstructionMetrics:
    """Metrics of `sae` (an inference SAE, which normalises its own input) on raw activations."""
    device = device if device is not None else sae.W_dec.device
    d_sae = sae.cfg.d_sae
    fired = torch.zeros(d_sae, dtype=torch.float64, device=device)
    err = torch.zeros((), dtype=torch.float64, device=device)
    active = torch.zeros((), dtype=torch.float64, device=device)
    variance: _RunningVariance | None = None
    n = 0
    for batch in batches:
        x = batch.to(device=device, dtype=torch.float32)
        if max_tokens is not None:
            x = x[: max(0, max_tokens - n)]
        if x.shape[0] == 0:
            break
        if variance is None:
            variance = _RunningVariance(x.shape[1], device)
        acts = sae.encode(x)
        recon = sae.decode(acts)
        err += (recon - x).double().pow(2).sum()
        nonzero = acts != 0
        active += nonzero.sum(dtype=torch.float64)
        fired += nonzero.sum(0, dtype=torch.float64)
        variance.add(x)
        n += x.shape[0]
        if max_tokens is not None and n >= max_tokens:
            break
    if n == 0 or variance is None:
        raise DataError("no token activations to evaluate the SAE on")
    d_in = variance.mean.shape[0]
    total_var = variance.total_variance
    frequency = (fired / n).cpu().numpy()
    return ReconstructionMetrics(
        n_tokens=n,
        mse=float(err.item()) / (n * d_in),
        fvu=float(err.item()) / total_var if total_var > 0 else math.nan,
        l0=float(active.item()) / n,
        dead_fraction=float((frequency == 0).mean()),
        dense_fraction=float((frequency > dense_threshold).mean()),
        feature_frequency=frequency,
    )


# ----------------------------------------------------------------------------- LM loss


def ce_loss_recovered(clean: float, spliced: float, zero_ablated: float) -> float:
    """(zero - spliced) / (zero - clean); nan when zero ablation does not hurt the model."""
    gap = zero_ablated - clean
    if not math.isfinite(gap) or gap <= 0:
        return math.nan
    return (zero_ablated - spliced) / gap


@dataclass(frozen=True)
class SplicedLoss:
    """Mean next-token loss (nats) over the scored predictions, three ways."""

    n_sequences: int
    n_predictions: int
    clean: float
    spliced: float
    zero_ablated: float

    @property
    def recovered(self) -> float:
        return ce_loss_recovered(self.clean, self.spliced, self.zero_ablated)

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "recovered": self.recovered}

    @staticmethod
    def pool(parts: Sequence[SplicedLoss]) -> SplicedLoss:
        """Prediction-weighted mean of several evaluations (e.g. one per embedder checkpoint)."""
        n = sum(p.n_predictions for p in parts)
        if n == 0:
            raise DataError("no predictions to pool")

        def mean(name: str) -> float:
            return sum(getattr(p, name) * p.n_predictions for p in parts) / n

        return SplicedLoss(
            n_sequences=sum(p.n_sequences for p in parts),
            n_predictions=n,
            clean=mean("clean"),
            spliced=mean("spliced"),
            zero_ablated=mean("zero_ablated"),
        )


@contextlib.contextmanager
def _replace_stream(module: Any, replace: Any) -> Iterator[None]:
    """Rewrite the first input (the residual stream) of `module` with replace(hidden)."""

    def hook(_module: Any, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
        if args:
            return (replace(args[0]), *args[1:]), kwargs
        return args, {**kwargs, "hidden_states": replace(kwargs["hidden_states"])}

    handle = module.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        yield
    finally:
        handle.remove()


def _pad_batch(
    encoded: Sequence[EncodedSequence], pad_id: int, device: Any
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """ids, attention mask, residue mask (positions spliced) and scored mask (residue positions
    that have a next token), all [batch, max_len]; right padding keeps GPT-2's positions."""
    width = max(len(e.ids) for e in encoded)
    ids = torch.full((len(encoded), width), pad_id, dtype=torch.long)
    attention = torch.zeros((len(encoded), width), dtype=torch.long)
    residues = torch.zeros((len(encoded), width), dtype=torch.bool)
    scored = torch.zeros((len(encoded), width), dtype=torch.bool)
    for row, e in enumerate(encoded):
        ids[row, : len(e.ids)] = torch.tensor(e.ids)
        attention[row, : len(e.ids)] = 1
        # The SAE saw the residue-bearing tokens only (the token table's rows).
        residues[row, e.start : e.stop] = torch.from_numpy(e.spans[:, 1] > e.spans[:, 0])
        scored[row, e.start : min(e.stop, len(e.ids) - 1)] = True
    return ids.to(device), attention.to(device), residues.to(device), scored.to(device)


def _scored_nll(logits: torch.Tensor, ids: torch.Tensor, scored: torch.Tensor) -> torch.Tensor:
    """Sum of -log p(next token) over the scored positions (float64)."""
    logp = torch.log_softmax(logits[:, :-1].float(), dim=-1)
    target = ids[:, 1:]
    nll = -logp.gather(-1, target.unsqueeze(-1)).squeeze(-1)
    return nll[scored[:, :-1]].double().sum()


def _batch_nll(
    model: Any,
    sae: Any,
    module: Any,
    ids: torch.Tensor,
    attention: torch.Tensor,
    residues: torch.Tensor,
    scored: torch.Tensor,
) -> np.ndarray:
    """Summed NLL of one padded batch: clean, SAE spliced in, zeros spliced in."""

    def run(replace: Any = None) -> float:
        context = _replace_stream(module, replace) if replace else contextlib.nullcontext()
        with context:
            logits = model(input_ids=ids, attention_mask=attention).logits
        return float(_scored_nll(logits, ids, scored).item())

    def with_sae(hidden: torch.Tensor) -> torch.Tensor:
        out = hidden.clone()
        out[residues] = sae.decode(sae.encode(hidden[residues].float())).to(hidden.dtype)
        return out

    def with_zeros(hidden: torch.Tensor) -> torch.Tensor:
        return hidden.masked_fill(residues.unsqueeze(-1), 0.0)

    return np.array([run(), run(with_sae), run(with_zeros)])


@torch.no_grad()
def spliced_lm_loss(
    model: Any,
    sae: Any,
    encoded: Sequence[EncodedSequence],
    *,
    layer: int,
    pad_id: int,
    batch_size: int = 8,
) -> SplicedLoss:
    """Next-token loss of `model` on `encoded` sequences: clean, with the SAE's reconstruction
    spliced into residual-stream layer `layer` at residue positions, and with zeros there."""
    if not encoded:
        raise DataError("no sequences to compute the spliced LM loss on")
    device = next(model.parameters()).device
    module = decoder_anatomy(model).stream_module(layer)
    totals = np.zeros(3)
    n_predictions = 0
    for start in range(0, len(encoded), batch_size):
        ids, attention, residues, scored = _pad_batch(
            encoded[start : start + batch_size], pad_id, device
        )
        totals += _batch_nll(model, sae, module, ids, attention, residues, scored)
        n_predictions += int(scored[:, :-1].sum().item())
    if n_predictions == 0:
        raise DataError("the evaluation sequences have no residue predictions to score")
    return SplicedLoss(
        n_sequences=len(encoded),
        n_predictions=n_predictions,
        clean=float(totals[0]) / n_predictions,
        spliced=float(totals[1]) / n_predictions,
        zero_ablated=float(totals[2]) / n_predictions,
    )


# ----------------------------------------------------------------------------- curves figure


CURVE_PANELS = (
    ("loss", "training loss", True),
    ("l0", "L0 (active features / token)", False),
    ("dead_fraction", "dead feature fraction", False),
)


def plot_training_curves(curves: pd.DataFrame, path: Any, title: str) -> None:
    """Loss, L0 and dead fraction against training tokens, one panel each (PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(CURVE_PANELS), figsize=(11, 3.2), constrained_layout=True)
    for ax, (column, label, log_scale) in zip(axes, CURVE_PANELS, strict=True):
        if len(curves) and column in curves:
            main = {"loss": "total", "l0": "training (batch top-k)"}.get(column)
            ax.plot(curves["tokens"], curves[column], color="tab:blue", lw=1.5, label=main)
            extra = {"loss": ("mse_loss", "MSE"), "l0": ("l0_inference", "saved SAE (threshold)")}
            if column in extra and extra[column][0] in curves:
                name, label_extra = extra[column]
                ax.plot(curves["tokens"], curves[name], color="tab:orange", lw=1, label=label_extra)
                ax.legend(frameon=False)
            if log_scale and (curves[column] > 0).all():
                ax.set_yscale("log")
        else:
            ax.text(0.5, 0.5, "no training\n(imported SAE)", ha="center", va="center")
            ax.set_xticks([])
        ax.grid(alpha=0.3)
        ax.spines[["top", "right"]].set_visible(False)
        ax.set_xlabel("training tokens")
        ax.set_ylabel(label)
    fig.suptitle(title)
    save_figure(fig, path, dpi=120)
