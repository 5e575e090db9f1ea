"""Per-feature statistics of one SAE on every model's token activations (rule feature_stats).

One pass over the token shards, sequence by sequence, on the GPU when there is one. For every
feature and model it counts firing tokens and sequences, sums activations, and keeps the top
activating sequences with a window of per-residue activations around the maximum, so that later
stages (diff, report) never re-encode. It also keeps the sparse per-sequence firing counts that
the trend test of `plmdiff.diff.statistics` needs.

By default only the sequences held out of the SAE's fold are encoded (`diff.held_out`): an SAE
fits its own training tokens better than new ones, so evaluating the base SAE on base training
sequences but on unseen sequences of later rounds would fake a change. The K replicas then see
disjoint sequences, and a change that reappears across folds has reappeared on new data.

Outputs (siblings of the rule's `fold_{f}.parquet`, see `FeatureStatsPaths`):
- `fold_{f}.parquet`: feature x model stats (n_tokens, n_sequences, n_fire, frequency, sum_act,
  mean_act, max_act, n_firing_sequences, sequence_fraction, dec_cos_to_base, dec_norm_ratio);
  its metadata's `fit` holds, per model, the SAE's n_tokens, fvu, l0 and dead_fraction on
  the tokens encoded here;
- `fold_{f}.seqs.parquet`: seq_index, seq_id, model, n_tokens of every encoded sequence;
- `fold_{f}.fires.parquet`: sparse seq_index, feature, n_fire (firing tokens of a sequence);
- `fold_{f}.top.parquet`: feature, model, rank, seq_id, pos, pos_end (the residue span of the
  most active token), value, window_start, window_residues, window_acts (2W+1 residues, each
  with the activation of the token that holds it; NaN outside the sequence, residues '-' there);
- `fold_{f}.positions.parquet`: sparse model, bin, feature, n_fire (firing tokens whose first
  residue lies in position bin `bin`, of `position_bin` residues); the metadata's
  `position_tokens` holds, per model, the tokens of every bin. The diff compares firing rates
  at matched positions with them (a feature that fires only at residues a shorter round does
  not have is a length effect, not a change).

Rows are model tokens (`n_tokens`, `frequency` count tokens); a token of a BPE tokenizer may hold
several residues, and the windows of top examples are mapped back to residues through each
row's span (plmdiff.activations.format).
"""

from __future__ import annotations

import itertools
import json
import logging
import os
from collections.abc import Collection, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from plmdiff.activations.readers import iter_token_batches, token_seq_ids
from plmdiff.config.paths import feature_stats_siblings
from plmdiff.core.errors import DataError
from plmdiff.core.tables import write_parquet
from plmdiff.diff.alignment import rowwise_cosine
from plmdiff.diff.examples import PAD_RESIDUE
from plmdiff.diff.settings import FeatureStatsConfig
from plmdiff.sae.folds import fold_split
from plmdiff.sae.metrics import FitAccumulator

log = logging.getLogger(__name__)

METADATA_KEY = b"plmdiff.diff.feature_stats"


@dataclass(frozen=True)
class FeatureStatsPaths:
    """The files of one feature_stats job (`plmdiff.config.paths.feature_stats_siblings`)."""

    stats: Path
    sequences: Path
    fires: Path
    top: Path
    positions: Path

    @classmethod
    def of(cls, stats_path: str | os.PathLike) -> FeatureStatsPaths:
        """The files of one feature_stats job, named after its main output."""
        return cls(**feature_stats_siblings(stats_path))

    def files(self) -> dict[str, Path]:
        """Key (as in FEATURE_STATS_SUFFIXES) -> path, the stats table first."""
        return {f.name: getattr(self, f.name) for f in fields(self)}


