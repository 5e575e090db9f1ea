"""plmdiff.sampling.generate: HF-equivalent logits processing, per-sequence randomness, shards."""

from __future__ import annotations

import contextlib
import math

import pyarrow.parquet as pq
import pytest
import torch

from plmdiff.core.errors import ConfigError
from plmdiff.models.checkpoints import (
    CheckpointRecord,
    inspect_checkpoint,
    load_model,
    load_tokenizer,
)
from plmdiff.models.text import prompt_ids
from plmdiff.sampling import generate as sampling
from plmdiff.sampling.generate import (
    SamplingSettings,
    _mix32,
    _mul32,
    apply_repetition_penalty,
    choose_tokens,
    gumbel_noise,
    sample_sequences,
    samples_table,
    shard_indices,
    top_k_filter,
)
from plmdiff.testing.checkpoints import ZYMCTRL_FORMAT, ZYMCTRL_IDS

SETTINGS = SamplingSettings(max_length=80, batch_size=16)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny models gain nothing from threads, and on a shared CI machine threads only wait."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def r0(tiny_checkpoints):
    path = tiny_checkpoints["r0"]
    return load_model(path), load_tokenizer(path)


def draw(model_tok, indices, settings=SETTINGS, seed=7):
    model, tok = model_tok
    return sample_sequences(model, tok, ZYMCTRL_FORMAT, ZYMCTRL_IDS, indices, settings, seed, "cpu")


# ----------------------------------------------------------------------------- pure parts


def test_settings_from_config_and_bad_values():
    s = SamplingSettings.from_config({"top_k": 5, "batch_size": 8, "n_sequences": 3, "seed": 1})
    assert (s.top_k, s.batch_size, s.repetition_penalty, s.max_length) == (5, 8, 1.2, 1024)
    with pytest.raises(ConfigError, match=r"sampling\.batch_size: 'big'"):
        SamplingSettings.from_config({"batch_size": "big"})
    with pytest.raises(ConfigError, match=r"sampling\.temperature"):
        SamplingSettings.from_config({"temperature": 0})


def test_mul32_is_exact_modular_multiplication():
    xs = [0, 1, 0xFFFF, 0x10000, 0x7FFFFFFF, 0x80000000, 0xFFFFFFFF, 123456789, 0xDEADBEEF]
    for c in (0x7FEB352D, 0x846CA68B, 0x9E3779B9):
        got = _mul32(torch.tensor(xs, dtype=torch.int64), c).tolist()
        assert got == [(x * c) % 2**32 for x in xs]
    assert _mix32(torch.arange(1000)).unique().numel() == 1000  # a bijection stays one


def test_processors_match_transformers():
    from transformers import (
        LogitsProcessorList,
        RepetitionPenaltyLogitsProcessor,
        TemperatureLogitsWarper,
        TopKLogitsWarper,
    )

    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(6, 40, generator=gen) * 3
    input_ids = torch.randint(0, 40, (6, 12), generator=gen)
    seen = torch.zeros(6, 40, dtype=torch.bool)
    seen[torch.arange(6)[:, None], input_ids] = True
    hf = LogitsProcessorList(
        [RepetitionPenaltyLogitsProcessor(1.3), TemperatureLogitsWarper(0.7), TopKLogitsWarper(5)]
    )(input_ids, logits.clone())
    ours = top_k_filter(apply_repetition_penalty(logits, seen, 1.3) / 0.7, 5)
    assert torch.equal(torch.isinf(ours), torch.isinf(hf))
    torch.testing.assert_close(ours[~torch.isinf(ours)], hf[~torch.isinf(hf)])


def test_gumbel_max_draws_follow_softmax():
    """Frequencies of the Gumbel-max draw match softmax(top-k of penalised logits / T)."""
    n, vocab = 40000, 6
    logits = torch.tensor([[2.0, 1.0, 0.5, -0.5, -1.0, -3.0]]).expand(n, vocab)
    seen = torch.zeros(n, vocab, dtype=torch.bool)
    seen[:, 0] = True  # penalised: 2.0 / 1.2
    settings = SamplingSettings(top_k=4, temperature=0.8, repetition_penalty=1.2)
    token_hash = _mix32(torch.arange(vocab, dtype=torch.int64) ^ 0x5BD1E995)
    draws = choose_tokens(logits, seen, torch.arange(n, dtype=torch.int64), 3, token_hash, settings)
    expected = torch.softmax(
        top_k_filter(torch.tensor([2.0 / 1.2, 1.0, 0.5, -0.5, -1.0, -3.0]) / 0.8, 4), -1
    )
    observed = torch.bincount(draws, minlength=vocab).double() / n
    assert observed[4:].sum() == 0  # outside the top 4
    # 4 binomial standard errors at n = 40000 is < 0.01
    assert torch.allclose(observed, expected.double(), atol=0.01), (observed, expected)


