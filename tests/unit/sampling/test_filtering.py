"""plmdiff.sampling.filtering: outcome buckets, length windows at their edges, FASTA, failure messages."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest

from plmdiff.config.sections import section_defaults
from plmdiff.core.errors import ConfigError, DataError
from plmdiff.core.fasta import read_fasta, write_fasta
from plmdiff.sampling.filtering import (
    OUTCOMES,
    FilterSettings,
    LengthWindow,
    RawSample,
    check_enough,
    classify_samples,
    fasta_entries,
    filter_model,
    length_window,
    read_samples,
)
from plmdiff.sampling.io import samples_table, write_samples
from plmdiff.sampling.settings import Sample

DEFAULTS = FilterSettings.from_section(section_defaults("filter"))


def filter_settings(**changes):
    """The schema's filter settings with `changes` (relative_to_base as a quantile pair)."""
    return replace(DEFAULTS, **changes)


def raw(index, sequence, ended=True, ppl=2.0, model="m"):
    return RawSample(f"{model}_000_{index:05d}", index, sequence, ended, ppl)


def write_shard(path, model, shard, rows):
    """A sample shard as the `sample` rule writes it, from (index, sequence, ended) rows."""
    samples = [
        Sample(i, seq, ended, len(seq) + 1, 3.0 if ended else math.nan) for i, seq, ended in rows
    ]
    write_samples(path, samples_table(samples, model, shard, {}))
    return str(path)


def test_settings_from_config():
    section = {
        **section_defaults("filter"),
        "min_length": 5,
        "relative_to_base": {"lower_quantile": 0.1, "upper_quantile": 0.9},
        "dedupe": False,
        "min_sequences": 3,
    }
    assert FilterSettings.from_section(section) == FilterSettings(5, None, (0.1, 0.9), False, 3)
    disabled = FilterSettings.from_section(section_defaults("filter"))
    assert disabled.relative_to_base is None and disabled.min_sequences == 100
    with pytest.raises(ConfigError, match=r"filter\.dedupe is missing"):
        FilterSettings.from_section({k: v for k, v in section.items() if k != "dedupe"})


def test_counts_add_up_and_every_outcome_is_seen():
    samples = [
        raw(0, "MKV"),  # kept
        raw(1, "MKVLA", ended=False, ppl=math.nan),  # truncated
        raw(2, "MKXV"),  # invalid (X)
        raw(3, "MK"),  # too short
        raw(4, "MKVLAGG"),  # too long
        raw(5, "MKV"),  # duplicate of 0
        raw(6, ""),  # empty: too short, not invalid
        raw(7, "MKVLA"),  # kept
    ]
    result = classify_samples(samples, LengthWindow(low=3, high=6), dedupe=True)
    assert result.counts == {
        "truncated": 1,
        "invalid": 1,
        "too_short": 2,
        "too_long": 1,
        "duplicate": 1,
        "kept": 2,
    }
    assert result.sampled == len(samples) == sum(result.counts[o] for o in OUTCOMES)
    assert [s.index for s in result.kept] == [0, 7]
    assert result.duplicate_fraction == pytest.approx(1 / 3)


def test_absolute_window_edges_are_inclusive():
    window = length_window(filter_settings(min_length=5, max_length=8))
    assert (window.low, window.high) == (5, 8)
    lengths = {n: window.classify(n) for n in (4, 5, 8, 9)}
    assert lengths == {4: "too_short", 5: None, 8: None, 9: "too_long"}
    unbounded = length_window(filter_settings())
    assert (unbounded.low, unbounded.high) == (1, None)
    assert unbounded.classify(0) == "too_short" and unbounded.classify(10_000) is None


def test_relative_window_edges():
    base = list(range(10, 21))  # 10..20: quantiles fall on integers at 0.1 steps
    w = length_window(filter_settings(relative_to_base=(0.1, 0.9)), base, "b")
    assert (w.base_lower, w.base_upper) == (11.0, 19.0)
    assert (w.low, w.high) == (11, 19)
    assert [w.classify(n) for n in (10, 11, 19, 20)] == ["too_short", None, None, "too_long"]
    # fractional quantiles: 10.5 -> lengths >= 11, 19.5 -> lengths <= 19
    w = length_window(filter_settings(relative_to_base=(0.05, 0.95)), base, "b")
    assert (w.base_lower, w.base_upper) == (10.5, 19.5) and (w.low, w.high) == (11, 19)
    # quantiles 0 and 1 keep exactly the base range
    w = length_window(filter_settings(relative_to_base=(0.0, 1.0)), base, "b")
    assert (w.low, w.high) == (10, 20)
    # absolute bounds intersect the relative window
    w = length_window(
        filter_settings(min_length=15, max_length=30, relative_to_base=(0.1, 0.9)), base, "b"
    )
    assert (w.low, w.high) == (15, 19)
    assert w.to_json()["base_model"] == "b"


def test_relative_window_without_valid_base_samples_fails():
    with pytest.raises(DataError, match="base model 'r0' has none"):
        length_window(filter_settings(relative_to_base=(0.05, 0.95)), [], "r0")


