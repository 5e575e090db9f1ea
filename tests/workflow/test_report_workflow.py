"""The report of the tiny workflow run: every section, and `snakemake --report` works."""

from __future__ import annotations

import re

import pandas as pd
import pytest

from plmdiff.report.render import SECTIONS
from tests.conftest import run_snakemake

pytestmark = [pytest.mark.workflow, pytest.mark.slow]

# Sections whose stage always runs in the tiny workflow; the others when their outputs exist.
ALWAYS = {"overview", "sampling", "sae", "diff", "stability", "kl", "model_diff", "potts"}
OPTIONAL = {
    "demo": "results/demo/dpo_summary.tsv",
    "probes": "results/probes",
    "sanity": "results/sanity",
}


def test_standalone_report_holds_every_section(tiny_run):
    page = (tiny_run / "results/report/index.html").read_text()
    expected = ALWAYS | {s for s, p in OPTIONAL.items() if (tiny_run / p).exists()}
    for stage, heading, _ in SECTIONS:
        match = re.search(rf'<section id="{stage}">(.*?)</section>', page, re.S)
        assert match, f"section {stage} missing"
        if stage in expected:
            assert "Not part of this run" not in match.group(1), f"section {heading} is empty"
    assert page.count("data:image/png;base64,") >= 6
    assert "{{" not in page
    # the diff tables the page shows are the ones the diff rule wrote
    for family in ("base", "per_model", "pooled"):
        tsv = tiny_run / f"results/diff/r0/layer_01/{family}/features.tsv"
        frame = pd.read_csv(tsv, sep="\t")
        assert f"family <code>{family}</code>" in page and len(frame) > 0
        assert {"q_value", "stability", "change_replication", "mark"} <= set(frame.columns)
    # the diff section leads: a paired table of the lenses, then per analysis what it called,
    # the lead figure and the evaluating SAEs' fit (from the SAE stage's metrics)
    diff = re.search(r'<section id="diff">(.*?)</section>', page, re.S).group(1)
    assert diff.index('<table class="paired">') < diff.index("Ranked features, volcano")
    assert diff.count("tested features called changed") >= 3
    assert diff.count("Fit of the evaluating SAEs") == 3 and "<td>r0, r1, r2</td>" in diff
    assert diff.count('alt="lead.png"') == 3


def test_kl_is_scored_for_the_rounds_only_and_rounds_move(tiny_run):
    """No KL of the base against itself (a known 0 that would cost a GPU job)."""
    summary = pd.read_csv(tiny_run / "results/kl/summary.tsv", sep="\t")
    assert 0 not in set(summary["round"]) and set(summary["round"]) == {1, 2}
    assert not (tiny_run / "results/kl/r0.parquet").exists()
    assert (summary["mean"] > 0).all()


def test_snakemake_report(tiny_run, tmp_path):
    out = tiny_run / "results/report/snakemake_report.html"
    run_snakemake(tiny_run, tiny_run / "config.yaml", "--report", str(out))
    text = out.read_text(errors="replace")
    for category in ("Feature diffs", "Stability", "KL to the base", "Report"):
        assert category in text
