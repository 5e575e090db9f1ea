"""How protein sequences become model text, and back.

ZymCTRL's training text is `{label}<sep><start>{SEQ}<end><|endoftext|>` and its generation prompt
`{label}<sep><start>` (AI4PDLab/DPO_pLM). `plain` models see BOS + sequence + EOS and are prompted
with BOS alone; generation stops at EOS, so training and scoring text end with it too. Token positions
that hold residues are tracked explicitly, because pooling must never include the control tag,
special tokens or position 0.

Any tokenizer that tiles a residue string with tokens works: a character tokenizer (ZymCTRL's) gives
one token per residue, a BPE tokenizer (ProtGPT2's) tokens of several residues. Each token's residue
span `[pos, pos_end)` comes from the fast tokenizer's `offset_mapping`; a slow tokenizer (no
offsets) is accepted only when it encodes one token per residue.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from plmdiff.core.errors import DataError

CANONICAL_AMINO_ACIDS = frozenset("ACDEFGHIKLMNPQRSTVWY")

SEP = "<sep>"
START = "<start>"
END = "<end>"
EOS = "<|endoftext|>"
PAD = "<pad>"


@dataclass(frozen=True)
class SpecialIds:
    """Token ids the workflow relies on, read from a checkpoint's tokenizer."""

    pad: int
    eos: int
    bos: int | None = None
    sep: int | None = None
    start: int | None = None
    end: int | None = None

    @classmethod
    def from_record(cls, record: Mapping[str, Any]) -> SpecialIds:
        ids = record["special_tokens"]
        return cls(**{k: ids.get(k) for k in ("pad", "eos", "bos", "sep", "start", "end")})


@dataclass(frozen=True)
class PromptFormat:
    format: Literal["zymctrl", "plain"]
    label: str

    @classmethod
    def from_section(cls, prompt: Mapping[str, Any]) -> PromptFormat:
        return cls(format=prompt["format"], label=prompt["label"])

    def generation_prompt(self) -> str:
        return f"{self.label}{SEP}{START}" if self.format == "zymctrl" else ""

    def scoring_text(self, sequence: str) -> str:
        if self.format == "zymctrl":
            return f"{self.label}{SEP}{START}{sequence}{END}{EOS}"
        return sequence

    def stop_token(self, ids: SpecialIds) -> int:
        """The token that marks a finished sequence in generation."""
        if self.format == "zymctrl":
            if ids.end is None:
                raise DataError(
                    "the tokenizer has no '<end>' token, which prompt.format zymctrl needs"
                )
            return ids.end
        return ids.eos


@dataclass(frozen=True)
class EncodedSequence:
    """Token ids of one scoring text: tokens [start, stop) are the residue tokens, and
    `spans[k]` is the half-open residue span of token start + k (ARCHITECTURE.md, Tokenizers)."""

    ids: list[int]
    start: int
    stop: int
    spans: np.ndarray  # int32 [stop - start, 2]

    @property
    def n_residues(self) -> int:
        return int(self.spans[:, 1].max()) if len(self.spans) else 0


def spans_from_offsets(offsets: Sequence[tuple[int, int]], begin: int, end: int) -> np.ndarray:
    """Residue span [pos, pos_end) of each token, from character offsets in a text whose
    residues are the characters [begin, end); a token outside them (a prompt or special token)
    gets an empty span (pos == pos_end, at the nearest residue boundary)."""
    if not offsets:
        return np.zeros((0, 2), dtype=np.int32)
    raw = np.asarray(offsets, dtype=np.int64).reshape(-1, 2)
    clipped = np.clip(raw, begin, end) - begin
    return clipped.astype(np.int32)


