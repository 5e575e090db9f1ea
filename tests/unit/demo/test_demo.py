"""Unit tests of the demo's library: reward, proxy, pairs, settings, summary."""

from __future__ import annotations

import math
import random
from pathlib import Path

import numpy as np
import pytest

from plmdiff.config.schema import load_schema
from plmdiff.config.sections import section_defaults
from plmdiff.core.errors import ConfigError, DataError
from plmdiff.demo.base_model import describe_samples, split_holdout, training_sequences
from plmdiff.demo.dpo import (
    PreferencePair,
    ScoredSample,
    build_pairs,
    completion_text,
    preference_rows,
    score_samples,
)
from plmdiff.demo.reward import (
    RewardSpec,
    beta_helix_coverage,
    hexapeptide_density,
    hexapeptide_starts,
    length_term,
    median_length,
    score_sequence,
)
from plmdiff.demo.settings import (
    BaseModelConfig,
    DPOSettings,
    check_demo_config,
    demo_seed,
    resolve_family_fasta,
)
from plmdiff.demo.summary import mean_se, paired_p_value, plot_summary, summarise
from plmdiff.sampling.settings import Sample
from plmdiff.testing.checkpoints import ZYMCTRL_FORMAT, family_sequences

# Two in-register hexapeptide repeats: L-G-x-x-S-x then I-A-x-x-T-x.
TANDEM = "LGKQSNIAPDTW"


# ----------------------------------------------------------------------------- proxy


def test_hexapeptide_matches_overlap_and_ignore_case():
    assert hexapeptide_starts("LGAASA") == [0]
    assert hexapeptide_starts("lgaasa") == [0]
    # V-E-x-x-A-x at 0 and I-G-x-x-S-x at 2 overlap; both are found.
    assert hexapeptide_starts("VEIGAASK") == [0, 2]
    assert hexapeptide_starts("PPPPPP") == []


def test_coverage_counts_only_tandem_in_register_repeats():
    assert beta_helix_coverage(TANDEM) == 1.0
    assert beta_helix_coverage("PP" + TANDEM + "PP") == pytest.approx(12 / 16)
    # One isolated match (common by chance) counts nothing.
    assert beta_helix_coverage("LGKQSNPPPPPP") == 0.0
    # Two matches seven apart are out of register: not a beta-helix coil.
    assert beta_helix_coverage("LGKQSNPIAPDTW") == 0.0


@pytest.mark.parametrize("sequence", ["", "X", "XXXXXXXXXXXX", "BZOUJ" * 4])
def test_proxy_edge_cases(sequence):
    assert beta_helix_coverage(sequence) == 0.0
    assert hexapeptide_density(sequence) == 0.0


def test_density_counts_overlapping_matches_per_residue():
    assert hexapeptide_density(TANDEM) == pytest.approx(2 / 12)
    assert hexapeptide_density("VEIGAASK") == pytest.approx(2 / 8)
    assert hexapeptide_density("lgkqsn") == pytest.approx(1 / 6)
    # Non-canonical letters are just residues that match nothing.
    assert hexapeptide_density("LGXXSX") == pytest.approx(1 / 6)


def test_density_separates_the_family_from_shuffled_sequences():
    family = family_sequences()
    rng = random.Random(0)
    shuffled = ["".join(rng.sample(s, len(s))) for s in family]
    fam = np.array([hexapeptide_density(s) for s in family])
    shuf = np.array([hexapeptide_density(s) for s in shuffled])
    assert fam.mean() > 1.8 * shuf.mean()
    assert (fam[:, None] > shuf[None, :]).mean() > 0.85  # AUC


def test_coverage_separates_the_family_from_shuffled_sequences():
    family = family_sequences()
    rng = random.Random(0)
    shuffled = ["".join(rng.sample(s, len(s))) for s in family]
    fam = np.array([beta_helix_coverage(s) for s in family])
    shuf = np.array([beta_helix_coverage(s) for s in shuffled])
    assert np.median(fam) > 0.1 > np.median(shuf)
    assert (fam[:, None] > shuf[None, :]).mean() > 0.9  # AUC


