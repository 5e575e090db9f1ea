"""KL(model || base) on real tiny checkpoints: zero for identical models, positive otherwise."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from plmdiff.config.sections import section_defaults
from plmdiff.core.errors import DataError
from plmdiff.core.fasta import SequenceEntry
from plmdiff.kl.divergence import (
    check_same_tokenizer,
    check_self_kl,
    position_profile,
    score_model,
    select_sequences,
    summarise,
    token_kl,
    top_sequences,
)
from plmdiff.kl.settings import KLConfig
from plmdiff.testing.checkpoints import (
    RESIDUE_SPECIALS,
    ZYMCTRL_FORMAT,
    ZYMCTRL_IDS,
    bpe_tokenizer,
    family_sequences,
)
from tests.conftest import copy_checkpoint


def kl_config(**overrides) -> KLConfig:
    return KLConfig.from_section({**section_defaults("kl"), **overrides})


def _entries(model, n=6):
    seqs = [s[:40] for s in family_sequences(limit=n)]
    return [SequenceEntry(f"{model}_000_{i:05d}", s, {"model": model}) for i, s in enumerate(seqs)]


def test_token_kl_matches_the_definition():
    p, q = torch.randn(3, 11), torch.randn(3, 11)
    ref = torch.sum(
        torch.softmax(p, -1) * (torch.log_softmax(p, -1) - torch.log_softmax(q, -1)), -1
    )
    assert torch.allclose(token_kl(p, q), ref, atol=1e-6)
    assert torch.all(token_kl(p, p) == 0)


def test_selection_is_deterministic_and_order_free():
    entries = _entries("r1", 6)
    a = select_sequences(entries, 4)
    b = select_sequences(list(reversed(entries)), 4)
    assert [e.seq_id for e in a] == [e.seq_id for e in b] and len(a) == 4


@pytest.fixture(scope="module")
def scored(tiny_checkpoints, tmp_path_factory):
    cfg = kl_config(max_sequences=5, batch_tokens=120, top_sequences=3)
    sets = {"own": _entries("r1"), "base": _entries("r0")}
    kwargs = dict(fmt=ZYMCTRL_FORMAT, special=ZYMCTRL_IDS, cfg=cfg, device="cpu")
    copy = copy_checkpoint(tiny_checkpoints["r0"], tmp_path_factory.mktemp("kl") / "copy")
    return {
        "self": score_model(
            tiny_checkpoints["r0"], tiny_checkpoints["r0"], sets, model_name="r0", **kwargs
        ),
        "copy": score_model(copy, tiny_checkpoints["r0"], sets, model_name="r0copy", **kwargs),
        "r1": score_model(
            tiny_checkpoints["r1"], tiny_checkpoints["r0"], sets, model_name="r1", **kwargs
        ),
        "r1_small_batches": score_model(
            tiny_checkpoints["r1"],
            tiny_checkpoints["r0"],
            sets,
            model_name="r1",
            **{**kwargs, "cfg": kl_config(max_sequences=5, batch_tokens=1)},
        ),
        "sets": sets,
    }


def test_kl_is_exactly_zero_for_identical_models(scored):
    for key in ("self", "copy"):
        frame = scored[key]
        assert (frame["kl_max"] == 0).all() and (frame["kl_mean"] == 0).all()
        check_self_kl(frame, "r0")


def test_kl_is_positive_for_a_different_model(scored):
    frame = scored["r1"]
    assert (frame["kl_mean"] > 0).all()
    with pytest.raises(DataError, match="not 0"):
        check_self_kl(frame, "r1")
    # one value per residue plus <end>
    assert (frame["n_positions"] == frame["length"] + 1).all()
    assert set(frame["set"]) == {"own", "base"} and len(frame) == 10
    # batching does not change the result
    other = scored["r1_small_batches"]
    np.testing.assert_allclose(frame["kl_mean"], other["kl_mean"], rtol=1e-4, atol=1e-7)


def own_ids(scored):
    return list(scored["r1"]["seq_id"]) + list(scored["self"]["seq_id"])


def test_summary_top_and_profile(scored):
    frames = [scored["self"], scored["r1"]]
    summary = summarise(frames, ["r0", "r1"])
    assert list(summary["model"]) == ["r0", "r0", "r1", "r1"]
    row = summary[(summary.model == "r1") & (summary.set == "own")].iloc[0]
    own = scored["r1"][scored["r1"]["set"] == "own"]["kl_mean"]
    assert row["mean"] == pytest.approx(own.mean()) and row["p50"] == pytest.approx(own.median())
    assert summary[summary.model == "r0"]["max"].eq(0).all()
    # Interval of the mean: contains it, is a point for the base (KL 0), and one cluster holding
    # every sequence leaves nothing to resample (zero width).
    assert (summary["mean_ci_low"] <= summary["mean"] + 1e-12).all()
    assert (summary["mean"] <= summary["mean_ci_high"] + 1e-12).all()
    assert summary[summary.model == "r0"][["mean_ci_low", "mean_ci_high"]].eq(0).all().all()
    one = summarise(frames, ["r0", "r1"], cluster_of={s: "c" for s in own_ids(scored)})
    r1 = one[(one.model == "r1") & (one.set == "own")].iloc[0]
    assert r1["mean_ci_low"] == pytest.approx(r1["mean_ci_high"])
    assert row["mean_ci_high"] > row["mean_ci_low"]
    top = top_sequences(scored["r1"], 3)
    assert len(top) == 3 and top["kl_mean"].is_monotonic_decreasing
    prof = position_profile(frames)
    assert set(prof["model"]) == {"r0", "r1"} and (prof.query("model == 'r0'")["kl"] == 0).all()


def test_different_vocabularies_are_refused(tiny_checkpoints, tmp_path):
    other = copy_checkpoint(tiny_checkpoints["r1"], tmp_path / "other")
    tok = other / "tokenizer.json"
    tok.write_text(tok.read_text().replace('"<sep>"', '"<SEP>"'))
    with pytest.raises(DataError, match=r"tokenizers .* differ"):
        score_model(
            other,
            tiny_checkpoints["r0"],
            {"own": _entries("r1")},
            model_name="x",
            fmt=ZYMCTRL_FORMAT,
            special=ZYMCTRL_IDS,
            cfg=kl_config(),
            device="cpu",
        )


def test_same_vocabulary_other_merges_are_refused():
    """Two BPE tokenizers with one vocabulary but other merges split sequences differently."""
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    ours = bpe_tokenizer()
    state = json.loads(ours.backend_tokenizer.to_str())
    state["model"]["merges"] = state["model"]["merges"][:-20]
    theirs = PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer.from_str(json.dumps(state)),
        **{f"{role}_token": token for role, token in RESIDUE_SPECIALS.items()},
    )
    assert theirs.get_vocab() == ours.get_vocab()
    check_same_tokenizer(ours, bpe_tokenizer(), "a", "b")
    with pytest.raises(DataError, match=r"tokenizers of r2 and of the base model r0 differ"):
        check_same_tokenizer(theirs, ours, "r2", "r0")
