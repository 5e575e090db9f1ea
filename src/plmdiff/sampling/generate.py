"""Sequence generation from a causal protein LM: batched, KV-cached, reproducible per sequence.

The lab's loop (`model.generate`, 20 sequences a call) pays for every row until the longest row of
the call ends. Here all rows share the prompt, so they share positions and need no padding: the
prompt is run once, its cache is copied to every row, and rows that emitted the stop token are
dropped from the batch (and the cache) as they finish. The cache is preallocated and grows by
doubling instead of being concatenated at every step.

Sampling follows transformers' logits processors: the repetition penalty (divide positive,
multiply negative logits of every token already in the sequence, prompt included), then the
temperature, then top-k. The draw is the Gumbel-max trick with noise from a stateless hash of
(sequence key, step, token), so sequence `index` is a function of (seed, index) alone: it does not
depend on the batch it shares, on OOM splitting or on the number of shards. (Batched matrix
products may differ in the last bit between batch shapes; a draw flips only if two candidates'
perturbed scores tie to that precision, which is vanishingly rare.)
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from plmdiff.core.errors import ConfigError
from plmdiff.core.oom import map_with_oom_split
from plmdiff.core.runtime import derive_seed
from plmdiff.models.anatomy import ConfigShape
from plmdiff.models.text import PromptFormat, SpecialIds, decode_residues, prompt_ids

log = logging.getLogger(__name__)

# 'auto' batch sizes. On a CPU the cost per row still falls from 64 to 256 rows (bench/sampling.py:
# 1.95x vs 2.5x the lab's loop); the KV budget keeps a ZymCTRL-size model within the job's memory.
CPU_MAX_BATCH = 256
CPU_KV_BUDGET = 2 * 2**30
MAX_AUTO_BATCH = 1024
# Share of free GPU memory that the KV caches of one batch may take (the rest: activations,
# logits, the allocator's fragmentation). The cache is allocated at full length up front.
CUDA_MEMORY_FRACTION = 0.75
# Drop finished rows once this share of the batch has finished: compacting copies the cache,
# so it is worth doing only when a good part of the batch is dead weight.
COMPACT_FRACTION = 0.125
SYNC_EVERY = 8
_MASK32 = 0xFFFFFFFF


@dataclass(frozen=True)
class SamplingSettings:
    """How sequences are drawn; defaults are the ZymCTRL lab's (anchors.md)."""

    top_k: int = 9
    temperature: float = 1.0
    repetition_penalty: float = 1.2
    max_length: int = 1024
    batch_size: int | str = "auto"

    @classmethod
    def from_config(cls, sampling_section: Mapping[str, Any]) -> SamplingSettings:
        keys = ("top_k", "temperature", "repetition_penalty", "max_length", "batch_size")
        settings = cls(**{k: sampling_section[k] for k in keys if k in sampling_section})
        settings.check()
        return settings

    def check(self) -> None:
        if self.batch_size != "auto" and not (
            isinstance(self.batch_size, int) and self.batch_size >= 1
        ):
            raise ConfigError(
                f"sampling.batch_size: {self.batch_size!r} is not accepted; use 'auto' or an integer >= 1"
            )
        if self.top_k < 0:
            raise ConfigError(f"sampling.top_k: {self.top_k} must be >= 0 (0 disables top-k)")
        if not self.temperature > 0:
            raise ConfigError(f"sampling.temperature: {self.temperature} must be > 0")
        if not self.repetition_penalty > 0:
            raise ConfigError(
                f"sampling.repetition_penalty: {self.repetition_penalty} must be > 0 (1.0 disables it)"
            )
        if self.max_length < 2:
            raise ConfigError(f"sampling.max_length: {self.max_length} must be >= 2")


@dataclass
class Sample:
    """One drawn sequence. `n_tokens` counts generated tokens, the stop token included;
    `ppl` is exp(mean negative log-likelihood of those tokens) under the generating model
    (its own distribution, before penalty, temperature and top-k), nan when not ended."""

    index: int
    sequence: str
    ended: bool
    n_tokens: int
    ppl: float


# ----------------------------------------------------------------------------- counter-based noise


def _mul32(x: Any, c: int) -> Any:
    """(x * c) mod 2**32 for x in [0, 2**32) held in int64, without int64 overflow."""
    lo = x & 0xFFFF
    hi = x >> 16
    return (lo * c + (((hi * c) & 0xFFFF) << 16)) & _MASK32


def _mix32(x: Any) -> Any:
    """A 32-bit integer hash with good avalanche (Wellons' lowbias32) on int64 tensors."""
    x = x ^ (x >> 16)
    x = _mul32(x, 0x7FEB352D)
    x = x ^ (x >> 15)
    x = _mul32(x, 0x846CA68B)
    return x ^ (x >> 16)