def check_tiling(spans: np.ndarray, n_residues: int, what: str) -> None:
    """The non-empty spans must cover residues 0..n-1 exactly once, in order: anything else
    would put a residue under two tokens or under none."""
    bearing = spans[spans[:, 1] > spans[:, 0]]
    if len(bearing) == 0:
        covered = n_residues == 0
    else:
        covered = (
            int(bearing[0, 0]) == 0
            and int(bearing[-1, 1]) == n_residues
            and bool((bearing[1:, 0] == bearing[:-1, 1]).all())
        )
    if not covered:
        shown = ", ".join(f"[{a},{b})" for a, b in bearing[:8].tolist())
        raise DataError(
            f"{what}: the tokenizer's offsets do not cover the {n_residues} residues once each and "
            f"in order (token spans {shown}{' ...' if len(bearing) > 8 else ''}); plmdiff needs a "
            "tokenizer whose tokens tile the residue string"
        )


def residue_tokens(
    tokenizer: Any, residues: str, what: str = "a sequence"
) -> tuple[list[int], np.ndarray]:
    """Token ids of a residue string and each token's residue span (int32 [n_tokens, 2]).

    A fast tokenizer gives the spans through its offsets; a slow one (no offsets) must encode
    one token per residue, the spans then being [i, i + 1).
    """
    if getattr(tokenizer, "is_fast", False):
        encoded = tokenizer(residues, add_special_tokens=False, return_offsets_mapping=True)
        ids = list(encoded["input_ids"])
        spans = spans_from_offsets(encoded["offset_mapping"], 0, len(residues))
        check_tiling(spans, len(residues), what)
        return ids, spans
    ids = list(tokenizer.encode(residues, add_special_tokens=False))
    if len(ids) != len(residues):
        raise DataError(
            f"{what}: the tokenizer ({type(tokenizer).__name__}) encodes {len(residues)} residues "
            f"as {len(ids)} tokens and is not a fast tokenizer, so it gives no offsets to map "
            "tokens to residues; plmdiff accepts a fast (tokenizers-backed) tokenizer, or one that "
            "encodes one token per residue"
        )
    starts = np.arange(len(ids), dtype=np.int32)
    return ids, np.stack([starts, starts + 1], axis=1)


def prompt_ids(tokenizer: Any, fmt: PromptFormat, ids: SpecialIds) -> list[int]:
    """Token ids that precede the first residue (never empty: position 0 is never a residue)."""
    if fmt.format == "zymctrl":
        return list(tokenizer.encode(fmt.generation_prompt(), add_special_tokens=False))
    bos = ids.bos if ids.bos is not None else ids.eos
    return [bos]


def encode_sequences(
    tokenizer: Any, fmt: PromptFormat, ids: SpecialIds, sequences: Sequence[str]
) -> list[EncodedSequence]:
    """Encode sequences as scoring text, keeping track of which tokens hold which residues.

    The prefix, residues and suffix are encoded separately and concatenated, so no token
    straddles the prompt and the first residue, and the residue tokens are exactly those of the
    residue string (`residue_tokens`).
    """
    prefix = prompt_ids(tokenizer, fmt, ids)
    # The stop token ends the scoring text, so a model trained on it learns to end sequences.
    # (zymctrl checkpoints have <end>: plmdiff.models.checkpoints.special_token_ids)
    suffix: list[Any] = [ids.end, ids.eos] if fmt.format == "zymctrl" else [ids.eos]
    out = []
    for seq in sequences:
        residues, spans = residue_tokens(tokenizer, seq)
        out.append(
            EncodedSequence(
                ids=prefix + residues + suffix,
                start=len(prefix),
                stop=len(prefix) + len(residues),
                spans=spans,
            )
        )
    return out


def decode_residues(tokenizer: Any, token_ids: Sequence[int], special: SpecialIds) -> str:
    """Residue string of generated token ids (prompt excluded), special tokens and whitespace
    stripped: a character tokenizer's decode joins tokens with spaces (ZymCTRL's does), and a BPE
    model trained on FASTA-like text (ProtGPT2) emits line breaks inside a sequence."""
    specials = {
        i
        for i in (special.pad, special.eos, special.bos, special.sep, special.start, special.end)
        if i is not None
    }
    kept = [t for t in token_ids if t not in specials]
    return "".join(tokenizer.decode(kept, skip_special_tokens=True).split())


def is_canonical(sequence: str) -> bool:
    return bool(sequence) and set(sequence) <= CANONICAL_AMINO_ACIDS
