"""What a trained crosscoder says: latent classes, latent scaling, FVU, dead latents, examples.

Classes (diffing-toolkit's cuts) compare each round with the base through the decoder norms:
r = ((|d_base| - |d_round|) / max(|d_base|, |d_round|) + 1) / 2 is 0 for a latent that only
decodes into the round and 1 for one that only decodes into the base; round-only r < cut,
base-only r > 1 - cut, shared |r - 0.5| <= width, otherwise mixed.

Latent scaling (Minder et al. 2025) asks whether an exclusive latent's direction is really absent
from the other model. For latent j with direction d (its decoder in the model it is exclusive
to), the closed-form beta = d . sum_t f_j(t) y(t) / (|d|^2 sum_t f_j(t)^2) is fitted on the
held-out tokens against each model's error with the latent's own contribution added back
(y = x - x_hat + f_j d_j^m) and reconstruction without it (y = x_hat - f_j d_j^m - mean); the two
sum to the centred activation. nu_error = beta_error(other) / beta(own) and nu_reconstruction =
beta_reconstruction(other) / beta(own), with beta(own) the fit to the own model's centred
activation: a genuine round-only latent has both near 0; complete shrinkage (the base carries
the direction in its error) shows as a large nu_error, latent decoupling (other latents carry it
in the base) as a large nu_reconstruction. A latent whose nu_error + nu_reconstruction >= nu_max
is flagged as an artifact.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from plmdiff.model_diff.crosscoder import BatchTopKCrosscoder
from plmdiff.model_diff.paired import PairedRows

ROUND_ONLY, BASE_ONLY, SHARED, MIXED = "round_only", "base_only", "shared", "mixed"
CLASSES = (SHARED, ROUND_ONLY, BASE_ONLY, MIXED)


def norm_ratio(base_norm: np.ndarray, round_norm: np.ndarray) -> np.ndarray:
    """diffing-toolkit's dec_norm_diff: 0 round-only .. 0.5 shared .. 1 base-only."""
    top = np.maximum(np.maximum(base_norm, round_norm), 1e-12)
    return ((base_norm - round_norm) / top + 1) / 2


def classify(ratio: np.ndarray, exclusive_cut: float, shared_width: float) -> np.ndarray:
    out = np.full(ratio.shape, MIXED, dtype=object)
    out[np.abs(ratio - 0.5) <= shared_width] = SHARED
    out[ratio < exclusive_cut] = ROUND_ONLY
    out[ratio > 1 - exclusive_cut] = BASE_ONLY
    return out


@dataclass
class Evaluation:
    """Sums over the held-out tokens from which every per-latent statistic is computed."""

    n_tokens: int
    fvu: np.ndarray  # [M]
    fires: np.ndarray  # [F] held-out tokens where the latent fires
    act_sum: np.ndarray  # [F] sum of its activations
    f2: np.ndarray  # [F] sum f^2
    beta_error: (
        np.ndarray
    )  # [M (target), M (direction), F]; filled for target 0 or == direction, or direction 0
    beta_recon: np.ndarray  # [M, M, F]
    top_values: np.ndarray  # [F, n_top] highest activations (0 padding)
    top_rows: np.ndarray  # [F, n_top] their held-out row index (-1 padding)
    seq_id: np.ndarray  # [rows] of the held-out rows
    pos: np.ndarray  # [rows]

    @property
    def dead_fraction(self) -> float:
        return float((self.fires == 0).mean())