def sequence_key(seed: int, index: int) -> int:
    """The 32-bit key of sequence `index`'s random stream."""
    return derive_seed(seed, "sequence", index) & _MASK32


def gumbel_noise(keys: Any, step: int, token_hash: Any) -> Any:
    """Gumbel(0, 1) noise [rows, vocab] that depends only on (key, step, token)."""
    import torch

    row = _mix32((keys + step * 0x9E3779B9) & _MASK32)
    bits = _mix32(row[:, None] ^ token_hash[None, :])
    # 24 bits fit a float32 mantissa exactly; the half-step keeps u strictly inside (0, 1).
    u = ((bits >> 8).to(torch.float32) + 0.5) * (1.0 / (1 << 24))
    return -torch.log(-torch.log(u))


# ----------------------------------------------------------------------------- logits processing


def apply_repetition_penalty(logits: Any, seen: Any, penalty: float) -> Any:
    """transformers' RepetitionPenaltyLogitsProcessor on a [rows, vocab] mask of tokens seen."""
    if penalty == 1.0:
        return logits
    penalised = logits.where(logits < 0, logits / penalty)
    penalised = penalised.where(logits >= 0, logits * penalty)
    return logits.where(~seen, penalised)


def top_k_filter(logits: Any, k: int) -> Any:
    """transformers' TopKLogitsWarper: keep the k best (ties with the k-th kept), others -inf."""
    import torch

    if k <= 0 or k >= logits.shape[-1]:
        return logits
    kth = torch.topk(logits, k, dim=-1).values[..., -1:]
    return logits.masked_fill(logits < kth, float("-inf"))


def choose_tokens(
    logits: Any, seen: Any, keys: Any, step: int, token_hash: Any, settings: SamplingSettings
) -> Any:
    """Next token per row: penalty, temperature, top-k, then a Gumbel-max draw."""
    scores = apply_repetition_penalty(logits, seen, settings.repetition_penalty)
    if settings.temperature != 1.0:
        scores = scores / settings.temperature
    scores = top_k_filter(scores, settings.top_k)
    return (scores + gumbel_noise(keys, step, token_hash)).argmax(dim=-1)


# ----------------------------------------------------------------------------- KV cache


def _growing_layer_class() -> type:
    from transformers.cache_utils import DynamicLayer

    class GrowingLayer(DynamicLayer):
        """A DynamicLayer that writes into a buffer grown by doubling instead of `torch.cat`
        at every step (which copies the whole cache per token: quadratic in the length)."""

        length = 0

        def lazy_initialization(self, key_states: Any, value_states: Any) -> None:
            super().lazy_initialization(key_states, value_states)
            self._k = self._v = None
            self.length = 0

        def _reserve(self, new_length: int, like: Any) -> None:
            import torch

            capacity = 0 if self._k is None else self._k.shape[-2]
            if new_length <= capacity:
                return
            capacity = max(new_length, 2 * capacity, 64)
            shape = (*like.shape[:-2], capacity, like.shape[-1])
            k = torch.empty(shape, dtype=like.dtype, device=like.device)
            v = torch.empty(shape, dtype=like.dtype, device=like.device)
            if self.length:
                k[..., : self.length, :] = self._k[..., : self.length, :]
                v[..., : self.length, :] = self._v[..., : self.length, :]
            self._k, self._v = k, v

        def update(self, key_states: Any, value_states: Any, *args: Any, **kwargs: Any) -> Any:
            if not self.is_initialized:
                self.lazy_initialization(key_states, value_states)
            end = self.length + key_states.shape[-2]
            self._reserve(end, key_states)
            self._k[..., self.length : end, :] = key_states
            self._v[..., self.length : end, :] = value_states
            self.length = end
            self.keys = self._k[..., :end, :]
            self.values = self._v[..., :end, :]
            return self.keys, self.values

        def get_seq_length(self) -> int:
            return self.length if self.is_initialized else 0

        def batch_repeat_interleave(self, repeats: int) -> None:
            self._select(lambda t: t.repeat_interleave(repeats, dim=0))

        def batch_select_indices(self, indices: Any) -> None:
            self._select(lambda t: t.index_select(0, indices))

        def _select(self, fn: Any) -> None:
            if not self.length:
                return
            # Only the filled part is copied; the copy gets head-room for the steps to come.
            keys, values = fn(self.keys), fn(self.values)
            self._k = self._v = None
            n, self.length = self.length, 0
            self._reserve(max(n, self._capacity_hint), keys)
            self._k[..., :n, :] = keys
            self._v[..., :n, :] = values
            self.length = n
            self.keys = self._k[..., :n, :]
            self.values = self._v[..., :n, :]

        _capacity_hint = 0

    return GrowingLayer


