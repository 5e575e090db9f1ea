"""Scoring of the Potts stage on a planted motif (validation.potts_scoring): locating the motif's
columns in aligned rows, and the field-shift and coupling scores on tables with a known answer."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from plmdiff.core.fasta import read_fasta
from validation import potts_scoring
from validation.potts_scoring import motif_columns, motif_placements, score, summary_lines
from validation.verdicts import potts_verdict

MOTIF = "WCY"


def alignment(rows: list[str], kept: list[bool] | None = None) -> pd.DataFrame:
    return pd.DataFrame(
        {"seq_id": [f"s{i}" for i in range(len(rows))], "aligned": rows, "kept": kept or True}
    )


def sites_table(shift: np.ndarray) -> pd.DataFrame:
    return pd.DataFrame({"site": np.arange(1, len(shift) + 1), "field_shift": shift})


def pairs_table(length: int, significant: set[tuple[int, int]]) -> pd.DataFrame:
    i, j = np.triu_indices(length, k=1)
    sig = [(a + 1, b + 1) in significant for a, b in zip(i, j, strict=True)]
    return pd.DataFrame({"site_i": i + 1, "site_j": j + 1, "significant": sig})


def test_placements_skip_deletions_and_find_every_occurrence():
    # columns 1-based: WCY at 3-5; the second row has a deletion at column 4 inside the motif;
    # the third carries it twice.
    rows = ["AAWCYAAAAA", "AAW-CYAAAA", "WCYAAWCYAA", "AAAAAAAAAA"]
    assert motif_placements(rows, MOTIF) == [(3, 4, 5), (3, 5, 6), (1, 2, 3), (6, 7, 8)]
    # The most common placement wins; the share is of all occurrences.
    columns, agree, total = motif_columns([*rows, "AAWCYAAAAA"], MOTIF)
    assert (columns, agree, total) == ((3, 4, 5), 2, 5)
    assert motif_columns(["AAAA"], MOTIF) == ((), 0, 0)


def test_motif_columns_with_the_largest_shifts_meet_the_target():
    length = 10
    rows = ["AAAWCYAAAA"] * 6 + ["AAAAAAAAAA"] * 4
    shift = np.full(length, 0.1)
    shift[[3, 4, 5]] = [0.9, 0.8, 0.7]  # sites 4-6 (1-based), where the motif lies
    shift[0] = 0.5
    pairs = pairs_table(length, {(4, 5), (5, 6), (1, 2)})
    out = score(alignment(rows), sites_table(shift), pairs, MOTIF)
    assert out["motif_columns"] == [4, 5, 6]
    assert out["placement_share"] == 1.0
    assert out["rows_with_motif"] == 6
    assert out["motif_ranks"] == [1, 2, 3]
    assert out["motif_in_top"] == 3
    assert out["rank_auc"] == 1.0
    assert out["motif_pairs"] == 3
    assert out["motif_pairs_significant"] == 2
    assert out["pairs_significant"] == 3
    assert out["pairs_significant_touching_motif"] == 2
    assert potts_verdict(out)["met"]


def test_motif_columns_outranked_by_another_column_miss_the_target():
    length = 10
    rows = ["AAAWCYAAAA"] * 6
    shift = np.full(length, 0.1)
    shift[[3, 4, 5]] = [0.9, 0.8, 0.2]
    shift[8] = 0.5  # a column off the motif beats the motif's third column
    out = score(alignment(rows), sites_table(shift), pairs_table(length, set()), MOTIF)
    assert out["motif_ranks"] == [1, 2, 4]
    assert out["motif_in_top"] == 2
    # 3 motif x 7 other columns, the motif wins all but (0.2 vs 0.5)
    assert out["rank_auc"] == pytest.approx(20 / 21)
    assert out["pairs_significant"] == 0
    verdict = potts_verdict(out)
    assert not verdict["met"]
    assert verdict["motif_in_top"] == 2


def test_dropped_rows_are_ignored_and_an_absent_motif_is_not_met():
    rows = ["AAAWCYAAAA", "AAAAAAAAAA"]
    out = score(
        alignment(rows, kept=[False, True]),
        sites_table(np.linspace(1, 0, 10)),
        pairs_table(10, set()),
        MOTIF,
    )
    assert out["motif_columns"] == []
    assert out["rows"] == 1
    assert not potts_verdict(out)["met"]
    line = summary_lines({"s": {"potts": {**out, "verdict": potts_verdict(out)}}})
    assert any("motif in no aligned row" in x for x in line)


def test_motif_columns_outside_the_sites_table_are_an_error():
    rows = ["AAAAAAAWCY"]
    with pytest.raises(ValueError, match="not sites"):
        score(alignment(rows), sites_table(np.ones(5)), pairs_table(5, set()), MOTIF)


def test_the_natural_family_is_the_crops_the_models_trained_on(tmp_path):
    """`Study.potts_family`: the profile's family is every sequence's first `crop` residues,
    nothing planted; without it the stage builds its profile from the base's samples."""
    path = potts_scoring.write_family(["MKTAYIAKQR", "MSLLVW"], 4, tmp_path)
    assert [e.sequence for e in read_fasta(path)] == ["MKTA", "MSLL"]
    assert potts_scoring.config_section(path)["family"] == str(path)
    assert "family" not in potts_scoring.config_section(None)
    assert potts_scoring.config_section(None)["enabled"] is True
