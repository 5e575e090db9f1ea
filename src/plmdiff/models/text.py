"""How protein sequences become model text, and back.

ZymCTRL's training text is `{label}<sep><start>{SEQ}<end><|endoftext|>` and its generation prompt
`{label}<sep><start>` (AI4PDLab/DPO_pLM). `plain` models see BOS + sequence + EOS and are prompted
with BOS alone; generation stops at EOS, so training and scoring text end with it too. Token positions
that hold residues are tracked explicitly, because pooling must never include the control tag,
special tokens or position 0.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

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
    """Token ids of one scoring text, with the half-open span [start, stop) of residue tokens."""

    ids: list[int]
    start: int
    stop: int

    @property
    def n_residues(self) -> int:
        return self.stop - self.start


def prompt_ids(tokenizer: Any, fmt: PromptFormat, ids: SpecialIds) -> list[int]:
    """Token ids that precede the first residue (never empty: position 0 is never a residue)."""
    if fmt.format == "zymctrl":
        return list(tokenizer.encode(fmt.generation_prompt(), add_special_tokens=False))
    bos = ids.bos if ids.bos is not None else ids.eos
    return [bos]


def encode_sequences(
    tokenizer: Any, fmt: PromptFormat, ids: SpecialIds, sequences: Sequence[str]
) -> list[EncodedSequence]:
    """Encode sequences as scoring text, keeping track of which positions are residues.

    The prefix, residues and suffix are encoded separately and concatenated, so the residue span
    is exact for any tokenizer whose residues are single tokens (ZymCTRL's is character-level);
    a tokenizer that merges residues is rejected rather than silently misaligned.
    """
    prefix = prompt_ids(tokenizer, fmt, ids)
    # The stop token ends the scoring text, so a model trained on it learns to end sequences.
    suffix = [ids.end, ids.eos] if fmt.format == "zymctrl" else [ids.eos]
    out = []
    for seq in sequences:
        residues = list(tokenizer.encode(seq, add_special_tokens=False))
        if len(residues) != len(seq):
            raise DataError(
                f"the tokenizer encodes a {len(seq)}-residue sequence as {len(residues)} tokens; "
                "plmdiff needs one token per residue (as ZymCTRL's character-level tokenizer)"
            )
        out.append(
            EncodedSequence(
                ids=prefix + residues + suffix, start=len(prefix), stop=len(prefix) + len(residues)
            )
        )
    return out


def decode_residues(tokenizer: Any, token_ids: Sequence[int], special: SpecialIds) -> str:
    """Residue string of generated token ids (prompt excluded), special tokens and spaces stripped."""
    specials = {
        i
        for i in (special.pad, special.eos, special.bos, special.sep, special.start, special.end)
        if i is not None
    }
    kept = [t for t in token_ids if t not in specials]
    return tokenizer.decode(kept, skip_special_tokens=True).replace(" ", "")


def is_canonical(sequence: str) -> bool:
    return bool(sequence) and set(sequence) <= CANONICAL_AMINO_ACIDS
