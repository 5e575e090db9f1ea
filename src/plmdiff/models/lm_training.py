"""Plain causal-LM training on sequences in the model's text format (demo base model, test models)."""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from plmdiff.models.text import PromptFormat, SpecialIds, encode_sequences

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LMTrainingConfig:
    epochs: float = 1.0
    lr: float = 2e-3
    batch_size: int = 16
    weight_decay: float = 0.01
    warmup_fraction: float = 0.05
    seed: int = 0
    max_steps: int | None = None


def _batches(encoded: list[list[int]], batch_size: int, pad: int, generator: Any) -> Any:
    import torch

    order = torch.randperm(len(encoded), generator=generator).tolist()
    for i in range(0, len(order), batch_size):
        chunk = [encoded[j] for j in order[i : i + batch_size]]
        width = max(map(len, chunk))
        ids = torch.full((len(chunk), width), pad, dtype=torch.long)
        labels = torch.full((len(chunk), width), -100, dtype=torch.long)
        mask = torch.zeros((len(chunk), width), dtype=torch.long)
        for row, seq in enumerate(chunk):
            ids[row, : len(seq)] = torch.tensor(seq)
            labels[row, : len(seq)] = torch.tensor(seq)
            mask[row, : len(seq)] = 1
        yield ids, mask, labels


def train_causal_lm(
    model: Any,
    tokenizer: Any,
    fmt: PromptFormat,
    special: SpecialIds,
    sequences: Sequence[str],
    cfg: LMTrainingConfig,
) -> list[float]:
    """Train `model` in place on `sequences` as scoring text; returns the per-step losses."""
    import torch

    torch.manual_seed(cfg.seed)
    encoded = [e.ids for e in encode_sequences(tokenizer, fmt, special, sequences)]
    steps_per_epoch = math.ceil(len(encoded) / cfg.batch_size)
    total = max(1, round(cfg.epochs * steps_per_epoch))
    if cfg.max_steps is not None:
        total = min(total, cfg.max_steps)
    warmup = max(1, int(cfg.warmup_fraction * total))
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)

    def schedule(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
    generator = torch.Generator().manual_seed(cfg.seed)
    device = next(model.parameters()).device
    model.train()
    losses: list[float] = []
    step = 0
    while step < total:
        for ids, mask, labels in _batches(encoded, cfg.batch_size, special.pad, generator):
            ids, mask, labels = ids.to(device), mask.to(device), labels.to(device)
            out = model(input_ids=ids, attention_mask=mask, labels=labels)
            out.loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            losses.append(out.loss.item())
            step += 1
            if step % 50 == 0 or step == total:
                log.info("step %d/%d loss %.4f", step, total, losses[-1])
            if step >= total:
                break
    model.eval()
    return losses


def mean_nll(
    model: Any,
    tokenizer: Any,
    fmt: PromptFormat,
    special: SpecialIds,
    sequences: Sequence[str],
    batch_size: int = 32,
) -> float:
    """Mean next-token loss per predicted token over the scoring texts (exp of it: perplexity)."""
    import torch

    encoded = [e.ids for e in encode_sequences(tokenizer, fmt, special, sequences)]
    total_loss, total_tokens = 0.0, 0
    generator = torch.Generator().manual_seed(0)
    device = next(model.parameters()).device
    with torch.inference_mode():
        for ids, mask, labels in _batches(encoded, batch_size, special.pad, generator):
            ids, mask, labels = ids.to(device), mask.to(device), labels.to(device)
            logits = model(input_ids=ids, attention_mask=mask).logits[:, :-1]
            target = labels[:, 1:]
            loss = torch.nn.functional.cross_entropy(
                logits.reshape(-1, logits.shape[-1]),
                target.reshape(-1),
                ignore_index=-100,
                reduction="sum",
            )
            total_loss += float(loss)
            total_tokens += int((target != -100).sum())
    return total_loss / max(1, total_tokens)