def test_noise_depends_only_on_key_step_token():
    token_hash = _mix32(torch.arange(50, dtype=torch.int64))
    a = gumbel_noise(torch.tensor([5, 9, 11]), 4, token_hash)
    b = gumbel_noise(torch.tensor([11, 5]), 4, token_hash)
    assert torch.equal(a[2], b[0]) and torch.equal(a[0], b[1])
    assert not torch.equal(a[0], gumbel_noise(torch.tensor([5]), 5, token_hash)[0])
    big = gumbel_noise(torch.arange(2000), 0, token_hash)
    assert abs(big.mean().item() - 0.5772) < 0.02  # Euler-Mascheroni: the Gumbel mean


def test_shard_indices_partition_in_order():
    for n, shards in [(10, 3), (48, 2), (3, 4), (1000, 7)]:
        parts = [shard_indices(n, shards, s) for s in range(shards)]
        assert [i for part in parts for i in part] == list(range(n))
    assert shard_indices(3, 4, 0) == []  # more shards than sequences: an empty shard
    with pytest.raises(ConfigError, match="shard 4 does not exist"):
        shard_indices(10, 4, 4)


# ----------------------------------------------------------------------------- with a tiny model


def test_same_seed_same_samples_and_seed_matters(r0):
    a = draw(r0, range(12))
    b = draw(r0, range(12))
    assert [(s.sequence, s.ended, s.n_tokens) for s in a] == [
        (s.sequence, s.ended, s.n_tokens) for s in b
    ]
    assert [s.ppl for s in a if s.ended] == [s.ppl for s in b if s.ended]
    other = draw(r0, range(12), seed=8)
    assert [s.sequence for s in other] != [s.sequence for s in a]
    assert len({s.sequence for s in a}) > 6  # distinct streams per index


def test_batch_size_order_and_subset_invariance(r0):
    """Sequence i is the same whatever batch (and batch size) it is drawn in."""
    ref = {s.index: s for s in draw(r0, range(12))}
    for settings, indices in [
        (SamplingSettings(max_length=80, batch_size=5), list(range(12))[::-1]),
        (SamplingSettings(max_length=80, batch_size=1), [9, 2]),
    ]:
        for s in draw(r0, indices, settings):
            assert (s.sequence, s.ended, s.n_tokens) == (
                ref[s.index].sequence,
                ref[s.index].ended,
                ref[s.index].n_tokens,
            )
            if s.ended:
                assert s.ppl == pytest.approx(ref[s.index].ppl, rel=1e-5)


def test_lengths_ppl_and_stop_token(r0):
    model, tok = r0
    prompt = prompt_ids(tok, ZYMCTRL_FORMAT, ZYMCTRL_IDS)
    samples = draw(r0, range(16))
    ended = [s for s in samples if s.ended]
    assert ended, "the tiny checkpoint should end some sequences"
    for s in samples:
        assert s.n_tokens <= SETTINGS.max_length - len(prompt)
        if not s.ended:
            assert s.n_tokens == SETTINGS.max_length - len(prompt) and math.isnan(s.ppl)
        assert "<" not in s.sequence and " " not in s.sequence
    # ppl = exp(mean NLL of the generated tokens, <end> included) under the model's own distribution
    s = ended[0]
    ids = torch.tensor(
        [[*prompt, *tok.encode(s.sequence, add_special_tokens=False), ZYMCTRL_IDS.end]]
    )
    assert ids.shape[1] - len(prompt) == s.n_tokens
    with torch.no_grad():
        logp = torch.log_softmax(model(ids).logits[0, :-1].float(), -1)
    nll = -logp.gather(1, ids[0, 1:, None])[-s.n_tokens :].mean().item()
    assert s.ppl == pytest.approx(math.exp(nll), rel=1e-4)


def test_max_length_is_capped_and_checked(r0, caplog):
    out = draw(r0, [0], SamplingSettings(max_length=10_000, batch_size=4))
    assert "exceeds the model's context" in caplog.text
    assert out[0].n_tokens <= 256
    with pytest.raises(ConfigError, match="leaves no room"):
        draw(r0, [0], SamplingSettings(max_length=3))
    assert draw(r0, []) == []


def never_ending(model):
    """A copy that cannot emit <end>: one final-norm channel is pinned to 1 and the <end>
    row of the (tied) output embedding reads only that channel, with a huge negative weight."""
    import copy

    model = copy.deepcopy(model)
    with torch.no_grad():
        model.transformer.ln_f.weight[0] = 0.0
        model.transformer.ln_f.bias[0] = 1.0
        row = model.lm_head.weight[ZYMCTRL_IDS.end]
        row.zero_()
        row[0] = -1e4
    return model


def test_never_ending_model_truncates_everything(r0):
    model, tok = r0
    n_prompt = len(prompt_ids(tok, ZYMCTRL_FORMAT, ZYMCTRL_IDS))
    samples = draw(
        (never_ending(model), tok), range(6), SamplingSettings(max_length=40, batch_size=4)
    )
    assert not any(s.ended for s in samples)
    assert all(math.isnan(s.ppl) and s.n_tokens == 40 - n_prompt for s in samples)


