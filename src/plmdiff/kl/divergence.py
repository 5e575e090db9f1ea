"""How far each model moved from the base: per-token KL(model || base) on the same sequences.

Both models score the same scoring texts (`plmdiff.models.text.encode_sequences`) in the same
batches; at every position that predicts a residue or `<end>`, KL(P_model || P_base) is summed
over the whole vocabulary. Each model is scored on two sequence sets: its own samples and the
base's, `kl.max_sequences` of each, chosen by a hash of the sequence ID (deterministic,
independent of file order). The base against itself gives exactly 0, which the rule checks.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from plmdiff.core.errors import DataError
from plmdiff.core.fasta import SequenceEntry
from plmdiff.core.oom import map_with_oom_split
from plmdiff.core.stats import cluster_bootstrap_mean_ci
from plmdiff.kl.settings import KLConfig
from plmdiff.models.anatomy import ConfigShape
from plmdiff.models.checkpoints import load_model, load_tokenizer, tokenizer_fingerprint
from plmdiff.models.text import encode_sequences

log = logging.getLogger(__name__)

OWN, BASE_SET = "own", "base"
PERCENTILES = (5, 25, 50, 75, 95)
BOOTSTRAP_RESAMPLES = 1000


def select_sequences(entries: Sequence[SequenceEntry], n: int) -> list[SequenceEntry]:
    """Up to n entries, the same ones whatever the file order: smallest SHA-256 of the seq_id."""

    def key(e: SequenceEntry) -> str:
        return hashlib.sha256(e.seq_id.encode()).hexdigest()

    return sorted(entries, key=key)[:n]


def token_kl(logits_p: Any, logits_q: Any) -> Any:
    """KL(P || Q) over the last dimension, from logits, in float32 (0 where P == Q exactly)."""
    import torch

    logp = torch.log_softmax(logits_p.float(), dim=-1)
    logq = torch.log_softmax(logits_q.float(), dim=-1)
    return (logp.exp() * (logp - logq)).sum(-1).clamp(min=0.0)


def _batches(lengths: Sequence[int], batch_tokens: int) -> Iterator[list[int]]:
    """Indices grouped longest first so that padded batches stay within the token budget."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    batch: list[int] = []
    for i in order:
        width = lengths[batch[0]] if batch else lengths[i]
        if batch and width * (len(batch) + 1) > batch_tokens:
            yield batch
            batch = []
        batch.append(i)
    if batch:
        yield batch


def sequence_kl(
    model: Any,
    base: Any,
    encoded: Sequence[Any],
    *,
    pad_id: int,
    batch_tokens: int,
    device: Any,
    predict_end: bool,
) -> list[np.ndarray]:
    """Per sequence, KL(model || base) at each position predicting a residue (and `<end>`).

    `encoded` are `plmdiff.models.text.EncodedSequence`; position t's logits predict token t + 1,
    so the residues start..stop-1 are predicted at start-1..stop-2 and `<end>` (token `stop`) at
    stop-1.
    """
    import torch

    # Inputs stop before `<end>`: the last logits needed (at stop - 1) predict it, and the
    # scoring text's trailing tokens would push a full-length sample past the context.
    lengths = [e.stop for e in encoded]
    limit = ConfigShape.of(model.config).n_positions
    too_long = [i for i, n in enumerate(lengths) if n > limit]
    if too_long:
        raise DataError(
            f"{len(too_long)} sequence(s) need {lengths[too_long[0]]} positions, more than the "
            f"model's context of {limit}; shorten them with filter.max_length"
        )
    out: list[np.ndarray | None] = [None] * len(encoded)

    def run(batch: Sequence[int]) -> list[tuple[int, np.ndarray]]:
        width = max(lengths[i] for i in batch)
        ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        for row, i in enumerate(batch):
            ids[row, : lengths[i]] = torch.tensor(encoded[i].ids[: lengths[i]])
            mask[row, : lengths[i]] = 1
        ids, mask = ids.to(device), mask.to(device)
        with torch.inference_mode():
            logits = model(input_ids=ids, attention_mask=mask).logits
            # The base against itself: one forward pass, so the KL is 0 by construction.
            ref = logits if base is model else base(input_ids=ids, attention_mask=mask).logits
            kl = token_kl(logits, ref).cpu()
        results = []
        for row, i in enumerate(batch):
            e = encoded[i]
            stop = e.stop if predict_end else e.stop - 1
            results.append((i, kl[row, e.start - 1 : stop].numpy().astype(np.float64)))
        return results

    for results in map_with_oom_split(_batches(lengths, batch_tokens), run, what="KL batch"):
        for i, values in results:
            out[i] = values
    return [v for v in out if v is not None]


def kl_frame(
    entries: Sequence[SequenceEntry], values: Sequence[np.ndarray], *, model: str, sequence_set: str
) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "model": model,
            "set": sequence_set,
            "seq_id": [e.seq_id for e in entries],
            "source_model": [e.model or "" for e in entries],
            "length": [len(e.sequence) for e in entries],
            "n_positions": [len(v) for v in values],
            "kl_mean": [float(v.mean()) if len(v) else np.nan for v in values],
            "kl_sum": [float(v.sum()) for v in values],
            "kl_max": [float(v.max()) if len(v) else np.nan for v in values],
            "kl_per_position": [v.astype(np.float32) for v in values],
            "sequence": [e.sequence for e in entries],
        }
    )


