"""Batched, KV-cached generation from a causal protein LM, reproducible per sequence.

The lab's loop (`model.generate`, 20 sequences a call) pays for every row until the longest row of
the call ends. Here all rows share the prompt, so they share positions and need no padding: the
prompt is run once, its cache is copied to every row, and rows that emitted the stop token are
dropped from the batch (and the cache, plmdiff.sampling.kv_cache) as they finish.

Each token is chosen by plmdiff.sampling.logits with noise keyed by (sequence, step, token)
(plmdiff.sampling.rng), so sequence `index` is a function of (seed, index) alone. (Batched matrix
products may differ in the last bit between batch shapes; a draw flips only if two candidates'
perturbed scores tie to that precision, which is vanishingly rare.)
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from plmdiff.core.errors import ConfigError
from plmdiff.core.oom import map_with_oom_split
from plmdiff.models.anatomy import ConfigShape
from plmdiff.models.text import PromptFormat, SpecialIds, decode_residues, prompt_ids
from plmdiff.sampling.kv_cache import new_cache
from plmdiff.sampling.logits import choose_tokens
from plmdiff.sampling.rng import sequence_key, token_hashes
from plmdiff.sampling.settings import Sample, SamplingSettings

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


@dataclass
class _Drawn:
    """One row's generated token ids (stop token included), whether it stopped, and the summed
    log-probability of those tokens under the model."""

    tokens: list[int]
    ended: bool
    logprob: float


def model_context(model: Any) -> int:
    """The longest input the model takes, prompt included (plmdiff.models.anatomy)."""
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
    token_hash = token_hashes(vocab, device)
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
    """exp(mean NLL of the generated tokens); nan for a truncated row, whose tail is missing."""
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