def test_shard_table_round_trip(tiny_checkpoints, tmp_path, r0):
    from plmdiff.sampling.generate import write_samples

    samples = draw(r0, [4, 5, 6])
    table = samples_table(samples, "r0", 1, {"seed": 7})
    write_samples(tmp_path / "s.parquet", table)
    back = pq.read_table(tmp_path / "s.parquet").to_pylist()
    assert [r["seq_id"] for r in back] == ["r0_001_00004", "r0_001_00005", "r0_001_00006"]
    assert [r["length"] for r in back] == [len(s.sequence) for s in samples]
    empty = samples_table([], "r0", 3, {})
    write_samples(tmp_path / "e.parquet", empty)
    assert pq.read_table(tmp_path / "e.parquet").num_rows == 0


def test_record_driven_shard(tiny_checkpoints, tmp_path):
    """sample_shard reads the checkpoint from the record and seeds by (seed, model, index)."""
    from plmdiff.core.runtime import write_json
    from plmdiff.sampling.generate import sample_shard

    record = inspect_checkpoint(tiny_checkpoints["r0"], "r0", ZYMCTRL_FORMAT)
    write_json(tmp_path / "r0.json", record.to_json())
    assert CheckpointRecord.read(tmp_path / "r0.json").path == str(tiny_checkpoints["r0"].resolve())
    section = {"n_sequences": 6, "shards": 2, "seed": 3, "max_length": 64, "batch_size": 4}
    prompt = {"format": "zymctrl", "label": "4.2.1.1"}
    one = sample_shard(str(tmp_path / "r0.json"), "r0", 1, section, prompt, device="cpu")
    assert one.column("index").to_pylist() == [3, 4, 5]
    three = sample_shard(
        str(tmp_path / "r0.json"), "r0", 1, {**section, "shards": 3}, prompt, device="cpu"
    )
    assert three.column("index").to_pylist() == [2, 3]
    assert one.column("sequence").to_pylist()[:1] == three.column("sequence").to_pylist()[1:]
    other = sample_shard(str(tmp_path / "r0.json"), "r1", 1, section, prompt, device="cpu")
    assert other.column("sequence").to_pylist() != one.column("sequence").to_pylist()


def test_never_ending_checkpoint_fails_its_filter_with_the_counts(r0, tmp_path):
    """On disk, through the rule's functions: every sample truncated, one clear failure."""
    from plmdiff.core.errors import DataError
    from plmdiff.core.runtime import write_json
    from plmdiff.models.zymctrl import save_checkpoint
    from plmdiff.sampling.filtering import FilterSettings, check_enough, filter_model
    from plmdiff.sampling.generate import sample_shard, write_samples

    model, tok = r0
    directory = save_checkpoint(never_ending(model), tok, tmp_path / "never")
    record = inspect_checkpoint(directory, "stuck", ZYMCTRL_FORMAT)
    write_json(tmp_path / "stuck.json", record.to_json())
    section = {"n_sequences": 5, "shards": 1, "seed": 1, "max_length": 30, "batch_size": "auto"}
    table = sample_shard(
        str(tmp_path / "stuck.json"),
        "stuck",
        0,
        section,
        {"format": "zymctrl", "label": "4.2.1.1"},
        device="cpu",
    )
    write_samples(tmp_path / "shard_000.parquet", table)
    result, stats = filter_model(
        "stuck", [str(tmp_path / "shard_000.parquet")], FilterSettings(min_sequences=2)
    )
    assert stats["counts"]["truncated"] == stats["counts"]["sampled"] == 5
    with pytest.raises(
        DataError,
        match=r"model 'stuck': 0 sequences kept.*truncated 5.*no sample emitted the end token",
    ):
        check_enough("stuck", result, 2)


def test_dropout_is_off_while_sampling_and_mode_restored(r0):
    model, _ = r0
    model.train()
    try:
        a = draw(r0, range(4))
        assert model.training
    finally:
        model.eval()
    b = draw(r0, range(4))
    assert [s.sequence for s in a] == [s.sequence for s in b]


def test_cpu_decoding_uses_eager_attention_and_restores_the_model(r0, monkeypatch):
    """On a CPU the draw runs with eager attention (faster for one-token steps against a strided
    cache), gives what SDPA gives, and hands the model back with its own implementation."""
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    model, _ = r0
    assert model.config._attn_implementation == "sdpa"
    sdpa_calls = []
    real_sdpa = ALL_ATTENTION_FUNCTIONS["sdpa"]

    def counting_sdpa(*args, **kwargs):
        sdpa_calls.append(1)
        return real_sdpa(*args, **kwargs)

    monkeypatch.setitem(ALL_ATTENTION_FUNCTIONS._global_mapping, "sdpa", counting_sdpa)
    eager = draw(r0, range(12))
    assert not sdpa_calls
    assert model.config._attn_implementation == "sdpa"

    monkeypatch.setattr(sampling, "decoding_attention", lambda m, d: contextlib.nullcontext())
    with_sdpa = draw(r0, range(12))
    assert sdpa_calls
    assert [s.sequence for s in with_sdpa] == [s.sequence for s in eager]
