"""From raw samples to a length-filtered FASTA: the `filter_samples` rule's logic.

Every sampled sequence lands in exactly one bucket, checked in this order: truncated (never
emitted the stop token), invalid (a residue outside the 20 canonical amino acids), too short,
too long (the length window, bounds inclusive), duplicate (an exact copy of an earlier kept
sequence, in index order), kept. The counts therefore add up to the number sampled.

The length window combines absolute bounds with, optionally, quantiles of the BASE model's valid
(ended, canonical) samples, so every round is cut by the same yardstick.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from plmdiff.config.sections import from_section
from plmdiff.core.errors import DataError
from plmdiff.core.fasta import SequenceEntry
from plmdiff.models.text import is_canonical

log = logging.getLogger(__name__)

OUTCOMES = ("truncated", "invalid", "too_short", "too_long", "duplicate", "kept")
QUANTILES = (0.0, 0.05, 0.25, 0.5, 0.75, 0.95, 1.0)


def _quantile_pair(relative_to_base: Mapping[str, float] | None) -> tuple[float, float] | None:
    """filter.relative_to_base as (lower_quantile, upper_quantile); None when disabled."""
    if relative_to_base is None:
        return None
    return (
        float(relative_to_base["lower_quantile"]),
        float(relative_to_base["upper_quantile"]),
    )


@dataclass(frozen=True)
class FilterSettings:
    """The `filter` config section (defaults and ranges: config/schema.yaml; the cross-key
    checks min <= max and lower < upper quantile: plmdiff.config.schema.check_semantics)."""

    min_length: int | None
    max_length: int | None
    relative_to_base: tuple[float, float] | None  # (lower, upper) quantile of base lengths
    dedupe: bool
    min_sequences: int

    @classmethod
    def from_section(cls, filter_section: Mapping[str, Any]) -> FilterSettings:
        """From the validated `filter` section."""
        return from_section(
            cls, filter_section, "filter", convert={"relative_to_base": _quantile_pair}
        )


@dataclass(frozen=True)
class RawSample:
    """One row of a sample shard, as the filter needs it."""

    seq_id: str
    index: int
    sequence: str
    ended: bool
    ppl: float


@dataclass(frozen=True)
class LengthWindow:
    """Inclusive residue-length bounds; `low` is at least 1 (an empty sequence is too short)."""

    low: int
    high: int | None
    min_length: int | None = None
    max_length: int | None = None
    base_model: str | None = None
    lower_quantile: float | None = None
    upper_quantile: float | None = None
    base_lower: float | None = None
    base_upper: float | None = None

    def classify(self, length: int) -> str | None:
        if length < self.low:
            return "too_short"
        if self.high is not None and length > self.high:
            return "too_long"
        return None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def is_valid(sample: RawSample) -> bool:
    """Ended and made of canonical residues only (the sequences a length quantile may use)."""
    return sample.ended and is_canonical(sample.sequence)


def length_window(
    settings: FilterSettings,
    base_lengths: Sequence[int] | None = None,
    base_model: str | None = None,
) -> LengthWindow:
    """Absolute bounds intersected with the base-quantile window (when configured).

    A length L passes the quantile window when q_lower <= L <= q_upper (numpy's linear
    quantiles of the base lengths); for integer L that is ceil(q_lower) <= L <= floor(q_upper).
    """
    low = max(1, settings.min_length or 1)
    high = settings.max_length
    extra: dict[str, Any] = {}
    if settings.relative_to_base is not None:
        if base_lengths is None or len(base_lengths) == 0:
            raise DataError(
                f"filter.relative_to_base needs the base model's valid samples, but base model "
                f"'{base_model}' has none (every sample truncated or invalid); set "
                "filter.relative_to_base: null or fix the base model's sampling"
            )
        q_lo, q_hi = settings.relative_to_base
        base_lower, base_upper = (
            float(v) for v in np.quantile(np.asarray(base_lengths), [q_lo, q_hi])
        )
        low = max(low, math.ceil(base_lower))
        high = math.floor(base_upper) if high is None else min(high, math.floor(base_upper))
        extra = dict(
            base_model=base_model,
            lower_quantile=q_lo,
            upper_quantile=q_hi,
            base_lower=base_lower,
            base_upper=base_upper,
        )
    return LengthWindow(
        low=low,
        high=high,
        min_length=settings.min_length,
        max_length=settings.max_length,
        **extra,
    )


@dataclass
class FilterResult:
    """Kept samples (in index order) and the count of every outcome."""

    kept: list[RawSample]
    counts: dict[str, int] = field(default_factory=dict)

    @property
    def sampled(self) -> int:
        return sum(self.counts.values())

    @property
    def duplicate_fraction(self) -> float:
        """Share of in-window sequences that repeat an earlier one (nan when none were in window)."""
        in_window = self.counts["duplicate"] + self.counts["kept"]
        return self.counts["duplicate"] / in_window if in_window else math.nan


def classify_samples(
    samples: Iterable[RawSample], window: LengthWindow, dedupe: bool
) -> FilterResult:
    """Sort samples into OUTCOMES; duplicates keep the first occurrence by index."""
    counts = dict.fromkeys(OUTCOMES, 0)
    kept: list[RawSample] = []
    seen: set[str] = set()
    for sample in sorted(samples, key=lambda s: s.index):
        if not sample.ended:
            outcome = "truncated"
        elif sample.sequence and not is_canonical(sample.sequence):
            outcome = "invalid"
        else:
            out_of_window = window.classify(len(sample.sequence))
            if out_of_window is not None:
                outcome = out_of_window
            elif dedupe and sample.sequence in seen:
                outcome = "duplicate"
            else:
                outcome = "kept"
                seen.add(sample.sequence)
                kept.append(sample)
        counts[outcome] += 1
    return FilterResult(kept=kept, counts=counts)


def quantile_summary(values: Sequence[float], prefix: str) -> dict[str, float | None]:
    """Named quantiles (min, q05, q25, median, q75, q95, max) and the mean; None when empty."""
    names = ("min", "q05", "q25", "median", "q75", "q95", "max")
    arr = np.asarray([v for v in values if not math.isnan(v)], dtype=float)
    if arr.size == 0:
        return {f"{prefix}_{n}": None for n in (*names, "mean")}
    qs = np.quantile(arr, QUANTILES)
    out: dict[str, float | None] = {
        f"{prefix}_{n}": float(q) for n, q in zip(names, qs, strict=True)
    }
    out[f"{prefix}_mean"] = float(arr.mean())
    return out


def filter_stats(model: str, result: FilterResult, window: LengthWindow) -> dict[str, Any]:
    """The stats JSON of one model (what `sampling_summary` and the report read)."""
    return {
        "model": model,
        "counts": {"sampled": result.sampled, **result.counts},
        "duplicate_fraction": result.duplicate_fraction,
        "length": quantile_summary([len(s.sequence) for s in result.kept], "length"),
        "ppl": quantile_summary([s.ppl for s in result.kept], "ppl"),
        "window": window.to_json(),
    }


def fasta_entries(model: str, kept: Iterable[RawSample]) -> list[SequenceEntry]:
    """FASTA entries with the header fields model=, ppl=, len= (README.md, Sampling)."""
    return [
        SequenceEntry(
            s.seq_id,
            s.sequence,
            {"model": model, "ppl": f"{s.ppl:.4f}", "len": str(len(s.sequence))},
        )
        for s in kept
    ]


def check_enough(model: str, result: FilterResult, min_sequences: int) -> None:
    """Fail with one line naming the model and every count when too few sequences survive."""
    kept = result.counts["kept"]
    if kept >= min_sequences:
        return
    detail = ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in result.counts.items())
    hint = ""
    if result.sampled and result.counts["truncated"] == result.sampled:
        hint = (
            "; no sample emitted the end token: raise sampling.max_length or check the "
            "checkpoint and prompt.format"
        )
    elif result.sampled == 0:
        hint = "; nothing was sampled"
    raise DataError(
        f"model '{model}': {kept} sequences kept, fewer than filter.min_sequences={min_sequences} "
        f"(sampled {result.sampled}: {detail}){hint}; sample more (sampling.n_sequences), widen "
        "the length window or lower filter.min_sequences"
    )


# ----------------------------------------------------------------------------- rule `filter_samples`


def read_samples(paths: Sequence[str]) -> list[RawSample]:
    """Rows of the sample shards (`results/samples/{model}/shard_*.parquet`), in index order."""
    import pyarrow.parquet as pq

    columns = ["seq_id", "index", "sequence", "ended", "ppl"]
    rows: list[RawSample] = []
    for path in paths:
        try:
            table = pq.read_table(path, columns=columns)
        except (OSError, ValueError) as exc:
            raise DataError(
                f"sample shard {path} cannot be read as Parquet with columns {columns} ({exc})"
            ) from None
        data = table.to_pydict()
        rows += [
            RawSample(
                seq_id,
                int(index),
                seq or "",
                bool(ended),
                float(ppl) if ppl is not None else math.nan,
            )
            for seq_id, index, seq, ended, ppl in zip(*(data[c] for c in columns), strict=True)
        ]
    rows.sort(key=lambda s: s.index)
    return rows


def filter_model(
    model: str,
    shard_paths: Sequence[str],
    settings: FilterSettings,
    base_model: str | None = None,
    base_shard_paths: Sequence[str] = (),
) -> tuple[FilterResult, dict[str, Any]]:
    """Filter one model's samples; returns the result and its stats (no files written)."""
    samples = read_samples(shard_paths)
    base_lengths = None
    if settings.relative_to_base is not None:
        base = samples if base_model == model else read_samples(base_shard_paths)
        base_lengths = [len(s.sequence) for s in base if is_valid(s)]
    window = length_window(settings, base_lengths, base_model)
    result = classify_samples(samples, window, settings.dedupe)
    stats = filter_stats(model, result, window)
    log.info(
        "model %s: window [%s, %s], %s, duplicate fraction %.3f",
        model,
        window.low,
        window.high,
        stats["counts"],
        result.duplicate_fraction,
    )
    return result, stats