@dataclass
class FeatureStats:
    stats: pd.DataFrame
    sequences: pd.DataFrame
    fires: pd.DataFrame
    top: pd.DataFrame
    metadata: dict[str, Any]
    # model, bin, feature, n_fire (sparse); the tokens per bin are in the metadata.
    positions: pd.DataFrame | None = None

    @property
    def d_sae(self) -> int:
        return int(self.metadata["d_sae"])

    def write(self, stats_path: str | os.PathLike) -> FeatureStatsPaths:
        paths = FeatureStatsPaths.of(stats_path)
        meta = {METADATA_KEY: json.dumps(self.metadata).encode()}
        write_parquet(self.sequences, paths.sequences, metadata=meta)
        fires = self.fires.sort_values(["seq_index", "feature"], kind="stable")
        write_parquet(fires, paths.fires, metadata=meta, row_group_size=1 << 18)
        write_parquet(_top_to_arrow(self.top), paths.top, metadata=meta)
        positions = self.positions if self.positions is not None else empty_positions()
        write_parquet(positions, paths.positions, metadata=meta)
        # The main file last: Snakemake (and a reader) sees the job done only when all exist.
        write_parquet(self.stats, paths.stats, metadata=meta)
        return paths

    @classmethod
    def read(cls, stats_path: str | os.PathLike) -> FeatureStats:
        paths = FeatureStatsPaths.of(stats_path)
        for path in paths.files().values():
            if not path.is_file():
                raise DataError(f"feature stats file {path} does not exist (rule feature_stats)")
        table = pq.read_table(paths.stats)
        raw = (table.schema.metadata or {}).get(METADATA_KEY)
        if raw is None:
            raise DataError(f"{paths.stats} has no plmdiff feature-stats metadata")
        return cls(
            stats=table.to_pandas(),
            sequences=pq.read_table(paths.sequences).to_pandas(),
            fires=pq.read_table(paths.fires).to_pandas(),
            top=pq.read_table(paths.top).to_pandas(),
            metadata=json.loads(raw),
            positions=pq.read_table(paths.positions).to_pandas(),
        )

    def model_sequences(self, model: str) -> pd.DataFrame:
        return self.sequences[self.sequences["model"] == model].reset_index(drop=True)

    def model_stats(self, model: str) -> pd.DataFrame:
        rows = self.stats[self.stats["model"] == model]
        if rows.empty:
            raise DataError(
                f"feature stats of scheme '{self.metadata.get('scheme')}' hold no model '{model}'"
            )
        return rows.reset_index(drop=True)

    def model_fires(self, model: str) -> pd.DataFrame:
        ids = self.model_sequences(model)["seq_index"]
        return self.fires[self.fires["seq_index"].isin(ids)].reset_index(drop=True)

    def model_positions(self, model: str) -> PositionCounts | None:
        positions = self.positions if self.positions is not None else empty_positions()
        return position_counts(self.metadata, positions[positions["model"] == model], model)

    @classmethod
    def open(cls, stats_path: str | os.PathLike) -> StoredFeatureStats:
        """The same questions answered from disk, one model at a time (for large studies)."""
        return StoredFeatureStats(stats_path)