def new_cache(total_length: int) -> Any:
    """An empty KV cache for sequences of at most `total_length` tokens."""
    from transformers.cache_utils import DynamicCache

    layer_class = _growing_layer_class()
    layer_class._capacity_hint = total_length
    cache = DynamicCache()
    cache.layer_class_to_replicate = layer_class
    cache.layers = []
    return cache


# ----------------------------------------------------------------------------- generation


@dataclass
class _Drawn:
    tokens: list[int]
    ended: bool
    logprob: float


def model_context(model: Any) -> int:
    return ConfigShape.of(model.config).n_positions


def generate_batch(
    model: Any,
    prompt: Sequence[int],
    keys: Sequence[int],
    settings: SamplingSettings,
    stop_token: int,
    max_new_tokens: int,
    device: Any,
) -> list[_Drawn]:
    """Draw one continuation of `prompt` per key; rows leave the batch when they stop."""
    import torch

    n_rows = len(keys)
    vocab = model.get_output_embeddings().weight.shape[0]
    token_hash = _mix32(torch.arange(vocab, device=device, dtype=torch.int64) ^ 0x5BD1E995)
    key_t = torch.tensor(list(keys), dtype=torch.int64, device=device)
    prompt_t = torch.tensor([list(prompt)], dtype=torch.long, device=device)

    cache = new_cache(len(prompt) + max_new_tokens)
    with torch.inference_mode():
        # The prompt is the same for every row: run it once and copy its cache.
        out = model(input_ids=prompt_t, past_key_values=cache, use_cache=True, logits_to_keep=1)
        cache.batch_repeat_interleave(n_rows)
        logits = out.logits[:, -1, :].float().expand(n_rows, -1)
        seen = torch.zeros((n_rows, logits.shape[-1]), dtype=torch.bool, device=device)
        seen[:, prompt_t[0]] = True

        tokens = torch.full((n_rows, max_new_tokens), -1, dtype=torch.long, device=device)
        logprob = torch.zeros(n_rows, dtype=torch.float64, device=device)
        n_generated = torch.zeros(n_rows, dtype=torch.long, device=device)
        ended = torch.zeros(n_rows, dtype=torch.bool, device=device)
        rows = torch.arange(n_rows, device=device)  # original row of each batch row
        alive = torch.ones(n_rows, dtype=torch.bool, device=device)
        # Reading the number of live rows waits for the GPU; on CUDA do it every few steps so the
        # host keeps queueing work (finished rows meanwhile run along, masked out).
        check_every = 1 if torch.device(device).type == "cpu" else SYNC_EVERY

        for step in range(max_new_tokens):
            nxt = choose_tokens(logits, seen, key_t[rows], step, token_hash, settings)
            lp = torch.log_softmax(logits, dim=-1).gather(1, nxt[:, None])[:, 0]
            # Masked updates instead of boolean indexing, which would wait for the GPU.
            tokens[rows, step] = torch.where(alive, nxt, tokens[rows, step])
            logprob[rows] += torch.where(alive, lp.double(), 0.0)
            n_generated[rows] += alive.long()
            stopped = alive & (nxt == stop_token)
            ended[rows] |= stopped
            alive &= ~stopped
            if step == max_new_tokens - 1:
                break
            if (step + 1) % check_every == 0:
                n_alive = int(alive.sum())
                if n_alive == 0:
                    break
                if len(rows) - n_alive >= max(1, math.ceil(COMPACT_FRACTION * len(rows))):
                    keep = alive.nonzero()[:, 0]
                    cache.batch_select_indices(keep)
                    rows, nxt, seen, alive = rows[keep], nxt[keep], seen[keep], alive[keep]
            seen[torch.arange(len(rows), device=device), nxt] = True
            out = model(input_ids=nxt[:, None], past_key_values=cache, use_cache=True)
            logits = out.logits[:, -1, :].float()

    tokens_l = tokens.cpu().tolist()
    counts = n_generated.cpu().tolist()
    ended_l = ended.cpu().tolist()
    logprob_l = logprob.cpu().tolist()
    return [_Drawn(tokens_l[i][: counts[i]], ended_l[i], logprob_l[i]) for i in range(n_rows)]


def kv_bytes_per_token(model: Any) -> int:
    """Bytes of KV cache one token of one sequence takes (keys and values of every layer)."""
    element = next(model.parameters()).element_size()
    return ConfigShape.of(model.config).kv_bytes_per_token(element)