def check_same_tokenizer(
    tokenizer: Any, base_tokenizer: Any, model_dir: str | os.PathLike, base_dir: str | os.PathLike
) -> None:
    """Per-token KL compares two distributions over the same next token: both models must
    split a sequence into the same tokens, so vocabulary and merges must agree."""
    if tokenizer_fingerprint(tokenizer) != tokenizer_fingerprint(base_tokenizer):
        raise DataError(
            f"the tokenizers of {model_dir} and of the base model {base_dir} differ (vocabulary, "
            "merges or pre-tokenization); per-token KL needs every model of a study to share the "
            "base model's tokenizer (save every round with the base's tokenizer files)"
        )


def score_model(
    model_dir: str | os.PathLike,
    base_dir: str | os.PathLike,
    sets: Mapping[str, Sequence[SequenceEntry]],
    *,
    model_name: str,
    fmt: Any,
    special: Any,
    cfg: KLConfig,
    device: Any,
    allow_pickle: bool = False,
) -> pd.DataFrame:
    """Per-sequence KL(model || base) on every named sequence set."""
    tokenizer = load_tokenizer(model_dir)
    check_same_tokenizer(tokenizer, load_tokenizer(base_dir), model_dir, base_dir)
    model = load_model(model_dir, allow_pickle=allow_pickle, device=device)
    base = (
        model
        if Path(model_dir).resolve() == Path(base_dir).resolve()
        else load_model(base_dir, allow_pickle=allow_pickle, device=device)
    )
    frames = []
    for name, entries in sets.items():
        chosen = select_sequences(entries, cfg.max_sequences)
        if not chosen:
            raise DataError(f"no sequences in the '{name}' set of model '{model_name}'")
        encoded = encode_sequences(tokenizer, fmt, special, [e.sequence for e in chosen])
        values = sequence_kl(
            model,
            base,
            encoded,
            pad_id=special.pad,
            batch_tokens=cfg.batch_tokens,
            device=device,
            predict_end=fmt.format == "zymctrl",
        )
        log.info(
            "model %s, %s set: %d sequences, mean KL %.4g",
            model_name,
            name,
            len(chosen),
            float(np.mean([v.mean() for v in values])),
        )
        frames.append(kl_frame(chosen, values, model=model_name, sequence_set=name))
    return pd.concat(frames, ignore_index=True)


def check_self_kl(frame: pd.DataFrame, model: str) -> None:
    """The base model against itself must give exactly 0: the scoring pipeline is consistent."""
    worst = float(frame["kl_max"].max())
    if worst != 0.0:
        raise DataError(
            f"KL of the base model '{model}' against itself is {worst:.3g}, not 0: the two "
            "forward passes disagree (non-deterministic kernels?)"
        )


def top_sequences(frame: pd.DataFrame, n: int) -> pd.DataFrame:
    cols = ["model", "set", "seq_id", "length", "kl_mean", "kl_max", "sequence"]
    return frame.sort_values("kl_mean", ascending=False, kind="stable").head(n)[cols]


def summarise(
    frames: Sequence[pd.DataFrame],
    models: Sequence[str],
    cluster_of: Mapping[str, str] | None = None,
    n_boot: int = BOOTSTRAP_RESAMPLES,
    seed: int = 0,
) -> pd.DataFrame:
    """Per model and sequence set: mean, std and percentiles of the per-sequence mean KL, with a
    95% cluster-bootstrap interval of the mean (sequence clusters resampled whole, so
    near-duplicates do not narrow it; each sequence is its own cluster without a table)."""
    rows = []
    data = pd.concat(frames, ignore_index=True)
    for r, model in enumerate(models):
        for sequence_set in (OWN, BASE_SET):
            d = data[(data["model"] == model) & (data["set"] == sequence_set)]
            if d.empty:
                continue
            v = d["kl_mean"].to_numpy()
            groups = np.asarray(
                [cluster_of.get(s, s) for s in d["seq_id"]] if cluster_of else d["seq_id"]
            )
            low, high = cluster_bootstrap_mean_ci(v, groups, n_boot, seed)
            row = {
                "model": model,
                "round": r,
                "set": sequence_set,
                "n_sequences": len(d),
                "n_positions": int(d["n_positions"].sum()),
                "mean": float(v.mean()),
                "mean_ci_low": low,
                "mean_ci_high": high,
                "ci_unit": "sequence cluster" if cluster_of else "sequence",
                "std": float(v.std(ddof=1)) if len(v) > 1 else np.nan,
                **{f"p{p}": float(np.percentile(v, p)) for p in PERCENTILES},
                "max": float(v.max()),
                "token_mean": float(d["kl_sum"].sum() / max(1, d["n_positions"].sum())),
            }
            rows.append(row)
    return pd.DataFrame(rows)


def position_profile(frames: Sequence[pd.DataFrame], bins: int = 20) -> pd.DataFrame:
    """Mean KL by relative position in the sequence (0 = first residue, 1 = <end>)."""
    rows = []
    for frame in frames:
        for rec in frame.itertuples():
            v = np.asarray(rec.kl_per_position, dtype=float)
            if len(v) == 0:
                continue
            rel = np.minimum((np.arange(len(v)) / max(1, len(v) - 1) * bins).astype(int), bins - 1)
            sums = np.bincount(rel, weights=v, minlength=bins)
            counts = np.bincount(rel, minlength=bins)
            rows.append((rec.model, rec.set, sums, counts))
    out = []
    for (model, sequence_set), group in pd.DataFrame(
        rows, columns=["model", "set", "sums", "counts"]
    ).groupby(["model", "set"], sort=False):
        sums = np.sum(np.stack(group["sums"].to_list()), axis=0)
        counts = np.sum(np.stack(group["counts"].to_list()), axis=0)
        for b in range(bins):
            out.append(
                {
                    "model": model,
                    "set": sequence_set,
                    "position": (b + 0.5) / bins,
                    "kl": sums[b] / counts[b] if counts[b] else np.nan,
                }
            )
    return pd.DataFrame(out)