@torch.no_grad()
def evaluate(
    model: BatchTopKCrosscoder,
    rows: Iterable[PairedRows],
    *,
    n_top: int,
    device: str | torch.device = "cpu",
    batch_rows: int = 1024,
) -> Evaluation:
    """One pass over held-out paired rows: FVU per model, firing counts, the sums of latent
    scaling for every (target model, direction model, latent), top activations per latent."""
    M, F = model.n_models, model.d_dict
    dirs = model.W_dec.detach()  # [F, M, d]
    cross = torch.einsum("fmd,fod->mof", dirs, dirs)  # d_j^m . d_j^o
    sq_norm = dirs.pow(2).sum(-1).T  # [M, F]
    err = torch.zeros(M, dtype=torch.float64, device=device)
    sx = torch.zeros(M, model.d_model, dtype=torch.float64, device=device)
    sxx = torch.zeros(M, dtype=torch.float64, device=device)
    fires = torch.zeros(F, dtype=torch.float64, device=device)
    act_sum = torch.zeros(F, dtype=torch.float64, device=device)
    f2 = torch.zeros(F, dtype=torch.float64, device=device)
    e_sum = torch.zeros(M, M, F, dtype=torch.float64, device=device)
    r_sum = torch.zeros(M, M, F, dtype=torch.float64, device=device)
    top_v = torch.zeros(F, n_top, device=device)
    top_i = torch.full((F, n_top), -1, dtype=torch.long, device=device)
    ids: list[np.ndarray] = []
    poss: list[np.ndarray] = []
    offset = 0
    for chunk in rows:
        ids.append(chunk.seq_id)
        poss.append(chunk.pos)
        acts = torch.from_numpy(chunk.act)
        for start in range(0, len(acts), batch_rows):
            x = model.normalise(acts[start : start + batch_rows].to(device).float())
            f = model.encode(x)
            x_hat = model.decode(f)
            e = x - x_hat
            err += e.pow(2).sum((0, 2)).double()
            sx += x.sum(0).double()
            sxx += x.pow(2).sum((0, 2)).double()
            fires += (f > 0).sum(0).double()
            act_sum += f.sum(0).double()
            ff = f.pow(2).sum(0)
            f2 += ff.double()
            centred = x_hat - model.mean
            for o in range(M):
                # Latent scaling reads direction o against the base and o itself (a round's
                # exclusive latents) or against every model (the base's): 3M pairs, not M^2.
                targets = list(range(M)) if o == 0 else [0, o]
                d_o = dirs[:, o, :]  # [F, d]
                proj_e = torch.einsum("bmd,fd->mbf", e[:, targets], d_o)
                proj_r = torch.einsum("bmd,fd->mbf", centred[:, targets], d_o)
                e_sum[targets, o] += (f.unsqueeze(0) * proj_e).sum(1).double()
                r_sum[targets, o] += (f.unsqueeze(0) * proj_r).sum(1).double()
            # The latent's own contribution moves from the reconstruction to the error.
            own = (ff.unsqueeze(0).unsqueeze(0) * cross).double()
            e_sum += own
            r_sum -= own
            # Top activations per latent, merged with the best so far.
            k_here = min(n_top, len(f))
            values, idx = f.topk(k_here, dim=0)  # [k, F]
            cand_v = torch.cat([top_v, values.T], dim=1)
            cand_i = torch.cat([top_i, (idx + offset + start).T], dim=1)
            best = cand_v.topk(n_top, dim=1).indices
            top_v = cand_v.gather(1, best)
            top_i = cand_i.gather(1, best)
        offset += len(acts)
    n = offset
    var = sxx - sx.pow(2).sum(-1) / max(n, 1)
    fvu = (err / var.clamp(min=1e-12)).cpu().numpy() if n else np.full(M, np.nan)
    denom = (sq_norm.double().unsqueeze(0) * f2.unsqueeze(0).unsqueeze(0)).clamp(min=1e-12)
    top_i = torch.where(top_v > 0, top_i, torch.full_like(top_i, -1))
    return Evaluation(
        n_tokens=n,
        fvu=fvu,
        fires=fires.cpu().numpy(),
        act_sum=act_sum.cpu().numpy(),
        f2=f2.cpu().numpy(),
        beta_error=(e_sum / denom).cpu().numpy(),
        beta_recon=(r_sum / denom).cpu().numpy(),
        top_values=top_v.cpu().numpy(),
        top_rows=top_i.cpu().numpy(),
        seq_id=np.concatenate(ids) if ids else np.array([], dtype=str),
        pos=np.concatenate(poss) if poss else np.array([], dtype=np.int64),
    )


def latent_table(
    model: BatchTopKCrosscoder,
    evaluation: Evaluation,
    models: Sequence[str],
    *,
    exclusive_cut: float,
    shared_width: float,
    nu_max: float,
    min_firings: int,
) -> pd.DataFrame:
    """One row per (round, latent): decoder norms, ratio, class, firing, latent scaling.

    beta and nu are filled for exclusive latents (round-only or base-only) with at least
    `min_firings` held-out firings; `artifact` is True where nu_error + nu_reconstruction
    reaches nu_max."""
    norms = model.decoder_norms().detach().cpu().numpy()  # [F, M]
    dirs = model.W_dec.detach().cpu()
    frames = []
    for r in range(1, len(models)):
        ratio = norm_ratio(norms[:, 0], norms[:, r])
        cls = classify(ratio, exclusive_cut, shared_width)
        cosine = torch.nn.functional.cosine_similarity(dirs[:, 0], dirs[:, r], dim=-1).numpy()
        own = np.where(cls == BASE_ONLY, 0, r)
        other = np.where(cls == BASE_ONLY, r, 0)
        j = np.arange(len(ratio))
        beta_err_other = evaluation.beta_error[other, own, j]
        beta_rec_other = evaluation.beta_recon[other, own, j]
        beta_own = evaluation.beta_error[own, own, j] + evaluation.beta_recon[own, own, j]
        scored = np.isin(cls, (ROUND_ONLY, BASE_ONLY)) & (evaluation.fires >= min_firings)
        safe = np.where(np.abs(beta_own) > 1e-12, beta_own, np.nan)
        nu_err = np.where(scored, beta_err_other / safe, np.nan)
        nu_rec = np.where(scored, beta_rec_other / safe, np.nan)
        frames.append(
            pd.DataFrame(
                {
                    "model": models[r],
                    "latent": j,
                    "norm_base": norms[:, 0],
                    "norm_round": norms[:, r],
                    "norm_ratio": ratio,
                    "decoder_cosine": cosine,
                    "class": cls,
                    "fires": evaluation.fires.astype(np.int64),
                    "fire_rate": evaluation.fires / max(evaluation.n_tokens, 1),
                    "mean_act": evaluation.act_sum / np.maximum(evaluation.fires, 1),
                    "beta_own": np.where(scored, beta_own, np.nan),
                    "beta_error_other": np.where(scored, beta_err_other, np.nan),
                    "beta_recon_other": np.where(scored, beta_rec_other, np.nan),
                    "nu_error": nu_err,
                    "nu_reconstruction": nu_rec,
                    "artifact": scored & ~(nu_err + nu_rec < nu_max),
                }
            )
        )
    return pd.concat(frames, ignore_index=True)


