"""Residue spans from a tokenizer's offsets: one token per residue, BPE tokens of several
residues, prompt and special tokens without a span, and the refusals."""

from __future__ import annotations

import numpy as np
import pytest

from plmdiff.core.errors import CheckpointError, DataError
from plmdiff.models.checkpoints import check_residue_tokenizer, tokenizer_fingerprint
from plmdiff.models.text import (
    check_tiling,
    decode_residues,
    encode_sequences,
    residue_tokens,
    spans_from_offsets,
)
from plmdiff.models.zymctrl import load_zymctrl_tokenizer
from plmdiff.testing.checkpoints import (
    PLAIN_FORMAT,
    ZYMCTRL_FORMAT,
    ZYMCTRL_IDS,
    bpe_tokenizer,
    family_sequences,
    residue_tokenizer,
    special_ids_of,
)


@pytest.fixture(scope="module")
def bpe():
    return bpe_tokenizer()


def test_offsets_outside_the_residues_give_empty_spans():
    # "<s>MKVL</s>": residues are characters 3..7; "MKV" is one token of three residues.
    offsets = [(0, 3), (3, 6), (6, 7), (7, 11)]
    spans = spans_from_offsets(offsets, 3, 7)
    assert spans.tolist() == [[0, 0], [0, 3], [3, 4], [4, 4]]
    assert spans.dtype == np.int32
    check_tiling(spans, 4, "x")  # the empty spans are ignored
    assert spans_from_offsets([], 0, 0).shape == (0, 2)


@pytest.mark.parametrize(
    "spans",
    [
        [[0, 2], [1, 3]],  # overlap: residue 1 under two tokens
        [[0, 1], [2, 3]],  # gap: residue 1 under none
        [[1, 3]],  # does not start at the first residue
        [[0, 2]],  # stops short of the last residue
        [[1, 3], [0, 1]],  # out of order
    ],
)
def test_spans_that_do_not_tile_are_refused(spans):
    with pytest.raises(DataError, match=r"seq 7: the tokenizer's offsets do not cover the 3"):
        check_tiling(np.asarray(spans, dtype=np.int32), 3, "seq 7")


def test_character_tokenizers_give_one_residue_per_token():
    for tok in (load_zymctrl_tokenizer(), residue_tokenizer()):
        ids, spans = residue_tokens(tok, "MKVLA")
        assert ids == tok.encode("MKVLA", add_special_tokens=False)
        assert spans.tolist() == [[i, i + 1] for i in range(5)]


def test_bpe_tokens_span_several_residues(bpe):
    seq = family_sequences(limit=1)[0]
    ids, spans = residue_tokens(bpe, seq)
    assert ids == bpe.encode(seq, add_special_tokens=False)
    widths = spans[:, 1] - spans[:, 0]
    assert len(ids) < len(seq) and widths.max() > 1 and widths.min() >= 1
    words = bpe.convert_ids_to_tokens(ids)
    assert ["".join(seq[a:b]) for a, b in spans.tolist()] == words
    check_tiling(spans, len(seq), "x")


def test_plain_bpe_text_keeps_specials_outside_the_residue_tokens(bpe):
    special = special_ids_of(bpe)
    seq = family_sequences(limit=2)[1][:40]
    (enc,) = encode_sequences(bpe, PLAIN_FORMAT, special, [seq])
    residue_ids, spans = residue_tokens(bpe, seq)
    assert enc.ids == [special.bos, *residue_ids, special.eos]
    assert (enc.start, enc.stop) == (1, 1 + len(residue_ids))
    assert np.array_equal(enc.spans, spans) and enc.n_residues == len(seq)
    assert decode_residues(bpe, enc.ids, special) == seq


def test_zymctrl_prompt_tokens_carry_no_residues():
    (enc,) = encode_sequences(load_zymctrl_tokenizer(), ZYMCTRL_FORMAT, ZYMCTRL_IDS, ["MKV"])
    assert (enc.start, enc.stop) == (9, 12)
    assert enc.spans.tolist() == [[0, 1], [1, 2], [2, 3]]


def test_decoded_samples_lose_line_breaks(bpe):
    """A BPE model trained on FASTA-like text (ProtGPT2) emits line breaks inside sequences."""
    special = special_ids_of(bpe)
    ids = bpe.encode("MKV", add_special_tokens=False)
    newline = type("Tok", (), {"decode": lambda self, t, **_: "MK\nV L"})()
    assert decode_residues(newline, [*ids, special.eos], special) == "MKVL"
    assert decode_residues(bpe, [*ids, special.eos], special) == "MKV"


class _SlowTokenizer:
    """A tokenizer without offsets (not a fast tokenizer) that merges residue pairs."""

    is_fast = False

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        return [ord(text[i]) for i in range(0, len(text), 2)]


class _SlowCharacterTokenizer(_SlowTokenizer):
    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        return [ord(c) for c in text]


def test_a_slow_tokenizer_must_give_one_token_per_residue():
    with pytest.raises(DataError, match=r"seq 3: .*encodes 4 residues as 2 tokens.*not a fast"):
        residue_tokens(_SlowTokenizer(), "MKVL", "seq 3")
    ids, spans = residue_tokens(_SlowCharacterTokenizer(), "MKVL")
    assert ids == [ord(c) for c in "MKVL"] and spans.tolist() == [[i, i + 1] for i in range(4)]


def test_intake_refuses_a_tokenizer_without_residue_spans(bpe, tmp_path):
    with pytest.raises(CheckpointError, match=r"tokenizer in .*ckpt: .* not a fast tokenizer"):
        check_residue_tokenizer(_SlowTokenizer(), tmp_path / "ckpt")
    for tok in (bpe, load_zymctrl_tokenizer(), _SlowCharacterTokenizer()):
        check_residue_tokenizer(tok, tmp_path / "ckpt")


def test_tokenizer_fingerprint_tells_tokenizers_apart(bpe):
    assert tokenizer_fingerprint(bpe) == tokenizer_fingerprint(bpe_tokenizer())
    assert tokenizer_fingerprint(bpe) != tokenizer_fingerprint(bpe_tokenizer(vocab_size=120))
    assert tokenizer_fingerprint(bpe) != tokenizer_fingerprint(residue_tokenizer())
