"""The Potts stage's rule functions end to end on a small synthetic study."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from plmdiff.config.paths import FAMILY_SET
from plmdiff.config.sections import section_defaults
from plmdiff.core.errors import DataError
from plmdiff.core.fasta import SequenceEntry, write_fasta
from plmdiff.potts import job

AMINO = "ACDEFGHIKLMNPQRSTVWY"


@pytest.fixture(autouse=True)
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def section(**overrides):
    # Two refits (the schema asks for >= 20 in a study) keep the test short.
    return {
        **section_defaults("potts"),
        "enabled": True,
        "max_iterations": 30,
        "bootstrap": 2,
        **overrides,
    }


def write_set(path: Path, name: str, n: int, seed: int, motif: bool = False) -> Path:
    rng = np.random.default_rng(0)
    ancestor = rng.choice(list(AMINO), size=40)
    rng = np.random.default_rng(seed)
    entries = []
    for k in range(n):
        seq = ancestor.copy()
        mutate = rng.random(40) < 0.15
        seq[mutate] = rng.choice(list(AMINO), size=int(mutate.sum()))
        if motif and rng.random() < 0.8:
            seq[10:14] = list("WCYM")
        entries.append(SequenceEntry(f"{name}_{k}", "".join(seq)))
    write_fasta(path, entries)
    return path


def test_the_stage_runs_end_to_end(tmp_path):
    sec = section()
    fastas = {
        "r0": write_set(tmp_path / "r0.fasta", "r0", 60, 1),
        "r1": write_set(tmp_path / "r1.fasta", "r1", 60, 2, motif=True),
    }
    family = write_set(tmp_path / "family.fasta", "nat", 60, 3)
    out = tmp_path / "out"
    job.run_potts_profile(
        fastas["r0"],
        from_family=False,
        potts_section=sec,
        hmm_path=out / "p.hmm",
        info_path=out / "p.json",
    )
    assert json.loads((out / "p.json").read_text())["match_columns"] >= 35
    sources = {**fastas, FAMILY_SET: family}
    for name, source in sources.items():
        job.run_potts_align(
            name,
            out / "p.hmm",
            source,
            potts_section=sec,
            table_path=out / f"{name}.parquet",
            coverage_path=out / f"{name}.cov.json",
        )
        record = job.run_potts_fit(
            name,
            out / f"{name}.parquet",
            potts_section=sec,
            device="cpu",
            fit_path=out / f"{name}.safetensors",
            info_path=out / f"{name}.json",
        )
        # 60 near-identical rows over ~40 columns: N_eff / L is far below 1, and says so
        assert record["neff"] < record["sequences"] and "N_eff / L" in record["warning"]
    job.run_potts_compare(
        "r1",
        out / "r0.safetensors",
        out / "r1.safetensors",
        potts_section=sec,
        sites_path=out / "sites.tsv",
        pairs_path=out / "pairs.tsv",
        figure_paths=[out / "couplings.png"],
    )
    sites = pd.read_csv(out / "sites.tsv", sep="\t")
    top = sites.sort_values("field_shift", ascending=False)["top_state"].head(4)
    assert set(top) <= set("WCYM")
    outputs = {
        "coverage": out / "coverage.tsv",
        "fits": out / "fits.tsv",
        "changes": out / "changes.tsv",
        "energy": out / "energy.tsv",
        "energies": out / "energies.parquet",
        "energy_figures": [out / "energy.png"],
    }
    sets = ["r0", "r1", FAMILY_SET]
    summary = job.run_potts_summary(
        sets,
        alignments={s: out / f"{s}.parquet" for s in sets},
        coverages=[out / f"{s}.cov.json" for s in sets],
        fit_infos=[out / f"{s}.json" for s in sets],
        scorer_fits={"r0": out / "r0.safetensors", FAMILY_SET: out / f"{FAMILY_SET}.safetensors"},
        compare_files={"r1": (out / "sites.tsv", out / "pairs.tsv")},
        reference=FAMILY_SET,
        outputs=outputs,
    )
    assert set(summary["model"]) == {"r0", FAMILY_SET}
    assert summary["fraction_in_band"].between(0, 1).all()
    changes = pd.read_csv(out / "changes.tsv", sep="\t")
    assert changes["model"].tolist() == ["r1"] and changes["pairs_tested"][0] > 0
    assert len(pd.read_parquet(out / "energies.parquet")) == 2 * sum(
        pd.read_parquet(out / f"{s}.parquet")["kept"].sum() for s in sets
    )
    assert (out / "energy.png").stat().st_size > 0 and (out / "couplings.png").exists()


def test_too_few_sequences_stop_with_one_message(tmp_path):
    fasta = write_set(tmp_path / "r0.fasta", "r0", 30, 1)
    sec = section()
    job.run_potts_profile(
        fasta,
        from_family=False,
        potts_section=sec,
        hmm_path=tmp_path / "p.hmm",
        info_path=tmp_path / "p.json",
    )
    with pytest.raises(DataError) as err:
        job.run_potts_align(
            "r0",
            tmp_path / "p.hmm",
            fasta,
            potts_section=section(min_sequences=50),
            table_path=tmp_path / "r0.parquet",
            coverage_path=tmp_path / "r0.json",
        )
    message = str(err.value)
    assert "set 'r0'" in message and "30 of 30 sequences" in message
    assert "potts.min_sequences = 50" in message and "\n" not in message
    assert not (tmp_path / "r0.parquet").exists()


def test_neff_warning_bound():
    assert job.neff_warning(100.0, 50, 1.0) == ""
    assert "0.50" in job.neff_warning(25.0, 50, 1.0)