# ----------------------------------------------------------------------------- reward


def test_length_term_is_protrl_s():
    assert length_term(183, 183) == 1.0
    assert length_term(183 * 1.5, 183) == pytest.approx(math.exp(-1))
    assert length_term(183 * 0.5, 183) == pytest.approx(math.exp(-1))
    assert length_term(0, 183) == pytest.approx(math.exp(-4))
    with pytest.raises(ValueError):
        length_term(10, 0)


SPEC = RewardSpec(length_target=12, family_density=0.5)


def test_score_of_valid_and_invalid_samples():
    good = score_sequence(TANDEM, ended=True, spec=SPEC)
    assert good.valid and good.coverage == 1.0 and good.density == pytest.approx(2 / 12)
    # The proxy is relative to the family's density; the length is on target.
    assert good.proxy == pytest.approx(1 / 3) and good.length_term == 1.0
    assert good.reward == pytest.approx(1 + 1 / 3)
    truncated = score_sequence(TANDEM, ended=False, spec=SPEC)
    assert not truncated.valid and truncated.reward == 0.0 and truncated.proxy > 0
    odd = score_sequence(TANDEM[:6] + "X" + TANDEM[7:], ended=True, spec=SPEC)
    assert not odd.valid and odd.reward == 0.0
    empty = score_sequence("", ended=True, spec=SPEC)
    assert not empty.valid and empty.reward == 0.0 and math.isnan(empty.proxy)


def test_reward_spec_from_the_family():
    family = family_sequences()
    spec = RewardSpec.from_family(family)
    assert spec.length_target == 183
    assert 0.045 < spec.family_density < 0.055
    assert RewardSpec.from_family(family, length_target=150).length_target == 150
    with pytest.raises(DataError, match=r"holds no \[LIV\]"):
        RewardSpec.from_family(["MKVPPPPPPPPPPP", "MKLPPPPPPPP"])


def test_median_length():
    assert median_length(["AAA", "A", "AA"]) == 2.0
    with pytest.raises(ValueError):
        median_length([])


# ----------------------------------------------------------------------------- pairs


def _scored(index, reward, ended=True, sequence="ACDE"):
    return ScoredSample(
        index, sequence, ended, len(sequence) + 1, 3.0, ended, 0.05, 1.0, 0.1, 0.5, reward
    )


def test_pairs_best_against_worst_disjoint():
    scored = [_scored(i, r) for i, r in enumerate([0.5, 0.9, 0.1, 0.7, 0.3, 0.2])]
    pairs = build_pairs(scored, 2)
    assert [(p.chosen.index, p.rejected.index) for p in pairs] == [(1, 2), (3, 5)]
    used = [s.index for p in pairs for s in (p.chosen, p.rejected)]
    assert len(used) == len(set(used))
    assert all(p.margin > 0 for p in pairs)


def test_pairs_reject_truncated_samples_first_drop_ties_and_cap_at_half():
    scored = [_scored(0, 1.0), _scored(1, 0.0, ended=False), _scored(2, 0.2), _scored(3, 0.3)]
    pairs = build_pairs(scored, 10)
    # A truncated sample scores 0: it is the first rejected; 4 samples make at most 2 pairs.
    assert [(p.chosen.index, p.rejected.index) for p in pairs] == [(0, 1), (3, 2)]
    assert build_pairs([_scored(0, 0.4), _scored(1, 0.4)], 1) == []
    assert build_pairs([], 3) == []


def test_pairs_are_deterministic_under_reordering():
    scored = [_scored(i, r) for i, r in enumerate([0.3, 0.3, 0.9, 0.1, 0.1, 0.5])]
    a = build_pairs(scored, 3)
    b = build_pairs(list(reversed(scored)), 3)
    assert [(p.chosen.index, p.rejected.index) for p in a] == [
        (p.chosen.index, p.rejected.index) for p in b
    ]