def test_dedupe_keeps_the_first_by_index():
    samples = [raw(5, "AAAA", ppl=5.0), raw(2, "AAAA", ppl=2.0), raw(9, "CCCC")]
    result = classify_samples(samples, LengthWindow(low=1, high=None), dedupe=True)
    assert [(s.index, s.ppl) for s in result.kept] == [(2, 2.0), (9, 2.0)]
    assert result.counts["duplicate"] == 1
    kept_all = classify_samples(samples, LengthWindow(low=1, high=None), dedupe=False)
    assert kept_all.counts["kept"] == 3 and kept_all.duplicate_fraction == 0.0


def test_invalid_residues_are_dropped_and_counted():
    samples = [raw(i, s) for i, s in enumerate(["MKVB", "MKVU", "mkv", "MK*V", "MKVW"])]
    result = classify_samples(samples, LengthWindow(low=1, high=None), dedupe=True)
    assert result.counts["invalid"] == 4 and [s.sequence for s in result.kept] == ["MKVW"]


def test_min_sequences_failure_names_model_and_counts():
    result = classify_samples(
        [raw(0, "MKV"), raw(1, "MK", ended=False)], LengthWindow(low=1, high=None), True
    )
    with pytest.raises(DataError) as err:
        check_enough("iteration2", result, 5)
    message = str(err.value)
    assert "\n" not in message
    assert "model 'iteration2': 1 sequences kept, fewer than filter.min_sequences=5" in message
    assert (
        "sampled 2: truncated 1, invalid 0, too short 0, too long 0, duplicate 0, kept 1" in message
    )
    check_enough("iteration2", result, 1)  # enough: no error


def test_never_ending_and_empty_results_explain_themselves(tmp_path):
    never = write_shard(tmp_path / "n.parquet", "m", 0, [(i, "MKV" * 9, False) for i in range(4)])
    result, stats = filter_model("m", [never], filter_settings(min_sequences=1))
    assert stats["counts"] == {
        "sampled": 4,
        "truncated": 4,
        "invalid": 0,
        "too_short": 0,
        "too_long": 0,
        "duplicate": 0,
        "kept": 0,
    }
    assert math.isnan(stats["duplicate_fraction"]) and stats["length"]["length_median"] is None
    with pytest.raises(DataError, match="no sample emitted the end token"):
        check_enough("m", result, 1)
    empty = write_shard(tmp_path / "e.parquet", "m", 1, [])
    result, stats = filter_model("m", [empty], filter_settings(min_sequences=1))
    assert stats["counts"]["sampled"] == 0
    with pytest.raises(DataError, match="nothing was sampled"):
        check_enough("m", result, 1)


def test_filter_model_reads_shards_and_uses_base_quantiles(tmp_path):
    base = [
        write_shard(tmp_path / "b0.parquet", "b", 0, [(i, "M" * (10 + i), True) for i in range(6)]),
        write_shard(
            tmp_path / "b1.parquet", "b", 1, [(i, "M" * (10 + i), True) for i in range(6, 11)]
        ),
    ]
    # the base's invalid and truncated samples do not enter its quantiles
    base.append(
        write_shard(tmp_path / "b2.parquet", "b", 2, [(11, "X" * 90, True), (12, "M" * 90, False)])
    )
    rows = [
        (0, "A" * 10, True),
        (1, "A" * 11, True),
        (2, "C" * 19, True),
        (3, "C" * 20, True),
        (4, "A" * 11, True),
    ]
    model = [write_shard(tmp_path / "m0.parquet", "m", 0, rows)]
    settings = filter_settings(relative_to_base=(0.1, 0.9), min_sequences=1)
    result, stats = filter_model("m", model, settings, base_model="b", base_shard_paths=base)
    assert stats["window"]["low"] == 11 and stats["window"]["high"] == 19
    assert stats["counts"] == {
        "sampled": 5,
        "truncated": 0,
        "invalid": 0,
        "too_short": 1,
        "too_long": 1,
        "duplicate": 1,
        "kept": 2,
    }
    assert [s.seq_id for s in result.kept] == ["m_000_00001", "m_000_00002"]
    assert stats["length"]["length_min"] == 11 and stats["length"]["length_max"] == 19
    # the base filters by its own quantiles
    _, base_stats = filter_model("b", base, settings, base_model="b")
    assert base_stats["counts"]["kept"] == 9
    assert [s.index for s in read_samples(list(reversed(base)))] == list(range(13))


def test_fasta_headers_round_trip(tmp_path):
    kept = [raw(3, "MKVL", ppl=4.56789), raw(8, "ACDE", ppl=1.5)]
    write_fasta(tmp_path / "m.fasta", fasta_entries("m", kept))
    entries = list(read_fasta(tmp_path / "m.fasta"))
    assert [e.seq_id for e in entries] == ["m_000_00003", "m_000_00008"]
    assert entries[0].fields == {"model": "m", "ppl": "4.5679", "len": "4"}
    assert (tmp_path / "m.fasta").read_text().splitlines()[
        0
    ] == ">m_000_00003 model=m ppl=4.5679 len=4"