def class_counts(latents: pd.DataFrame) -> pd.DataFrame:
    """Per round: latents per class, dead latents, scored and flagged exclusive latents."""
    rows = []
    for model, group in latents.groupby("model", sort=False):
        alive = group["fires"] > 0
        row: dict[str, object] = {"model": model, "latents": len(group)}
        for c in CLASSES:
            row[c] = int(((group["class"] == c) & alive).sum())
        row["dead"] = int((~alive).sum())
        exclusive = group["class"].isin((ROUND_ONLY, BASE_ONLY))
        row["scored"] = int((exclusive & group["nu_error"].notna()).sum())
        row["round_only_artifacts"] = int(
            (group["artifact"] & (group["class"] == ROUND_ONLY)).sum()
        )
        row["round_only_genuine"] = int(
            ((group["class"] == ROUND_ONLY) & group["nu_error"].notna() & ~group["artifact"]).sum()
        )
        rows.append(row)
    return pd.DataFrame(rows)


def top_round_only(latents: pd.DataFrame, n: int) -> pd.DataFrame:
    """Per round, the n round-only latents that survive latent scaling with the most held-out
    activation mass (fires x mean activation)."""
    keep = latents[
        (latents["class"] == ROUND_ONLY) & latents["nu_error"].notna() & ~latents["artifact"]
    ].copy()
    keep["mass"] = keep["fires"] * keep["mean_act"]
    keep = keep.sort_values(["model", "mass"], ascending=[True, False], kind="stable")
    return keep.groupby("model", sort=False).head(n).reset_index(drop=True)


def latent_examples(
    top: pd.DataFrame,
    evaluation: Evaluation,
    sequences: dict[str, str],
    *,
    n_examples: int,
    window: int = 7,
) -> pd.DataFrame:
    """The highest-activating held-out tokens of each listed latent, with the residues around."""
    rows = []
    for rec in top.itertuples(index=False):
        latent = int(rec.latent)
        for rank, (value, row) in enumerate(
            zip(evaluation.top_values[latent], evaluation.top_rows[latent], strict=True)
        ):
            if row < 0 or rank >= n_examples:
                continue
            seq_id = str(evaluation.seq_id[row])
            pos = int(evaluation.pos[row])
            seq = sequences.get(seq_id, "")
            left, right = seq[max(0, pos - window) : pos], seq[pos + 1 : pos + 1 + window]
            rows.append(
                {
                    "model": rec.model,
                    "latent": latent,
                    "rank": rank + 1,
                    "activation": float(value),
                    "seq_id": seq_id,
                    "pos": pos,
                    "context": f"{left}[{seq[pos : pos + 1]}]{right}",
                }
            )
    columns = ["model", "latent", "rank", "activation", "seq_id", "pos", "context"]
    return pd.DataFrame(rows, columns=columns)


@torch.no_grad()
def position_enrichment(
    model: BatchTopKCrosscoder,
    rows: Iterable[PairedRows],
    latents: Sequence[int],
    marked: set[tuple[str, int]],
    *,
    device: str | torch.device = "cpu",
) -> pd.DataFrame:
    """For each latent: the share of marked tokens (seq_id, pos) it fires on (`recall`), its
    firing rate on marked and on other tokens, and their ratio (`enrichment`). The scoring hook
    of planted-motif studies: marked = the motif's positions."""
    idx = torch.as_tensor(list(latents), dtype=torch.long, device=device)
    on = torch.zeros(len(idx), dtype=torch.float64, device=device)
    off = torch.zeros(len(idx), dtype=torch.float64, device=device)
    n_on = n_off = 0
    for chunk in rows:
        mark = np.array(
            [(s, int(p)) in marked for s, p in zip(chunk.seq_id, chunk.pos, strict=True)]
        )
        x = model.normalise(torch.from_numpy(chunk.act).to(device).float())
        fires = (model.encode(x)[:, idx] > 0).double()
        m = torch.from_numpy(mark).to(device)
        on += fires[m].sum(0)
        off += fires[~m].sum(0)
        n_on += int(mark.sum())
        n_off += int((~mark).sum())
    rate_on = (on / max(n_on, 1)).cpu().numpy()
    rate_off = (off / max(n_off, 1)).cpu().numpy()
    return pd.DataFrame(
        {
            "latent": list(latents),
            "recall": rate_on,
            "rate_marked": rate_on,
            "rate_other": rate_off,
            "enrichment": rate_on / np.maximum(rate_off, 1e-12),
        }
    )