def resolve_batch_size(settings: SamplingSettings, model: Any, device: Any) -> int:
    """The configured batch size, or for 'auto' as many sequences as the memory holds at full
    length: on CUDA a share of the free memory, on a CPU a fixed KV budget (at most 256 rows,
    where per-row cost stops falling; 256 rows of the demo model at 512 tokens take 0.8 GB)."""
    import torch

    if settings.batch_size != "auto":
        return int(settings.batch_size)
    device = torch.device(device)
    vocab = model.get_output_embeddings().weight.shape[0]
    # KV cache at full length plus float32 logits and their processed copies.
    per_sequence = kv_bytes_per_token(model) * settings.max_length + 16 * vocab
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        budget, ceiling, where = free * CUDA_MEMORY_FRACTION, MAX_AUTO_BATCH, "GPU"
    else:
        budget, ceiling, where = CPU_KV_BUDGET, CPU_MAX_BATCH, "CPU"
    n = max(1, min(ceiling, int(budget // per_sequence)))
    if n >= 16:
        n -= n % 8
    log.info(
        "batch_size auto: %d on %s (budget %.1f GiB, %.1f MiB per sequence of %d tokens)",
        n,
        where,
        budget / 2**30,
        per_sequence / 2**20,
        settings.max_length,
    )
    return n


def _perplexity(drawn: _Drawn) -> float:
    if not drawn.ended or not drawn.tokens:
        return math.nan
    return math.exp(-drawn.logprob / len(drawn.tokens))


def sample_sequences(
    model: Any,
    tokenizer: Any,
    fmt: PromptFormat,
    special: SpecialIds,
    indices: Sequence[int],
    settings: SamplingSettings,
    seed: int,
    device: Any,
) -> list[Sample]:
    """Draw sequence `index` for each of `indices` (in that order) from the stream (seed, index).

    `max_length` counts prompt and generated tokens and is capped at the model's context.
    The model must already be on `device`; it is put in eval mode (dropout off) for the draw and
    left in the mode it came in.
    """
    settings.check()
    prompt = prompt_ids(tokenizer, fmt, special)
    stop = fmt.stop_token(special)
    total = settings.max_length
    context = model_context(model)
    if context is not None and total > context:
        log.warning(
            "sampling.max_length %d exceeds the model's context (%d positions); using %d",
            total,
            context,
            context,
        )
        total = context
    max_new = total - len(prompt)
    if max_new < 1:
        raise ConfigError(
            f"sampling.max_length: {settings.max_length} leaves no room to generate after the "
            f"{len(prompt)}-token prompt; use at least {len(prompt) + 1}"
        )
    indices = list(indices)
    if not indices:
        return []
    batch_size = resolve_batch_size(settings, model, device)
    keys = {i: sequence_key(seed, i) for i in indices}

    def run(batch: Sequence[int]) -> list[Sample]:
        drawn = generate_batch(
            model, prompt, [keys[i] for i in batch], settings, stop, max_new, device
        )
        return [
            Sample(
                index=i,
                sequence=decode_residues(tokenizer, d.tokens, special),
                ended=d.ended,
                n_tokens=len(d.tokens),
                ppl=_perplexity(d),
            )
            for i, d in zip(batch, drawn, strict=True)
        ]

    batches = [indices[i : i + batch_size] for i in range(0, len(indices), batch_size)]
    samples: list[Sample] = []
    was_training = model.training
    model.eval()
    try:
        with decoding_attention(model, device):
            for done in map_with_oom_split(batches, run, what="sampling batch"):
                samples.extend(done)
                log.info(
                    "sampled %d/%d sequences (%d ended)",
                    len(samples),
                    len(indices),
                    sum(s.ended for s in samples),
                )
    finally:
        model.train(was_training)
    return samples


@contextlib.contextmanager
def decoding_attention(model: Any, device: Any) -> Iterator[None]:
    """Eager attention while decoding on a CPU, the model's own choice elsewhere; restored after.

    One query token against a KV cache that is a slice of a larger buffer: torch's CPU
    scaled_dot_product_attention copies the strided keys and values first, plain matmuls read
    them in place (bench/sampling.py: 22% more tokens/s on the demo model, identical sequences).
    GPUs keep SDPA's fused kernels.
    """
    import torch

    current = getattr(model.config, "_attn_implementation", None)
    switch = (
        torch.device(device).type == "cpu"
        and current == "sdpa"
        and getattr(model, "_can_set_attn_implementation", lambda: False)()
    )
    if switch:
        model.set_attn_implementation("eager")
    try:
        yield
    finally:
        if switch:
            model.set_attn_implementation(current)


# ----------------------------------------------------------------------------- shards (rule `sample`)

SHARD_SCHEMA_FIELDS = (
    ("seq_id", "string"),
    ("model", "string"),
    ("shard", "int32"),
    ("index", "int32"),
    ("sequence", "string"),
    ("ended", "bool_"),
    ("n_tokens", "int32"),
    ("length", "int32"),
    ("ppl", "float64"),
)


def shard_indices(n_sequences: int, shards: int, shard: int) -> list[int]:
    """Global sequence indices of one shard: contiguous blocks, so that the shards in order
    list 0..n_sequences-1 in order, whatever their number."""
    if not 0 <= shard < shards:
        raise ConfigError(f"sampling shard {shard} does not exist; sampling.shards is {shards}")
    return list(range(shard * n_sequences // shards, (shard + 1) * n_sequences // shards))


def model_seed(seed: int, model: str) -> int:
    """The seed of one model's sequence streams (sequence i: sequence_key(model_seed, i))."""
    return derive_seed(seed, "sample", model)


def samples_table(
    samples: Sequence[Sample], model: str, shard: int, metadata: Mapping[str, Any]
) -> Any:
    """One shard's samples as an Arrow table (every output, truncated ones included)."""
    import json

    import pyarrow as pa

    from plmdiff.core.fasta import sequence_id

    schema = pa.schema([(name, getattr(pa, kind)()) for name, kind in SHARD_SCHEMA_FIELDS])
    columns = {
        "seq_id": [sequence_id(model, shard, s.index) for s in samples],
        "model": [model] * len(samples),
        "shard": [shard] * len(samples),
        "index": [s.index for s in samples],
        "sequence": [s.sequence for s in samples],
        "ended": [s.ended for s in samples],
        "n_tokens": [s.n_tokens for s in samples],
        "length": [len(s.sequence) for s in samples],
        "ppl": [s.ppl for s in samples],
    }
    table = pa.table(columns, schema=schema)
    return table.replace_schema_metadata({"plmdiff": json.dumps(dict(metadata), sort_keys=True)})


def write_samples(path: Any, table: Any) -> None:
    import pyarrow.parquet as pq

    from plmdiff.core.runtime import atomic_path

    with atomic_path(path) as tmp:
        pq.write_table(table, tmp, compression="zstd")


def sample_shard(
    record_path: str,
    model: str,
    shard: int,
    sampling_section: Mapping[str, Any],
    prompt_section: Mapping[str, Any],
    *,
    device: str = "auto",
    allow_pickle: bool = False,
    threads: int | None = None,
) -> Any:
    """The `sample` rule: load the recorded checkpoint, draw this shard's sequences, return the table."""
    import time

    import torch

    from plmdiff.core.runtime import resolve_device
    from plmdiff.models.checkpoints import CheckpointRecord, load_model, load_tokenizer

    if threads:
        torch.set_num_threads(threads)
    record = CheckpointRecord.read(record_path)
    settings = SamplingSettings.from_config(sampling_section)
    fmt = PromptFormat.from_config(prompt_section)
    indices = shard_indices(sampling_section["n_sequences"], sampling_section["shards"], shard)
    dev = resolve_device(device)
    model_obj = load_model(record.path, allow_pickle=allow_pickle, device=dev)
    tokenizer = load_tokenizer(record.path)
    seed = model_seed(sampling_section["seed"], model)
    log.info(
        "model %s shard %d: sequences %s, %s",
        model,
        shard,
        f"{indices[0]}..{indices[-1]}" if indices else "none",
        settings,
    )
    start = time.perf_counter()
    samples = sample_sequences(
        model_obj, tokenizer, fmt, record.special_ids, indices, settings, seed, dev
    )
    seconds = time.perf_counter() - start
    n_tokens = sum(s.n_tokens for s in samples)
    log.info(
        "%d sequences, %d ended, %d tokens in %.1f s (%.0f tokens/s)",
        len(samples),
        sum(s.ended for s in samples),
        n_tokens,
        seconds,
        n_tokens / seconds if seconds else float("nan"),
    )
    metadata = {
        "model": model,
        "shard": shard,
        "checkpoint_fingerprint": record.fingerprint,
        "seed": sampling_section["seed"],
        "model_seed": seed,
        "settings": {k: getattr(settings, k) for k in settings.__dataclass_fields__},
        "prompt": fmt.generation_prompt(),
        "device": str(dev),
        "torch": torch.__version__,
    }
    return samples_table(samples, model, shard, metadata)