def test_preference_rows_are_zymctrl_text():
    pair = PreferencePair(_scored(0, 1.0, sequence="MKV"), _scored(1, 0.0, sequence="MKL"))
    [row] = preference_rows([pair], ZYMCTRL_FORMAT)
    assert row == {
        "prompt": "4.2.1.1<sep><start>",
        "chosen": "MKV<end><|endoftext|>",
        "rejected": "MKL<end><|endoftext|>",
    }
    assert row["prompt"] + row["chosen"] == ZYMCTRL_FORMAT.scoring_text("MKV")
    # A truncated sample is trained on as generated: residues, no stop tokens.
    truncated = _scored(2, 0.0, ended=False, sequence="MKLLL")
    assert completion_text(truncated, ZYMCTRL_FORMAT) == "MKLLL"


def test_score_samples_keeps_sampler_fields():
    samples = [Sample(4, TANDEM, True, 13, 2.5), Sample(5, "MK", False, 100, math.nan)]
    scored = score_samples(samples, SPEC)
    assert [s.index for s in scored] == [4, 5]
    assert scored[0].reward == pytest.approx(1 + 1 / 3) and scored[0].n_tokens == 13
    assert scored[1].reward == 0.0 and not scored[1].valid


# ----------------------------------------------------------------------------- settings


def demo_config(base=None, dpo=None, prompt_format="zymctrl"):
    """A config with the demo's sections completed by the schema's defaults."""
    return {
        "prompt": {"format": prompt_format, "label": "4.2.1.1"},
        "demo": {
            "base": {**section_defaults("demo", "base"), **(base or {})},
            "dpo": {**section_defaults("demo", "dpo"), **(dpo or {})},
        },
    }


def test_settings_reject_bad_values():
    with pytest.raises(ConfigError, match=r"demo.dpo.pairs_per_round = 60"):
        check_demo_config(demo_config(dpo={"samples_per_round": 100, "pairs_per_round": 60}))
    with pytest.raises(ConfigError, match=r"demo.base.n_head = 3"):
        check_demo_config(demo_config(base={"n_embd": 128, "n_head": 3}))
    with pytest.raises(ConfigError, match=r"demo.base.n_positions = 128"):
        check_demo_config(demo_config(base={"n_positions": 128, "max_train_length": 400}))
    check_demo_config(demo_config(base={"n_positions": 128, "crop": 60}))


def test_demo_needs_zymctrl_prompts():
    config = demo_config(prompt_format="plain")
    with pytest.raises(ConfigError, match=r"prompt.format = 'plain'"):
        check_demo_config(config)
    config["prompt"]["format"] = "zymctrl"
    check_demo_config(config)


def test_family_fasta_resolves_in_cwd_then_workflow_dir(tmp_path):
    cwd, basedir = tmp_path / "run", tmp_path / "workflow"
    (basedir / "resources").mkdir(parents=True)
    (cwd / "resources").mkdir(parents=True)
    shipped = basedir / "resources" / "fam.fasta"
    shipped.write_text(">a\nMKV\n")
    assert resolve_family_fasta("resources/fam.fasta", cwd, basedir) == shipped
    local = cwd / "resources" / "fam.fasta"
    local.write_text(">b\nMKL\n")
    # relative to the working directory, so a moved run directory keeps the same input
    assert resolve_family_fasta("resources/fam.fasta", cwd, basedir) == Path("resources/fam.fasta")
    assert resolve_family_fasta(local, cwd, basedir) == local
    assert resolve_family_fasta(shipped, cwd, basedir) == shipped
    with pytest.raises(ConfigError, match=r"demo.family_fasta: 'nope.fasta' does not exist"):
        resolve_family_fasta("nope.fasta", cwd, basedir)


def test_seeds_differ_by_purpose_and_round():
    seeds = {demo_seed(0, what, i) for what in ("round-samples", "summary") for i in (1, 2)}
    assert len(seeds) == 4
    assert demo_seed(0, "summary", 1) == demo_seed(0, "summary", 1)


