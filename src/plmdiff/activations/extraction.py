"""Residual-stream extraction: embed FASTA sequences with a checkpoint, pool, and store as Parquet.

The logic of the `extract` and `extract_tokens` rules (entry function:
plmdiff.activations.job.extract). For each sequence of one part of a model's FASTA:

- pooled, every stored layer: `last` = the last residue-bearing token, `mean` = the mean over
  residues, each residue contributing the vector of the token that holds it (a token of k
  residues weighs k; never the control tag, special tokens or position 0);
- tokens, one layer of `activations.token_layers`: one row per residue-bearing token, with its
  residue span (one row per residue for a character tokenizer such as ZymCTRL's).

One call writes any mix of the two; the rules write the pooled part in one job and each token
layer in a job of its own, so adding a token layer runs only that layer's jobs. The forward pass
stops at the deepest layer a call needs: a token job of layer l runs blocks 0..l-1 only, and its
file is byte for byte the one a pass over every layer writes (tests/unit/activations).

Layer `l` is the input of block `l` (0 = embeddings) and layer `L` the input of the final
LayerNorm, captured with forward pre-hooks, so every layer is the same kind of object (Hugging
Face's `hidden_states[-1]` has the norm applied). Pooling happens inside the hooks, on the
device: a batch never materialises all L+1 layers at once, and nothing but the pooled vectors
and the token layers leaves the GPU.

The text is `{label}<sep><start>{SEQ}` (zymctrl) or `BOS SEQ` (plain): the trailing
`<end><|endoftext|>` of the scoring text is left out because in a causal model no residue
position sees it, so the residue activations are the same and the tokens are saved. For the
same reason batches are right-padded without an attention mask: real tokens never attend to
the padding after them, and SDPA keeps its fused causal kernel.

Sequences are sorted by length (longest first, so an out-of-memory shows up at once) and cut
into batches of at most `batch_tokens` padded tokens; a batch that does not fit on the GPU is
halved (plmdiff.core.oom). Writer threads (one per output file) convert and write batch i while
batch i+1 computes; each queue holds at most two batches, so memory is bounded by the batch,
not by the study. A model too large for one GPU is spread over `activations.gpus` GPUs with
device_map='auto'; the hooks then pool on whichever GPU holds each layer.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import queue
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from plmdiff.activations.format import POOLINGS, pooled_column
from plmdiff.activations.writers import PooledWriter, TokenWriter
from plmdiff.config.sections import from_section
from plmdiff.core.errors import CheckpointError, DataError
from plmdiff.core.fasta import SequenceEntry, read_fasta
from plmdiff.core.oom import map_with_oom_split
from plmdiff.models.anatomy import decoder_anatomy
from plmdiff.models.checkpoints import CheckpointRecord, load_model, load_tokenizer
from plmdiff.models.text import PromptFormat, SpecialIds, prompt_ids, residue_tokens

log = logging.getLogger(__name__)

TEXT_CONVENTION = (
    "{label}<sep><start>{SEQ} (zymctrl) or BOS + SEQ (plain); the trailing <end><|endoftext|> "
    "is not fed: in a causal model no residue position attends to it"
)
# Listing every truncated id in the footer would be unbounded; the count is always exact.
MAX_LISTED_TRUNCATIONS = 100


# ----------------------------------------------------------------------------- settings


def _layer_list(layers: str | Sequence[int]) -> tuple[int, ...] | None:
    """activations.layers: 'all' -> None (every layer 0..L), else the indices ascending."""
    return None if layers == "all" else tuple(sorted(int(x) for x in layers))


def _sorted_layers(layers: Sequence[int]) -> tuple[int, ...]:
    return tuple(sorted(int(x) for x in layers))


def _ordered_poolings(poolings: Sequence[str]) -> tuple[str, ...]:
    """The configured poolings in POOLINGS order, the column order of the pooled files."""
    return tuple(p for p in POOLINGS if p in poolings)


@dataclass(frozen=True)
class ExtractionSettings:
    """The `activations` config section, as extraction needs it (defaults: config/schema.yaml)."""

    layers: tuple[int, ...] | None  # None: all, 0..L
    token_layers: tuple[int, ...]
    poolings: tuple[str, ...]
    dtype: str
    batch_tokens: int
    shards: int
    rows_per_file: int
    truncate: bool
    gpus: int

    @classmethod
    def from_section(cls, section: Mapping[str, Any]) -> ExtractionSettings:
        """From the validated `activations` section."""
        return from_section(
            cls,
            section,
            "activations",
            rename={"poolings": "pooling"},
            convert={
                "layers": _layer_list,
                "token_layers": _sorted_layers,
                "poolings": _ordered_poolings,
            },
        )

    def pooled_layers(self, n_layers: int) -> list[int]:
        """The layers stored pooled, checked against an embedder of `n_layers` blocks."""
        layers = list(range(n_layers + 1)) if self.layers is None else list(self.layers)
        _check_layers("activations.layers", layers, n_layers)
        return layers

    def checked_token_layers(self, n_layers: int) -> list[int]:
        """The layers stored per token, checked against an embedder of `n_layers` blocks."""
        _check_layers("activations.token_layers", self.token_layers, n_layers)
        return list(self.token_layers)


def _check_layers(key: str, layers: Iterable[int], n_layers: int) -> None:
    bad = [layer for layer in layers if not 0 <= layer <= n_layers]
    if bad:
        raise DataError(
            f"{key}: layer {bad[0]} does not exist in an embedder with layers 0..{n_layers} "
            "(0 = embeddings, L = last block)"
        )


# ----------------------------------------------------------------------------- sequences


def shard_sequences(
    entries: Sequence[SequenceEntry], part: int, n_parts: int
) -> list[SequenceEntry]:
    """Part `part` of `n_parts`: every n-th sequence in (length, id) order, so parts get equal
    work and the split depends only on the FASTA."""
    if not 0 <= part < n_parts:
        raise DataError(f"extraction part {part} is outside 0..{n_parts - 1} (activations.shards)")
    ordered = sorted(entries, key=lambda e: (-len(e.sequence), e.seq_id))
    return ordered[part::n_parts]


@dataclass(frozen=True)
class PreparedSequence:
    """One sequence as the model sees it: token ids up to the last embedded residue token."""

    seq_id: str
    length: int  # residues in the sequence
    residues: str  # residues embedded (all of them unless truncated)
    # prompt + embedded residue tokens; int32, not Python ints, whose ~36 bytes per token made a
    # part's memory grow with its sequence count (bench/activations.py, peak RSS 10x / 1x)
    ids: np.ndarray
    start: int  # position of the first residue token
    # residue span [pos, pos_end) of each token from `start` on (int32 [len(ids) - start, 2]);
    # empty for a token that holds no residue
    spans: np.ndarray

    @property
    def n_residues(self) -> int:
        return len(self.residues)

    @property
    def truncated(self) -> bool:
        return self.n_residues < self.length

    @property
    def bearing(self) -> np.ndarray:
        """Which tokens from `start` on hold residues (bool [len(ids) - start])."""
        return self.spans[:, 1] > self.spans[:, 0]

    @property
    def token_spans(self) -> np.ndarray:
        """Residue spans of the residue-bearing tokens, the rows of the token table."""
        return self.spans[self.bearing]


def max_residues(n_positions: int, prefix_tokens: int) -> int:
    """Residue tokens that fit after the prompt: residues with one token per residue, more with
    a tokenizer that merges them (the file metadata key keeps its name, `max_residues`)."""
    return n_positions - prefix_tokens


def prepare_sequences(
    entries: Sequence[SequenceEntry],
    tokenizer: Any,
    fmt: PromptFormat,
    special: SpecialIds,
    *,
    n_positions: int,
    truncate: bool,
    source: str = "the FASTA",
    embedder: str = "the embedder",
) -> list[PreparedSequence]:
    """Token ids of each sequence; too long for the context: DataError, or truncated when asked
    (to its first `n_positions - prompt` residue tokens)."""
    prefix = prompt_ids(tokenizer, fmt, special)
    limit = max_residues(n_positions, len(prefix))
    encoded = [
        residue_tokens(tokenizer, e.sequence, f"{source}: sequence {e.seq_id}") for e in entries
    ]
    too_long = [
        (e, len(ids)) for e, (ids, _) in zip(entries, encoded, strict=True) if len(ids) > limit
    ]
    if too_long and not truncate:
        # The length in residues, and in tokens where a token holds several residues.
        shown = ", ".join(
            f"{e.seq_id} ({len(e.sequence)}"
            + (f" residues, {n} tokens)" if n != len(e.sequence) else ")")
            for e, n in too_long[:5]
        )
        more = f" and {len(too_long) - 5} more" if len(too_long) > 5 else ""
        raise DataError(
            f"{source}: {len(too_long)} sequence(s) are longer than {embedder}'s context of "
            f"{n_positions} tokens ({limit} residue tokens after the {len(prefix)}-token prompt): "
            f"{shown}{more}; filter them out (filter.max_length) or set activations.truncate: true "
            "to embed their first residues only"
        )
    out = []
    for entry, (ids, spans) in zip(entries, encoded, strict=True):
        ids, spans = ids[:limit], spans[:limit]
        embedded = int(spans[:, 1].max()) if len(spans) else 0
        out.append(
            PreparedSequence(
                seq_id=entry.seq_id,
                length=len(entry.sequence),
                residues=entry.sequence[:embedded],
                ids=np.asarray(prefix + ids, dtype=np.int32),
                start=len(prefix),
                spans=spans,
            )
        )
    return out


def length_batches(sequences: Sequence[PreparedSequence], batch_tokens: int) -> list[list[int]]:
    """Indices of sequences in batches of at most `batch_tokens` padded tokens, longest first.

    A sequence longer than the budget gets a batch of its own.
    """
    order = sorted(range(len(sequences)), key=lambda i: (-len(sequences[i].ids), i))
    batches: list[list[int]] = []
    current: list[int] = []
    width = 0
    for i in order:
        n = len(sequences[i].ids)
        width_if_added = max(width, n)
        if current and width_if_added * (len(current) + 1) > batch_tokens:
            batches.append(current)
            current, width = [], 0
            width_if_added = n
        current.append(i)
        width = width_if_added
    if current:
        batches.append(current)
    return batches


# ----------------------------------------------------------------------------- model internals


def fuse_gelu(model: Any) -> int:
    """Swap Hugging Face's `gelu_new` (five elementwise ops) for torch's fused tanh GELU: the
    same function to float rounding (|diff| < 1e-6), several times faster. Returns the count."""
    from transformers.activations import GELUTanh, NewGELUActivation

    swapped = 0
    for parent in model.modules():
        for name, child in list(parent.named_children()):
            if type(child) is NewGELUActivation:
                setattr(parent, name, GELUTanh())
                swapped += 1
    return swapped


class _StopForward(Exception):
    """Raised by the hook of the deepest needed layer: the rest of the network is not needed."""


@dataclass
class _BatchPlan:
    """Where the residues of a padded batch are, as tensors on one device."""

    last_index: Any  # [B] position of the last residue-bearing token
    residue_weight: Any  # [B, T] a token's residues / the sequence's (residue_weights), else 0
    token_mask: Any  # [B, T] bool, residue-bearing positions


@dataclass
class BatchActivations:
    """What one batch yields: pooled vectors and token rows (CPU, storage dtype)."""

    sequences: list[PreparedSequence]
    pooled: dict[str, np.ndarray]  # pooled_column -> [B, d]
    tokens: dict[int, np.ndarray] = field(default_factory=dict)  # layer -> [residue tokens, d]


class ResidualExtractor:
    """Runs a causal LM over batches and returns pooled and token activations per layer."""

    def __init__(
        self,
        model: Any,
        *,
        pooled_layers: Sequence[int],
        token_layers: Sequence[int],
        poolings: Sequence[str],
        dtype: str,
        pad_id: int,
    ) -> None:
        import torch

        self.model = model
        fuse_gelu(model)
        anatomy = decoder_anatomy(model)
        self.body = anatomy.body
        self.n_layers = anatomy.n_layers
        self.modules = list(anatomy.stream_modules)
        self.pooled_layers = list(pooled_layers)
        self.token_layers = list(token_layers)
        self.poolings = [p for p in POOLINGS if p in poolings]
        self.storage = {"float16": torch.float16, "float32": torch.float32}[dtype]
        self.pad_id = pad_id
        self.needed = sorted(set(self.pooled_layers) | set(self.token_layers))
        self.input_device = model.get_input_embeddings().weight.device
        self._host_plan: _BatchPlan | None = None
        self._plans: dict[Any, _BatchPlan] = {}
        self._captured: dict[int, tuple[Any, Any | None]] = {}

    def _plan(self, device: Any) -> _BatchPlan:
        """The batch plan on `device` (layers may live on several GPUs with device_map)."""
        if device not in self._plans:
            host = self._host_plan
            assert host is not None
            self._plans[device] = _BatchPlan(
                last_index=host.last_index.to(device),
                residue_weight=host.residue_weight.to(device),
                token_mask=host.token_mask.to(device),
            )
        return self._plans[device]

    def _hook(self, layer: int) -> Any:
        def capture(module: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
            hidden = args[0] if args else kwargs["hidden_states"]
            self._capture(layer, hidden)
            if layer == self.needed[-1]:
                raise _StopForward  # deeper blocks, the final norm and the LM head are not needed

        return capture

    def _capture(self, layer: int, hidden: Any) -> None:
        import torch

        plan = self._plan(hidden.device)
        pooled = None
        if layer in self.pooled_layers:
            parts = []
            if "last" in self.poolings:
                rows = torch.arange(hidden.shape[0], device=hidden.device)
                parts.append(hidden[rows, plan.last_index])
            if "mean" in self.poolings:
                weight = plan.residue_weight.to(hidden.dtype).unsqueeze(1)  # [B, 1, T]
                parts.append(torch.bmm(weight, hidden).squeeze(1))
            pooled = torch.stack(parts).to(self.storage)  # [poolings, B, d]
        tokens = hidden[plan.token_mask].to(self.storage) if layer in self.token_layers else None
        self._captured[layer] = (pooled, tokens)

    def __call__(self, sequences: Sequence[PreparedSequence]) -> BatchActivations:
        import torch

        sequences = list(sequences)
        width = max(len(s.ids) for s in sequences)
        ids = torch.full((len(sequences), width), self.pad_id, dtype=torch.long)
        weight = torch.zeros((len(sequences), width), dtype=torch.float32)
        for i, s in enumerate(sequences):
            ids[i, : len(s.ids)] = torch.from_numpy(s.ids)
            weight[i, s.start : len(s.ids)] = torch.from_numpy(residue_weights(s))
        last = torch.tensor([s.start + int(np.flatnonzero(s.bearing)[-1]) for s in sequences])
        self._host_plan = _BatchPlan(last, weight, weight > 0)
        self._plans = {}
        self._captured = {}
        handles = [
            self.modules[layer].register_forward_pre_hook(self._hook(layer), with_kwargs=True)
            for layer in self.needed
        ]
        try:
            with torch.inference_mode():
                # Right padding, no attention mask: causal attention never looks ahead.
                with contextlib.suppress(_StopForward):
                    self.body(input_ids=ids.to(self.input_device), use_cache=False)
                return self._collect(sequences)
        finally:
            for handle in handles:
                handle.remove()
            self._captured = {}
            self._plans = {}
            self._host_plan = None

    def _collect(self, sequences: list[PreparedSequence]) -> BatchActivations:
        import torch

        missing = [layer for layer in self.needed if layer not in self._captured]
        if missing:
            raise CheckpointError(f"the model's forward pass never reached layer(s) {missing}")
        pooled: dict[str, np.ndarray] = {}
        # One device-to-host copy for all pooled vectors of the batch.
        stacked = [self._captured[layer][0] for layer in self.pooled_layers]
        if stacked:
            device = stacked[0].device
            host = _to_numpy(torch.stack([t.to(device) for t in stacked]))
            for li, layer in enumerate(self.pooled_layers):
                for pi, pooling in enumerate(self.poolings):
                    pooled[pooled_column(pooling, layer)] = host[li, pi]
        tokens = {layer: _to_numpy(self._captured[layer][1]) for layer in self.token_layers}
        return BatchActivations(sequences=sequences, pooled=pooled, tokens=tokens)


def _to_numpy(tensor: Any) -> np.ndarray:
    return tensor.detach().cpu().numpy()


def residue_weights(sequence: PreparedSequence) -> np.ndarray:
    """Mean-pooling weight of each token from `start` on: its residues / the sequence's.

    The mean is over residues, not tokens: a sequence's pooled vector then does not depend on
    how its tokenizer groups residues (a round that favours long repeats, which BPE merges
    into fewer tokens, would otherwise shift the mean by the token count alone). Tokens without
    residues weigh 0; for one token per residue every weight is 1/n, as before.
    """
    widths = (sequence.spans[:, 1] - sequence.spans[:, 0]).astype(np.float64)
    return (widths / sequence.n_residues).astype(np.float32)


# ----------------------------------------------------------------------------- writing


def _write_pooled_rows(writer: PooledWriter, model: str, batch: BatchActivations) -> None:
    seqs = batch.sequences
    writer.write(
        [s.seq_id for s in seqs],
        model,
        [s.length for s in seqs],
        batch.pooled,
        embedded_lengths=[s.n_residues for s in seqs],
    )


def _write_token_rows(writer: TokenWriter, layer: int, batch: BatchActivations) -> None:
    seqs = batch.sequences
    writer.write(
        [s.seq_id for s in seqs],
        [s.residues for s in seqs],
        batch.tokens[layer],
        spans=[s.token_spans for s in seqs],
    )


class _Lane:
    """A thread that applies `write` to each queued batch; at most `depth` batches wait."""

    _DONE = object()

    def __init__(
        self, name: str, write: Callable[[BatchActivations], None], depth: int = 2
    ) -> None:
        self.write = write
        self.queue: queue.Queue[Any] = queue.Queue(maxsize=depth)
        self.error: BaseException | None = None
        self.seconds = 0.0
        self.thread = threading.Thread(target=self._run, name=f"plmdiff-{name}", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while True:
            item = self.queue.get()
            if item is self._DONE:
                return
            if self.error is not None:
                continue  # keep draining so that put() never blocks forever
            try:
                start = time.perf_counter()
                self.write(item)
                self.seconds += time.perf_counter() - start
            except BaseException as exc:
                self.error = exc

    def stop(self) -> None:
        self.queue.put(self._DONE)
        self.thread.join()


class _BackgroundWriter:
    """One writer thread per output file (the pooled part and each token layer).

    Writing batch i (float conversion, zstd) overlaps computing batch i+1, and the files
    compress in parallel; pyarrow releases the GIL while it encodes and compresses.
    """

    def __init__(
        self, pooled: PooledWriter | None, tokens: Mapping[int, TokenWriter], model: str
    ) -> None:
        self.lanes = []
        if pooled is not None:
            self.lanes.append(_Lane("pooled", functools.partial(_write_pooled_rows, pooled, model)))
        self.lanes += [
            _Lane(f"layer{layer:02d}", functools.partial(_write_token_rows, writer, layer))
            for layer, writer in tokens.items()
        ]

    @property
    def seconds(self) -> float:
        """Time the busiest writer thread spent writing."""
        return max(lane.seconds for lane in self.lanes)

    def put(self, batch: BatchActivations) -> None:
        self._raise()
        for lane in self.lanes:
            lane.queue.put(batch)

    def finish(self) -> None:
        for lane in self.lanes:
            lane.stop()
        self._raise()

    def abort(self) -> None:
        for lane in self.lanes:
            lane.error = lane.error or RuntimeError("aborted")
            lane.stop()

    def _raise(self) -> None:
        for lane in self.lanes:
            if lane.error is not None:
                raise lane.error


# ----------------------------------------------------------------------------- the rule's logic


@dataclass
class ExtractionSummary:
    n_sequences: int
    n_tokens: int
    n_truncated: int
    n_batches: int
    seconds: float
    write_seconds: float

    @property
    def tokens_per_second(self) -> float:
        return self.n_tokens / self.seconds if self.seconds else float("nan")


def iter_batch_activations(
    extractor: ResidualExtractor, sequences: Sequence[PreparedSequence], batch_tokens: int
) -> Iterator[BatchActivations]:
    """Activations batch by batch (longest first); a batch that runs out of GPU memory is halved."""
    batches = [[sequences[i] for i in idx] for idx in length_batches(sequences, batch_tokens)]
    yield from map_with_oom_split(batches, extractor, what="extraction batch")


def write_activations(
    batches: Iterable[BatchActivations],
    *,
    pooled_path: str | os.PathLike | None,
    token_paths: Mapping[int, str | os.PathLike],
    pooled_layers: Sequence[int],
    poolings: Sequence[str],
    d_model: int,
    settings: ExtractionSettings,
    model: str,
    metadata: Mapping[str, Any],
) -> ExtractionSummary:
    """Write batches to the pooled part (none: `pooled_path` None) and one token part per layer
    of `token_paths`, all atomically."""
    start = time.perf_counter()
    n_seq = n_tok = n_trunc = n_batches = 0
    truncated: list[str] = []
    with ExitStack() as stack:
        pooled = (
            None
            if pooled_path is None
            else stack.enter_context(
                PooledWriter(
                    pooled_path,
                    layers=pooled_layers,
                    poolings=poolings,
                    d_model=d_model,
                    dtype=settings.dtype,
                    metadata=metadata,
                )
            )
        )
        tokens = {
            layer: stack.enter_context(
                TokenWriter(
                    path,
                    layer=layer,
                    d_model=d_model,
                    dtype=settings.dtype,
                    metadata=metadata,
                    row_group_rows=settings.rows_per_file,
                )
            )
            for layer, path in token_paths.items()
        }
        writer = _BackgroundWriter(pooled, tokens, model)
        try:
            for batch in batches:
                writer.put(batch)
                n_batches += 1
                n_seq += len(batch.sequences)
                n_tok += sum(int(s.bearing.sum()) for s in batch.sequences)
                for s in batch.sequences:
                    if s.truncated:
                        n_trunc += 1
                        if len(truncated) < MAX_LISTED_TRUNCATIONS:
                            truncated.append(s.seq_id)
                if n_batches % 20 == 0:
                    log.info("%d sequences, %d residue tokens embedded", n_seq, n_tok)
            writer.finish()
        except BaseException:
            writer.abort()
            raise
        footer = {
            "n_sequences": n_seq,
            "n_tokens": n_tok,
            "n_truncated": n_trunc,
            "truncated_seq_ids": truncated,
        }
        # Close (and rename) every file only when all of them are complete.
        if pooled is not None:
            pooled.close(footer)
        for writer_ in tokens.values():
            writer_.close(footer)
    return ExtractionSummary(
        n_sequences=n_seq,
        n_tokens=n_tok,
        n_truncated=n_trunc,
        n_batches=n_batches,
        seconds=time.perf_counter() - start,
        write_seconds=writer.seconds,
    )


def extract_part(
    *,
    fasta_path: str | os.PathLike,
    record: CheckpointRecord,
    checkpoint_dir: str | os.PathLike,
    embedder: str,
    model: str,
    part: int,
    fmt: PromptFormat,
    settings: ExtractionSettings,
    pooled_path: str | os.PathLike | None,
    token_paths: Mapping[int, str | os.PathLike],
    device: Any = "cpu",
    allow_pickle: bool = False,
) -> ExtractionSummary:
    """Embed part `part` of `fasta_path` with `record`'s checkpoint: the pooled part of every
    layer of activations.layers (`pooled_path`; None: no pooled part) and the token part of each
    layer of `token_paths`."""
    return_freed_memory_to_os()
    n_layers, d_model = record.n_layers, record.d_model
    pooled_layers = [] if pooled_path is None else settings.pooled_layers(n_layers)
    token_layers = sorted(int(layer) for layer in token_paths)
    _check_layers("activations.token_layers", token_layers, n_layers)
    if not pooled_layers and not token_layers:
        raise DataError(
            f"extraction of part {part} of {fasta_path}: neither a pooled nor a token output"
        )
    entries = shard_sequences(list(read_fasta(fasta_path)), part, settings.shards)
    tokenizer = load_tokenizer(checkpoint_dir)
    special = record.special_ids
    sequences = prepare_sequences(
        entries,
        tokenizer,
        fmt,
        special,
        n_positions=record.n_positions,
        truncate=settings.truncate,
        source=str(fasta_path),
        embedder=f"embedder '{embedder}' ({record.model})",
    )
    prefix = len(prompt_ids(tokenizer, fmt, special))
    log.info(
        "part %d/%d of %s: %d sequences, %d residues; embedder %s (%s, %d layers x %d)",
        part,
        settings.shards,
        fasta_path,
        len(sequences),
        sum(s.n_residues for s in sequences),
        embedder,
        record.model,
        n_layers,
        d_model,
    )
    net = load_embedder(checkpoint_dir, settings, device=device, allow_pickle=allow_pickle)
    extractor = ResidualExtractor(
        net,
        pooled_layers=pooled_layers,
        token_layers=token_layers,
        poolings=settings.poolings,
        dtype=settings.dtype,
        pad_id=special.eos if special.eos is not None else special.pad,
    )
    metadata = {
        "embedder": embedder,
        "embedder_model": record.model,
        "embedder_fingerprint": record.fingerprint,
        "embedder_checkpoint": str(checkpoint_dir),
        "model": model,
        "n_layers": n_layers,
        "prompt_format": fmt.format,
        "prompt_label": fmt.label,
        "text_convention": TEXT_CONVENTION,
        "truncate": settings.truncate,
        "max_residues": max_residues(record.n_positions, prefix),
        "part": part,
        "n_parts": settings.shards,
    }
    summary = write_activations(
        iter_batch_activations(extractor, sequences, settings.batch_tokens),
        pooled_path=pooled_path,
        token_paths=token_paths,
        pooled_layers=pooled_layers,
        poolings=settings.poolings,
        d_model=d_model,
        settings=settings,
        model=model,
        metadata=metadata,
    )
    log.info(
        "wrote %d sequences (%d truncated), %d residue tokens in %d batches: %.0f tokens/s "
        "(writer busy %.1f s of %.1f s)",
        summary.n_sequences,
        summary.n_truncated,
        summary.n_tokens,
        summary.n_batches,
        summary.tokens_per_second,
        summary.write_seconds,
        summary.seconds,
    )
    return summary


def return_freed_memory_to_os(threshold: int = 1 << 20) -> bool:
    """Make glibc serve allocations >= `threshold` bytes with mmap, returned to the OS on free.

    Batches have varying shapes; glibc's adaptive mmap threshold otherwise moves such buffers
    into the heap, whose fragments are kept, and the peak RSS creeps up with the number of
    batches (demo model, 5x the sequences: +33% peak RSS without this, +1% with it). A no-op
    where glibc's mallopt is not available.
    """
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name)
        m_mmap_threshold = -3
        return bool(libc.mallopt(m_mmap_threshold, int(threshold)))
    except (OSError, AttributeError, TypeError):
        return False


def load_embedder(
    checkpoint_dir: str | os.PathLike,
    settings: ExtractionSettings,
    *,
    device: Any = "cpu",
    allow_pickle: bool = False,
) -> Any:
    """The embedding model: on `device`, or spread over `settings.gpus` GPUs with
    device_map='auto' (accelerate) for a model that does not fit on one."""
    if settings.gpus > 1:
        log.info("loading %s across %d GPUs (device_map='auto')", checkpoint_dir, settings.gpus)
        return load_model(checkpoint_dir, allow_pickle=allow_pickle, device_map="auto")
    return load_model(checkpoint_dir, allow_pickle=allow_pickle, device=device)