class StoredFeatureStats:
    """Feature stats on disk, read per model with Parquet filters: a diff of many SAEs holds
    only the rows it is working on (fires are sorted by seq_index, one model's a range)."""

    def __init__(self, stats_path: str | os.PathLike) -> None:
        self.paths = FeatureStatsPaths.of(stats_path)
        for path in self.paths.files().values():
            if not path.is_file():
                raise DataError(f"feature stats file {path} does not exist (rule feature_stats)")
        raw = (pq.read_schema(self.paths.stats).metadata or {}).get(METADATA_KEY)
        if raw is None:
            raise DataError(f"{self.paths.stats} has no plmdiff feature-stats metadata")
        self.metadata: dict[str, Any] = json.loads(raw)
        self.sequences = pq.read_table(self.paths.sequences).to_pandas()
        self._top: pd.DataFrame | None = None

    @property
    def d_sae(self) -> int:
        return int(self.metadata["d_sae"])

    @property
    def top(self) -> pd.DataFrame:
        if self._top is None:
            self._top = pq.read_table(self.paths.top).to_pandas()
        return self._top

    def model_sequences(self, model: str) -> pd.DataFrame:
        return self.sequences[self.sequences["model"] == model].reset_index(drop=True)

    def model_stats(self, model: str) -> pd.DataFrame:
        rows = pq.read_table(self.paths.stats, filters=[("model", "=", model)]).to_pandas()
        if rows.empty:
            raise DataError(
                f"feature stats {self.paths.stats} hold no model '{model}'; "
                f"models: {', '.join(self.metadata.get('models', []))}"
            )
        return rows

    def model_fires(self, model: str) -> pd.DataFrame:
        ids = self.model_sequences(model)["seq_index"]
        if ids.empty:
            return pd.DataFrame({"seq_index": [], "feature": [], "n_fire": []})
        lo, hi = int(ids.min()), int(ids.max())
        rows = pq.read_table(
            self.paths.fires, filters=[("seq_index", ">=", lo), ("seq_index", "<=", hi)]
        ).to_pandas()
        return rows[rows["seq_index"].isin(ids)].reset_index(drop=True)

    def model_positions(self, model: str) -> PositionCounts | None:
        rows = pq.read_table(self.paths.positions, filters=[("model", "=", model)]).to_pandas()
        return position_counts(self.metadata, rows, model)


@dataclass(frozen=True)
class PositionCounts:
    """One model's tokens per position bin and sparse firing tokens per (bin, feature)."""

    bin_width: int
    tokens: np.ndarray  # [n_bins]
    fires: pd.DataFrame  # bin, feature, n_fire


def empty_positions() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "model": pd.Series([], dtype=str),
            "bin": pd.Series([], dtype=np.int32),
            "feature": pd.Series([], dtype=np.int32),
            "n_fire": pd.Series([], dtype=np.int64),
        }
    )


def position_counts(
    metadata: Mapping[str, Any], rows: pd.DataFrame, model: str
) -> PositionCounts | None:
    """A model's position counts, or None for feature stats written before they existed."""
    tokens = metadata.get("position_tokens", {}).get(model)
    if tokens is None:
        return None
    return PositionCounts(
        bin_width=int(metadata["position_bin"]),
        tokens=np.asarray(tokens, dtype=np.int64),
        fires=rows[["bin", "feature", "n_fire"]].reset_index(drop=True),
    )


def _top_to_arrow(top: pd.DataFrame) -> pa.Table:
    acts = top["window_acts"]
    width = len(acts.iloc[0]) if len(acts) else 1
    flat = (
        np.concatenate(acts.to_list()).astype(np.float32) if len(acts) else np.zeros(0, np.float32)
    )
    columns = {c: pa.array(top[c].to_numpy()) for c in top.columns if c != "window_acts"}
    columns["window_acts"] = pa.FixedSizeListArray.from_arrays(pa.array(flat), width)
    return pa.table(columns)


# ----------------------------------------------------------------------------- sequences


@dataclass
class SequenceChunk:
    """Complete sequences, each one contiguous run of token rows whose residue spans tile the
    sequence's residues 0..L-1 in order."""

    seq_ids: list[str]
    starts: np.ndarray  # row offsets, len(seq_ids) + 1
    residues: list[str]
    act: np.ndarray
    pos: np.ndarray  # first residue of each row, within its sequence
    pos_end: np.ndarray  # one past the last residue of each row
    res_starts: np.ndarray  # residue offsets of the sequences in the chunk, len(seq_ids) + 1
    residue_row: np.ndarray  # the row that holds each residue of the chunk

    @property
    def n_rows(self) -> int:
        return int(self.starts[-1])