# ----------------------------------------------------------------------------- base model


def test_holdout_split_is_seeded_and_disjoint():
    seqs = [f"M{'A' * i}" for i in range(50)]
    train, holdout = split_holdout(seqs, 0.1, seed=3)
    assert len(holdout) == 5 and len(train) == 45
    assert not set(train) & set(holdout)
    assert split_holdout(seqs, 0.1, seed=3) == (train, holdout)
    assert split_holdout(seqs, 0.1, seed=4) != (train, holdout)
    assert len(split_holdout(["MA", "MK"], 0.9, seed=0)[0]) == 1


def test_training_sequences_crop_and_length_cap():
    base = section_defaults("demo", "base")
    cfg = BaseModelConfig.from_section({**base, "max_train_length": 5, "n_positions": 64})
    assert training_sequences(["MKV", "MKVLAAA", "MK"], cfg) == ["MKV", "MK"]
    cropped = BaseModelConfig.from_section(
        {**base, "max_train_length": 5, "crop": 2, "n_positions": 64}
    )
    assert training_sequences(["MKV", "MKVLAAA"], cropped) == ["MK", "MK"]
    with pytest.raises(ConfigError, match=r"max_train_length = 5"):
        training_sequences(["MKVLAAA", "MKVLAAAA"], cfg)


def test_describe_samples_against_family():
    family = ["M" + "A" * 99, "M" + "A" * 119]
    samples = [
        Sample(0, "M" + "A" * 109, True, 111, 2.0),
        Sample(1, "MAXA", True, 5, 3.0),
        Sample(2, "MAAA", False, 50, math.nan),
    ]
    d = describe_samples(samples, family)
    assert d["fraction_ended"] == pytest.approx(2 / 3)
    assert d["fraction_canonical"] == pytest.approx(1 / 2)
    assert d["sample_length"]["q50"] == 110
    assert d["family_length"]["q50"] == 110
    assert d["length_ks_statistic"] == pytest.approx(0.5)


# ----------------------------------------------------------------------------- summary


def test_mean_se():
    assert mean_se([1.0, 3.0]) == (2.0, pytest.approx(1.0))
    m, se = mean_se([2.0])
    assert m == 2.0 and math.isnan(se)
    assert all(math.isnan(v) for v in mean_se([]))
    assert mean_se([1.0, math.nan, 3.0])[0] == 2.0


def test_summary_table_and_figure(tmp_path: Path):
    base = [_scored(i, 0.2 + 0.01 * i) for i in range(10)]
    better = [_scored(i, 0.6 + 0.01 * i) for i in range(10)]
    table = summarise([base, better])
    assert list(table["iteration"]) == [0, 1]
    assert table.loc[1, "reward_delta_vs_base"] == pytest.approx(0.4)
    assert math.isnan(table.loc[0, "reward_p_vs_base"])
    assert table.loc[1, "reward_p_vs_base"] < 0.01
    assert table.loc[0, "fraction_valid"] == 1.0
    assert paired_p_value(base, base) == 1.0
    png = tmp_path / "s.png"
    plot_summary(table, png, length_target=5)
    assert png.read_bytes()[:4] == b"\x89PNG"


def test_settings_read_every_schema_key_and_nothing_else():
    demo = load_schema()["properties"]["demo"]["properties"]
    for cls, key in ((BaseModelConfig, "base"), (DPOSettings, "dpo")):
        assert set(cls.__dataclass_fields__) == set(demo[key]["properties"])
        settings = cls.from_section(section_defaults("demo", key))
        for name in cls.__dataclass_fields__:
            assert getattr(settings, name) == demo[key]["properties"][name]["default"]
    with pytest.raises(ConfigError, match=r"demo.dpo.seed is missing"):
        DPOSettings.from_section(
            {k: v for k, v in section_defaults("demo", "dpo").items() if k != "seed"}
        )
