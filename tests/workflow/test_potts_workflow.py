"""The Potts stage in the tiny workflow run, and its DAG with a natural family."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from plmdiff.config import paths
from tests.conftest import dry_run_jobs, run_snakemake, tiny_config, write_config

pytestmark = [pytest.mark.workflow, pytest.mark.slow]


def test_potts_stage_compares_every_round_with_the_base(tiny_run):
    coverage = pd.read_csv(tiny_run / paths.potts_summary_file("coverage.tsv"), sep="\t")
    assert coverage["set"].tolist() == ["r0", "r1", "r2"]
    assert (coverage["kept"] <= coverage["sequences"]).all()
    fits = pd.read_csv(tiny_run / paths.potts_summary_file("fits.tsv"), sep="\t")
    assert (fits["neff"] > 0).all() and (fits["bootstrap"] == 20).all()
    changes = pd.read_csv(tiny_run / paths.potts_summary_file("changes.tsv"), sep="\t")
    assert changes["model"].tolist() == ["r1", "r2"]
    assert not (tiny_run / paths.potts_compare_file("r0", "pairs.tsv")).exists()
    pairs = pd.read_csv(tiny_run / paths.potts_compare_file("r2", "pairs.tsv"), sep="\t")
    columns = json.loads((tiny_run / paths.potts_profile("json")).read_text())["match_columns"]
    assert len(pairs) == columns * (columns - 1) // 2
    energy = pd.read_csv(tiny_run / paths.potts_summary_file("energy.tsv"), sep="\t")
    assert set(energy["set"]) == {"r0", "r1", "r2"} and set(energy["model"]) == {"r0"}
    page = (tiny_run / paths.report_index()).read_text()
    assert "r2 vs base" in page


def test_a_natural_family_is_aligned_fitted_and_scores_every_set(tiny_checkpoints, tmp_path):
    family = tmp_path / "family.fasta"
    family.write_text(">a\nMKVLAAGG\n>b\nMKVLSAGG\n")
    config = tiny_config(tiny_checkpoints)
    config["potts"] = {**config["potts"], "family": str(family)}
    configfile = write_config(tmp_path / "c.yaml", config)
    proc = run_snakemake(tmp_path, configfile, "-n")
    jobs = dry_run_jobs(proc.stdout + proc.stderr)
    sets = {w["potts_set"] for rule, w in jobs if rule == "potts_fit"}
    assert sets == {"r0", "r1", "r2", paths.FAMILY_SET}
    assert {w.get("model") for rule, w in jobs if rule == "potts_compare"} == {"r1", "r2"}