def complete_sequences(batches: Iterable[Any], source: str) -> Iterator[SequenceChunk]:
    """Regroup token batches (file order) into chunks that hold only whole sequences.

    A sequence cut by a batch boundary is carried into the next chunk. Rows of one sequence must
    be contiguous, their spans tiling positions 0..L-1 in order, as extraction writes them;
    anything else is a DataError. A batch without `pos_end` has one token per residue.
    """
    seen: set[str] = set()
    carry: tuple[np.ndarray, ...] | None = None
    for batch in batches:
        pos = np.asarray(batch.pos, dtype=np.int64)
        pos_end = getattr(batch, "pos_end", None)
        parts: tuple[np.ndarray, ...] = (
            np.asarray(batch.seq_id).astype(str),
            pos,
            pos + 1 if pos_end is None else np.asarray(pos_end, dtype=np.int64),
            np.asarray(batch.residue).astype(str),
            np.asarray(batch.act, dtype=np.float32),
        )
        if len(parts[0]) == 0:
            continue
        if carry is not None:
            parts = tuple(np.concatenate([c, p]) for c, p in zip(carry, parts, strict=True))
        seq = parts[0]
        tail = len(seq)
        while tail > 0 and seq[tail - 1] == seq[-1]:
            tail -= 1
        carry = tuple(p[tail:] for p in parts)
        if tail > 0:
            yield _chunk(tuple(p[:tail] for p in parts), seen, source)
    if carry is not None and len(carry[0]):
        yield _chunk(carry, seen, source)


def _chunk(parts: tuple[np.ndarray, ...], seen: set[str], source: str) -> SequenceChunk:
    seq, pos, pos_end, residue, act = parts
    change = np.flatnonzero(seq[1:] != seq[:-1]) + 1
    starts = np.concatenate([[0], change, [len(seq)]]).astype(np.int64)
    ids = [str(s) for s in seq[starts[:-1]]]
    repeated = [s for s in ids if s in seen] or ([ids[0]] if len(set(ids)) < len(ids) else [])
    if repeated:
        raise DataError(
            f"token rows of sequence '{repeated[0]}' in {source} are not contiguous; "
            "extraction writes each sequence's residues as one run"
        )
    seen.update(ids)
    run = np.repeat(np.arange(len(ids)), np.diff(starts))
    # Each row starts where the row before it in its sequence ended; a sequence starts at 0.
    expected = np.concatenate([[0], pos_end[:-1]])
    expected[starts[:-1]] = 0
    bad_rows = np.flatnonzero((pos != expected) | (pos_end <= pos))
    if len(bad_rows):
        bad = ids[int(run[bad_rows[0]])]
        raise DataError(
            f"token rows of sequence '{bad}' in {source} do not hold positions 0..L-1 in order "
            "(each token's residue span must start where the one before it ended)"
        )
    residues = ["".join(residue[a:b]) for a, b in itertools.pairwise(starts)]
    lengths = pos_end[starts[1:] - 1]
    mismatch = [i for i, text in enumerate(residues) if len(text) != lengths[i]]
    if mismatch:
        raise DataError(
            f"token rows of sequence '{ids[mismatch[0]]}' in {source} hold "
            f"{len(residues[mismatch[0]])} residue letters for spans covering {lengths[mismatch[0]]}"
        )
    return SequenceChunk(
        seq_ids=ids,
        starts=starts,
        residues=residues,
        act=act,
        pos=pos,
        pos_end=pos_end,
        res_starts=np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64),
        residue_row=np.repeat(np.arange(len(seq), dtype=np.int64), pos_end - pos),
    )


# ----------------------------------------------------------------------------- accumulation


