"""The project's tokenizer and checkpoints encode exactly as the published ZymCTRL tokenizer."""

from __future__ import annotations

import pytest
from tokenizers import Tokenizer

from plmdiff.models.checkpoints import load_tokenizer
from plmdiff.models.text import decode_residues, encode_sequences
from plmdiff.models.zymctrl import load_zymctrl_tokenizer
from plmdiff.testing.checkpoints import (
    PLAIN_FORMAT,
    ZYMCTRL_FORMAT,
    ZYMCTRL_IDS,
    residue_tokenizer,
    special_ids_of,
)
from tests.conftest import SHARED

TEXTS = [
    "4.2.1.1<sep><start>MKV<end><|endoftext|>",
    "4.2.1.1<sep><start>",
    "1.1.1.1<sep><start>ACDEFGHIKLMNPQRSTVWYXBZUO<end><|endoftext|>",
    "3.5.2.6<sep><start>MSIQHFRVALIPFFAAFCLPVFA<end><|endoftext|><pad><pad>",
]


def test_documented_encoding():
    tok = load_zymctrl_tokenizer()
    assert tok.encode(TEXTS[0], add_special_tokens=False) == [
        10,
        431,
        8,
        431,
        7,
        431,
        7,
        2,
        3,
        443,
        441,
        452,
        4,
        1,
    ]


@pytest.mark.skipif(
    not (SHARED / "zymctrl" / "tokenizer.json").is_file(), reason="../shared is absent"
)
def test_matches_published_tokenizer(tiny_checkpoints):
    published = Tokenizer.from_file(str(SHARED / "zymctrl" / "tokenizer.json"))
    ours = load_zymctrl_tokenizer()
    saved = load_tokenizer(tiny_checkpoints["r0"])
    for text in TEXTS:
        expected = published.encode(text).ids
        assert ours.encode(text, add_special_tokens=False) == expected
        assert saved.encode(text, add_special_tokens=False) == expected
    assert len(ours.get_vocab()) == published.get_vocab_size() == 458


def test_residue_span_excludes_tag_and_specials():
    tok = load_zymctrl_tokenizer()
    (enc,) = encode_sequences(tok, ZYMCTRL_FORMAT, ZYMCTRL_IDS, ["MKV"])
    assert enc.ids == tok.encode(TEXTS[0], add_special_tokens=False)
    assert (enc.start, enc.stop) == (9, 12)
    assert tok.decode(enc.ids[enc.start : enc.stop]).replace(" ", "") == "MKV"


def test_plain_text_is_bos_residues_eos():
    """Plain models are prompted with BOS and stop at EOS, so their text ends with EOS."""
    tok = residue_tokenizer()
    special = special_ids_of(tok)
    assert (special.pad, special.bos, special.eos) == (0, 1, 2)
    (enc,) = encode_sequences(tok, PLAIN_FORMAT, special, ["MKV"])
    residues = tok.encode("MKV", add_special_tokens=False)
    assert enc.ids == [special.bos, *residues, special.eos]
    assert (enc.start, enc.stop) == (1, 4)
    assert decode_residues(tok, enc.ids, special) == "MKV"


def test_residue_tokenizer_keeps_one_token_per_residue():
    tok = residue_tokenizer()
    seq = "ACDEFGHIKLMNPQRSTVWYXBZUO"
    ids = tok.encode(seq, add_special_tokens=False)
    assert len(ids) == len(seq) and tok.unk_token_id not in ids
