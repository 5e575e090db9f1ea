"""The kl and kl_summary rules' entries: tables, top list, summary and figure on disk."""

from __future__ import annotations

import runpy
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

from plmdiff.config.sections import section_defaults
from plmdiff.core import runtime
from plmdiff.core.errors import DataError
from plmdiff.core.fasta import SequenceEntry, write_fasta
from plmdiff.core.runtime import write_json
from plmdiff.kl.divergence import BASE_SET, OWN, kl_frame
from plmdiff.kl.job import run_kl, run_kl_summary
from plmdiff.models.checkpoints import inspect_checkpoint
from plmdiff.testing.checkpoints import ZYMCTRL_FORMAT, family_sequences

MODELS = ["r0", "r1"]
SCRIPTS = Path(__file__).resolve().parents[3] / "workflow_scripts"


def _fasta(path, model, n=4):
    seqs = [s[:30] for s in family_sequences(limit=n)]
    write_fasta(
        path,
        [SequenceEntry(f"{model}_000_{i:05d}", s, {"model": model}) for i, s in enumerate(seqs)],
    )
    return path


def _rule_kl(tiny_checkpoints, tmp_path, model):
    record = tmp_path / "r0.json"
    write_json(record, inspect_checkpoint(tiny_checkpoints["r0"], "r0", ZYMCTRL_FORMAT).to_json())
    fastas = {
        OWN: _fasta(tmp_path / f"{model}.fasta", model),
        BASE_SET: _fasta(tmp_path / "r0.fasta", "r0"),
    }
    out = {"table_path": tmp_path / f"{model}.parquet", "top_path": tmp_path / f"{model}.top.tsv"}
    frame = run_kl(
        model,
        tiny_checkpoints[model],
        "r0",
        tiny_checkpoints["r0"],
        fastas,
        record,
        prompt={"format": ZYMCTRL_FORMAT.format, "label": ZYMCTRL_FORMAT.label},
        kl_section={**section_defaults("kl"), "top_sequences": 3},
        device="cpu",
        allow_pickle=False,
        **out,
    )
    return frame, out


def test_run_kl_writes_the_table_and_top_list(tiny_checkpoints, tmp_path):
    frame, out = _rule_kl(tiny_checkpoints, tmp_path, "r1")
    table = pd.read_parquet(out["table_path"])
    assert len(table) == len(frame) == 8 and set(table["set"]) == {OWN, BASE_SET}
    assert len(table["kl_per_position"].iloc[0]) == table["n_positions"].iloc[0]
    top = pd.read_csv(out["top_path"], sep="\t")
    assert len(top) == 3 and top["kl_mean"].is_monotonic_decreasing
    # the base against itself is checked to be exactly 0
    base, _ = _rule_kl(tiny_checkpoints, tmp_path, "r0")
    assert (base["kl_max"] == 0).all()


def test_run_kl_summary_writes_the_summary_and_figure(tmp_path):
    rng = np.random.default_rng(0)
    tables = []
    for r, m in enumerate(MODELS):
        entries = [SequenceEntry(f"{m}_000_{i:05d}", "MKV" * 5, {"model": m}) for i in range(3)]
        values = [np.zeros(16) if r == 0 else rng.exponential(0.1, 16) for _ in entries]
        frame = pd.concat(
            [kl_frame(entries, values, model=m, sequence_set=s) for s in (OWN, BASE_SET)]
        )
        tables.append(tmp_path / f"{m}.parquet")
        frame.to_parquet(tables[-1])
    figure = tmp_path / "kl_by_round.png"
    summary = run_kl_summary(tables, MODELS, tmp_path / "summary.tsv", [figure])
    written = pd.read_csv(tmp_path / "summary.tsv", sep="\t")
    assert written[["model", "round", "set"]].values.tolist() == [
        ["r0", 0, OWN],
        ["r0", 0, BASE_SET],
        ["r1", 1, OWN],
        ["r1", 1, BASE_SET],
    ]
    assert (written.loc[written["round"] == 0, "max"] == 0).all()
    assert written["mean"].to_numpy() == pytest.approx(summary["mean"].to_numpy(), rel=1e-3)
    assert figure.stat().st_size > 1000


def test_missing_fasta_is_named(tiny_checkpoints, tmp_path):
    with pytest.raises(DataError, match=r"gone\.fasta does not exist"):
        run_kl(
            "r1",
            tiny_checkpoints["r1"],
            "r0",
            tiny_checkpoints["r0"],
            {OWN: tmp_path / "gone.fasta"},
            tmp_path / "record.json",
            prompt={"format": "zymctrl", "label": "4.2.1.1"},
            kl_section=section_defaults("kl"),
            device="cpu",
            allow_pickle=False,
            table_path=tmp_path / "t.parquet",
            top_path=tmp_path / "t.tsv",
        )


def _run_script(name, monkeypatch, **snakemake):
    """Run workflow_scripts/<name> as Snakemake would, with a stand-in `snakemake` object."""
    monkeypatch.setattr(runtime, "setup_logging", lambda log: None)  # keep pytest's logging
    stub = SimpleNamespace(log=["rule.log"], **snakemake)
    runpy.run_path(str(SCRIPTS / name), init_globals={"snakemake": stub})


def test_rule_scripts_hand_over_to_the_job(tiny_checkpoints, tmp_path, monkeypatch):
    record = tmp_path / "r0.json"
    write_json(record, inspect_checkpoint(tiny_checkpoints["r0"], "r0", ZYMCTRL_FORMAT).to_json())
    tables = []
    for model in MODELS:
        tables.append(tmp_path / f"{model}.parquet")
        _run_script(
            "kl.py",
            monkeypatch,
            wildcards=SimpleNamespace(model=model),
            params=SimpleNamespace(
                checkpoint=tiny_checkpoints[model],
                base="r0",
                base_checkpoint=tiny_checkpoints["r0"],
                prompt={"format": ZYMCTRL_FORMAT.format, "label": ZYMCTRL_FORMAT.label},
                kl=section_defaults("kl"),
            ),
            config={"device": "cpu", "allow_pickle": False},
            input=SimpleNamespace(
                own=_fasta(tmp_path / f"{model}.fasta", model),
                base=_fasta(tmp_path / "base.fasta", "r0"),
                record=record,
            ),
            output=SimpleNamespace(table=tables[-1], top=tmp_path / f"{model}.top.tsv"),
        )
    out = SimpleNamespace(
        tsv=tmp_path / "summary.tsv", png=tmp_path / "kl.png", svg=tmp_path / "kl.svg"
    )
    # One cluster per model's own set: the interval then resamples whole clusters.
    ids = pd.concat([pd.read_parquet(t) for t in tables])["seq_id"].unique()
    clusters = tmp_path / "clusters.tsv"
    pd.DataFrame({"seq_id": ids, "cluster": [i.split("_")[0] for i in ids]}).to_csv(
        clusters, sep="\t", index=False
    )
    _run_script(
        "kl_summary.py",
        monkeypatch,
        input=SimpleNamespace(tables=[str(t) for t in tables], clusters=clusters),
        params=SimpleNamespace(models=MODELS),
        output=out,
    )
    summary = pd.read_csv(out.tsv, sep="\t")
    assert summary["set"].tolist() == [OWN, BASE_SET, OWN, BASE_SET]
    assert (summary.loc[summary["round"] == 0, "max"] == 0).all() and out.svg.stat().st_size > 0
    assert (summary["ci_unit"] == "sequence cluster").all()
    assert (summary["mean_ci_low"] <= summary["mean"]).all()
    assert (summary["mean"] <= summary["mean_ci_high"]).all()