class _ModelAccumulator:
    """Running per-feature statistics and top examples of one model, on the SAE's device."""

    def __init__(self, d_sae: int, n_top: int, window: int, device: Any, position_bin: int) -> None:
        import torch

        self.torch = torch
        self.device = device
        self.n_top = n_top
        self.window = window
        f = d_sae
        self.n_fire = torch.zeros(f, dtype=torch.int64, device=device)
        self.sum_act = torch.zeros(f, dtype=torch.float64, device=device)
        self.max_act = torch.zeros(f, dtype=torch.float32, device=device)
        self.n_firing_sequences = torch.zeros(f, dtype=torch.int64, device=device)
        self.top_val = torch.zeros(f, n_top, dtype=torch.float32, device=device)
        self.top_seq = torch.full((f, n_top), -1, dtype=torch.int64, device=device)
        self.top_pos = torch.zeros(f, n_top, dtype=torch.int64, device=device)
        self.top_end = torch.zeros(f, n_top, dtype=torch.int64, device=device)
        self.top_win = torch.full(
            (f, n_top, 2 * window + 1), float("nan"), dtype=torch.float32, device=device
        )
        self.n_tokens = 0
        self.n_sequences = 0
        # [bins, d_sae] firing tokens and [bins] tokens per position bin: dense, and small
        # (ZymCTRL: at most 1,024 positions x 15,360 features, 126 MB), grown as needed.
        self.position_bin = position_bin
        self.bin_fire = torch.zeros(0, f, dtype=torch.int64, device=device)
        self.bin_tokens = torch.zeros(0, dtype=torch.int64, device=device)

    def add(self, acts: Any, chunk: SequenceChunk, seq_index: np.ndarray) -> list[np.ndarray]:
        """Fold one chunk's feature activations [rows, d_sae] in; returns its sparse fires."""
        torch = self.torch
        n, f = acts.shape
        starts = chunk.starts
        s = len(starts) - 1
        dev = self.device
        lengths = torch.as_tensor(np.diff(starts), device=dev)
        run = torch.repeat_interleave(torch.arange(s, device=dev), lengths)
        # SAE codes are sparse (L0 of d_sae): every statistic is computed from the non-zero
        # entries, never from [rows, d_sae] temporaries, which would cost more than encoding.
        rows, feats = (acts > 0).nonzero(as_tuple=True)
        vals = acts[rows, feats]
        key = run[rows] * f + feats  # (sequence, feature) cell
        per_seq = torch.bincount(key, minlength=s * f).view(s, f)
        self.n_fire += per_seq.sum(0)
        self.n_firing_sequences += (per_seq > 0).sum(0)
        self.sum_act.index_add_(0, feats, vals.to(torch.float64))
        self.max_act.scatter_reduce_(0, feats, vals, reduce="amax", include_self=True)
        self.n_tokens += n
        self.n_sequences += s
        self._add_positions(chunk, rows, feats, f)
        nz = per_seq.nonzero()
        fires = [
            seq_index[nz[:, 0].cpu().numpy()],
            nz[:, 1].cpu().numpy().astype(np.int32),
            per_seq[nz[:, 0], nz[:, 1]].to(torch.int32).cpu().numpy(),
        ]

        # Per-sequence maximum and the first row where it is reached.
        seq_max = torch.zeros(s * f, dtype=acts.dtype, device=dev)
        seq_max.scatter_reduce_(0, key, vals, reduce="amax", include_self=True)
        candidate = torch.where(vals == seq_max[key], rows, n)
        arg_row = torch.full((s * f,), n, dtype=torch.int64, device=dev)
        arg_row.scatter_reduce_(0, key, candidate, reduce="amin", include_self=True)
        seq_max, arg_row = seq_max.view(s, f), arg_row.view(s, f)
        self._merge_top(acts, seq_max, arg_row, chunk, torch.as_tensor(seq_index, device=dev))
        return fires

    def _add_positions(self, chunk: SequenceChunk, rows: Any, feats: Any, f: int) -> None:
        torch = self.torch
        bins = torch.as_tensor(chunk.pos // self.position_bin, device=self.device)
        n_bins = int(bins.max().item()) + 1 if bins.numel() else 0
        if n_bins > self.bin_tokens.shape[0]:
            grow = n_bins - self.bin_tokens.shape[0]
            self.bin_tokens = torch.cat([self.bin_tokens, self.bin_tokens.new_zeros(grow)])
            self.bin_fire = torch.cat([self.bin_fire, self.bin_fire.new_zeros(grow, f)])
        self.bin_tokens[:n_bins] += torch.bincount(bins, minlength=n_bins)
        cell = bins[rows] * f + feats
        self.bin_fire.view(-1)[: n_bins * f] += torch.bincount(cell, minlength=n_bins * f)

    def position_frame(self, model: str) -> pd.DataFrame:
        """Sparse model, bin, feature, n_fire of the position counts."""
        nz = self.bin_fire.nonzero()
        return pd.DataFrame(
            {
                "model": model,
                "bin": nz[:, 0].cpu().numpy().astype(np.int32),
                "feature": nz[:, 1].cpu().numpy().astype(np.int32),
                "n_fire": self.bin_fire[nz[:, 0], nz[:, 1]].cpu().numpy().astype(np.int64),
            }
        )

    def _merge_top(self, acts, seq_max, arg_row, chunk, seq_index_t) -> None:
        torch = self.torch
        k = self.n_top
        values, idx = torch.cat([self.top_val, seq_max.T], dim=1).topk(k, dim=1)
        from_new = idx >= k
        old = idx.clamp(max=k - 1)
        new_s = (idx - k).clamp(min=0)
        feats = torch.arange(acts.shape[1], device=self.device)[:, None].expand_as(idx)
        center = arg_row[new_s, feats].clamp(max=acts.shape[0] - 1)
        seq = torch.where(from_new, seq_index_t[new_s], self.top_seq.gather(1, old))
        # Windows are in residues: the most active token's first residue is the centre, and
        # each residue of the window carries the activation of the token that holds it (with
        # one token per residue, rows and residues coincide).
        row_pos = torch.as_tensor(chunk.pos, device=self.device)
        row_end = torch.as_tensor(chunk.pos_end, device=self.device)
        pos = torch.where(from_new, row_pos[center], self.top_pos.gather(1, old))
        end = torch.where(from_new, row_end[center], self.top_end.gather(1, old))
        win = self.top_win.gather(1, old[..., None].expand(-1, -1, self.top_win.shape[2])).clone()
        fi, slot = from_new.nonzero(as_tuple=True)
        if fi.numel():
            res_starts = torch.as_tensor(chunk.res_starts, device=self.device)
            residue_row = torch.as_tensor(chunk.residue_row, device=self.device)
            offsets = torch.arange(-self.window, self.window + 1, device=self.device)
            sidx = new_s[fi, slot]
            c = res_starts[sidx] + row_pos[center[fi, slot]]
            r = c[:, None] + offsets[None, :]
            valid = (r >= res_starts[sidx][:, None]) & (r < res_starts[sidx + 1][:, None])
            rows = residue_row[r.clamp(0, len(residue_row) - 1)]
            gathered = acts[rows, fi[:, None]]
            win[fi, slot] = torch.where(valid, gathered, torch.full_like(gathered, float("nan")))
        self.top_val, self.top_seq, self.top_pos, self.top_win = values, seq, pos, win
        self.top_end = end


# ----------------------------------------------------------------------------- driver


def decoder_change(decoder: np.ndarray, base_decoder: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(cosine, norm ratio) of each decoder row to the same row of the base SAE's decoder."""
    cos = rowwise_cosine(decoder, base_decoder)
    base_norm = np.linalg.norm(base_decoder, axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.linalg.norm(decoder, axis=1) / base_norm
    return cos.astype(np.float64), ratio.astype(np.float64)


def sae_decoder(sae: Any) -> np.ndarray:
    return sae.W_dec.detach().float().cpu().numpy()


def compute_feature_stats(
    sae: Any,
    token_dirs: Mapping[str, Sequence[str | os.PathLike]],
    cfg: FeatureStatsConfig,
    *,
    device: Any = "cpu",
    base_decoder: np.ndarray | None = None,
    seq_ids: Mapping[str, Collection[str] | None] | None = None,
    metadata: Mapping[str, Any] | None = None,
) -> FeatureStats:
    """Encode every model's token activations with `sae` and summarise every feature.

    `token_dirs` maps model name -> its token layer directories (in round order); `seq_ids`
    restricts a model to those sequences (None: all). `base_decoder` ([d_sae, d_in]) adds the
    decoder direction change and norm ratio of fine-tuned SAEs.
    """
    import torch

    sae = sae.to(device).eval()
    d_sae = int(sae.cfg.d_sae)
    dec = sae_decoder(sae)
    if base_decoder is not None:
        cos, ratio = decoder_change(dec, np.asarray(base_decoder))
    else:
        cos = ratio = np.full(d_sae, np.nan)

    stats, seq_frames, fires, tops, positions = [], [], [], [], []
    position_tokens: dict[str, list[int]] = {}
    fits: dict[str, dict[str, Any]] = {}
    n_seq_total = 0
    for model, dirs in token_dirs.items():
        wanted = None if seq_ids is None else seq_ids.get(model)
        if wanted is not None and len(wanted) == 0:
            raise DataError(
                f"no sequences of model '{model}' to encode (its held-out set is empty)"
            )
        acc = _ModelAccumulator(
            d_sae, cfg.top_examples, cfg.example_window, device, cfg.position_bin
        )
        fit = FitAccumulator(d_sae, device)
        ids: list[str] = []
        residues: list[str] = []
        lengths: list[int] = []
        model_fires: list[list[np.ndarray]] = []
        source = ", ".join(str(d) for d in dirs)
        batches = iter_token_batches(list(dirs), batch_rows=cfg.batch_tokens, seq_ids=wanted)
        with torch.inference_mode():
            for chunk in complete_sequences(batches, source):
                index = np.arange(n_seq_total, n_seq_total + len(chunk.seq_ids), dtype=np.int64)
                n_seq_total += len(chunk.seq_ids)
                ids += chunk.seq_ids
                residues += chunk.residues
                lengths += np.diff(chunk.starts).tolist()
                act = chunk.act if chunk.act.flags.writeable else chunk.act.copy()
                x = torch.from_numpy(act).to(device=device, dtype=sae.W_dec.dtype)
                codes = sae.encode(x)
                fit.add(x, codes, sae.decode(codes))
                model_fires.append(acc.add(codes.float(), chunk, index))
        if acc.n_sequences == 0:
            raise DataError(f"no token activations of model '{model}' in {source}")
        if wanted is not None and acc.n_sequences < len(set(wanted)):
            log.warning(
                "model %s: %d of %d requested sequences found in %s",
                model,
                acc.n_sequences,
                len(set(wanted)),
                source,
            )
        log.info("model %s: %d sequences, %d tokens encoded", model, acc.n_sequences, acc.n_tokens)
        fits[model] = fit.to_json()
        first = n_seq_total - acc.n_sequences
        seq_frames.append(
            pd.DataFrame(
                {
                    "seq_index": np.arange(first, n_seq_total, dtype=np.int64),
                    "seq_id": ids,
                    "model": model,
                    "n_tokens": np.asarray(lengths, dtype=np.int64),
                }
            )
        )
        fires.append(_fires_frame(model_fires))
        positions.append(acc.position_frame(model))
        position_tokens[model] = acc.bin_tokens.cpu().numpy().astype(int).tolist()
        stats.append(_stats_frame(acc, model, cos, ratio))
        tops.append(
            _top_frame(
                acc, model, dict(zip(range(first, n_seq_total), ids, strict=True)), residues, first
            )
        )
    meta = {
        **(metadata or {}),
        "d_sae": d_sae,
        "d_in": int(sae.cfg.d_in),
        "models": list(token_dirs),
        "top_examples": cfg.top_examples,
        "example_window": cfg.example_window,
        # Per model: the SAE's FVU, L0 and dead fraction on the tokens encoded here.
        "fit": fits,
        "position_bin": cfg.position_bin,
        "position_tokens": position_tokens,
    }
    return FeatureStats(
        stats=pd.concat(stats, ignore_index=True),
        sequences=pd.concat(seq_frames, ignore_index=True),
        fires=pd.concat(fires, ignore_index=True),
        top=pd.concat(tops, ignore_index=True),
        metadata=meta,
        positions=pd.concat(positions, ignore_index=True),
    )


def _fires_frame(parts: list[list[np.ndarray]]) -> pd.DataFrame:
    cols = [np.concatenate([p[i] for p in parts]) for i in range(3)]
    return pd.DataFrame(
        {
            "seq_index": cols[0].astype(np.int64),
            "feature": cols[1].astype(np.int32),
            "n_fire": cols[2].astype(np.int32),
        }
    )


def _stats_frame(
    acc: _ModelAccumulator, model: str, cos: np.ndarray, ratio: np.ndarray
) -> pd.DataFrame:
    n_fire = acc.n_fire.cpu().numpy()
    sum_act = acc.sum_act.cpu().numpy()
    n_firing = acc.n_firing_sequences.cpu().numpy()
    with np.errstate(divide="ignore", invalid="ignore"):
        mean_act = np.where(n_fire > 0, sum_act / n_fire, np.nan)
    return pd.DataFrame(
        {
            "feature": np.arange(n_fire.size, dtype=np.int64),
            "model": model,
            "n_tokens": np.int64(acc.n_tokens),
            "n_sequences": np.int64(acc.n_sequences),
            "n_fire": n_fire.astype(np.int64),
            "frequency": n_fire / acc.n_tokens,
            "sum_act": sum_act,
            "mean_act": mean_act,
            "max_act": acc.max_act.cpu().numpy().astype(np.float64),
            "n_firing_sequences": n_firing.astype(np.int64),
            "sequence_fraction": n_firing / acc.n_sequences,
            "dec_cos_to_base": cos,
            "dec_norm_ratio": ratio,
        }
    )


def _top_frame(
    acc: _ModelAccumulator, model: str, ids: dict[int, str], residues: list[str], first: int
) -> pd.DataFrame:
    val = acc.top_val.cpu().numpy()
    seq = acc.top_seq.cpu().numpy()
    pos = acc.top_pos.cpu().numpy()
    end = acc.top_end.cpu().numpy()
    win = acc.top_win.cpu().numpy()
    # topk keeps ties in arbitrary order: sort each feature's examples by value, then sequence.
    feat, slot = np.nonzero((val > 0) & (seq >= 0))
    frame = pd.DataFrame(
        {
            "feature": feat,
            "value": val[feat, slot],
            "seq": seq[feat, slot],
            "pos": pos[feat, slot],
            "pos_end": end[feat, slot],
            "slot": slot,
        }
    ).sort_values(["feature", "value", "seq"], ascending=[True, False, True], kind="stable")
    w = acc.window
    windows = win[frame["feature"].to_numpy(), frame["slot"].to_numpy()]
    window_res = []
    for s, p in zip(frame["seq"].to_numpy(), frame["pos"].to_numpy(), strict=True):
        text = residues[s - first]
        lo, hi = p - w, p + w + 1
        window_res.append(
            PAD_RESIDUE * max(0, -lo) + text[max(lo, 0) : hi] + PAD_RESIDUE * max(0, hi - len(text))
        )
    return pd.DataFrame(
        {
            "feature": frame["feature"].to_numpy().astype(np.int64),
            "model": model,
            "rank": frame.groupby("feature").cumcount().to_numpy().astype(np.int64) + 1,
            "seq_id": [ids[s] for s in frame["seq"].to_numpy()],
            "pos": frame["pos"].to_numpy().astype(np.int64),
            "pos_end": frame["pos_end"].to_numpy().astype(np.int64),
            "value": frame["value"].to_numpy().astype(np.float64),
            "window_start": (frame["pos"].to_numpy() - w).astype(np.int64),
            "window_residues": window_res,
            "window_acts": list(windows.astype(np.float32)),
        }
    )


def held_out_sequences(
    layer_dirs: Sequence[str | os.PathLike],
    k: int,
    seed: int,
    fold: int,
    held_out: bool,
    fold_of: Mapping[str, int] | None = None,
) -> list[str] | None:
    """Sequences of the SAE's held-out fold (None = all: k == 1 or held_out disabled), by the
    fold table its SAE replica was trained with (`plmdiff.sae.folds.read_fold_table`)."""
    if not held_out or k <= 1:
        return None
    return list(fold_split(token_seq_ids(list(layer_dirs)), k, seed, fold, fold_of)[1])
