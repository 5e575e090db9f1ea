"""The report rule's entry: the items that report_items() (rules/report_items.smk) hands over."""

from __future__ import annotations

import runpy
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pytest

from plmdiff.core import runtime
from plmdiff.core.errors import DataError
from plmdiff.report.job import run_report

SCRIPTS = Path(__file__).resolve().parents[3] / "workflow_scripts"

CONFIG = {"models": [{"name": "r0", "checkpoint": "ckpt/r0"}], "prompt": {"label": "4.2.1.1"}}


def test_run_report_renders_the_rule_items(tmp_path):
    table = tmp_path / "summary.tsv"
    pd.DataFrame({"model": ["r0"], "kept": [10]}).to_csv(table, sep="\t", index=False)
    caption = tmp_path / "caption.rst"
    caption.write_text("Kept **{{ snakemake.wildcards.model }}** sequences.")
    items = [
        {
            "stage": "sampling",
            "path": str(table),
            "caption": str(caption),
            "wildcards": {"model": "r0"},
        }
    ]
    out = tmp_path / "report/index.html"
    page = run_report(items, CONFIG, out)
    assert out.read_text() == page
    assert "Kept <b>r0</b> sequences." in page and "<td style" in page


def test_run_report_names_a_bad_item(tmp_path):
    with pytest.raises(DataError, match="unknown stage"):
        run_report(
            [{"stage": "nope", "path": str(tmp_path / "x.tsv")}], CONFIG, tmp_path / "i.html"
        )


def test_rule_script_hands_over_to_the_job(tmp_path, monkeypatch):
    monkeypatch.setattr(runtime, "setup_logging", lambda log: None)  # keep pytest's logging
    table = tmp_path / "summary.tsv"
    pd.DataFrame({"model": ["r0"], "kept": [10]}).to_csv(table, sep="\t", index=False)
    out = tmp_path / "index.html"
    stub = SimpleNamespace(
        log=["rule.log"],
        params=SimpleNamespace(report_items=[{"stage": "sampling", "path": str(table)}]),
        config=CONFIG,
        output=[str(out)],
    )
    runpy.run_path(str(SCRIPTS / "report.py"), init_globals={"snakemake": stub})
    assert '<section id="sampling">' in out.read_text()
