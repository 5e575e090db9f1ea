"""The standalone HTML report, rendered from synthetic outputs of every stage."""

from __future__ import annotations

import base64
import json
import re
import sys
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from plmdiff.config.sections import section_defaults
from plmdiff.core.errors import DataError
from plmdiff.core.fasta import SequenceEntry
from plmdiff.diff.job import DiffOutputs, run_diff
from plmdiff.diff.settings import DiffConfig
from plmdiff.kl.divergence import kl_frame
from plmdiff.kl.job import run_kl_summary
from plmdiff.report.render import (
    SECTIONS,
    ReportItem,
    build_report,
    page_html,
    render_template,
    rst_to_html,
    template,
)
from tests.unit.diff.synthetic_features import Plant, build_planted

REPO = Path(__file__).resolve().parents[3]
CAPTIONS = REPO / "report"
MODELS = ["r0", "r1", "r2"]
CONFIG = {
    "models": [{"name": m, "checkpoint": f"ckpt/{m}"} for m in MODELS],
    "prompt": {"format": "zymctrl", "label": "4.2.1.1"},
    "sampling": {"n_sequences": 10},
    "sae": {"kfold": 2, "architecture": "batchtopk", "k": 4, "dead_window": 100},
    "diff": {
        "fdr": 0.05,
        "min_abs_log2_fold_change": 1.0,
        "min_direction_change": 0.1,
        "stability_cosine": 0.7,
        "top_n": 4,
        "top_examples": 2,
        "pseudocount": 1.0,
        "min_firing_sequences": 5,
        "min_stable_fraction": 0.5,
        "example_window": 4,
    },
    "kl": {"max_sequences": 5},
    "potts": {
        "enabled": True,
        "family": None,
        "columns": None,
        "min_coverage": 0.8,
        "identity": 0.8,
        "bootstrap": 20,
        "fdr": 0.05,
        "min_neff_per_column": 1.0,
    },
}


def _png(path: Path, title: str) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(3, 2))
    ax.plot([0, 1, 2], [0, 1, 0])
    ax.set_title(title)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return str(path)


def _tsv(path: Path, frame: pd.DataFrame) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    frame.to_csv(path, sep="\t", index=False)
    return str(path)


@pytest.fixture(scope="module")
def items(tmp_path_factory) -> list[ReportItem]:
    root = tmp_path_factory.mktemp("report_inputs")
    out: list[ReportItem] = []
    for m in MODELS:
        rec = root / f"checkpoints/{m}.json"
        rec.parent.mkdir(parents=True, exist_ok=True)
        rec.write_text(
            json.dumps(
                {
                    "architecture": "GPT2LMHeadModel",
                    "n_layers": 2,
                    "d_model": 32,
                    "n_parameters": 1234,
                    "fingerprint": "ab" * 32,
                }
            )
        )
        out.append(ReportItem("overview", str(rec), wildcards={"model": m}))
    out.append(
        ReportItem(
            "sampling",
            _tsv(
                root / "sampling/summary.tsv", pd.DataFrame({"model": MODELS, "kept": [10, 9, 8]})
            ),
            caption=str(CAPTIONS / "sampling_summary.rst"),
        )
    )
    out.append(
        ReportItem(
            "sampling",
            _png(root / "sampling/summary.png", "sampling"),
            caption=str(CAPTIONS / "sampling_summary.rst"),
        )
    )
    out.append(
        ReportItem(
            "demo",
            _tsv(
                root / "demo/dpo_summary.tsv", pd.DataFrame({"round": [0, 1], "reward": [0.1, 0.3]})
            ),
        )
    )
    out.append(
        ReportItem(
            "probes",
            _tsv(
                root / "probes/acc.tsv",
                pd.DataFrame({"layer": range(3), "accuracy": [0.4, 0.7, 0.8]}),
            ),
            wildcards={"embedder": "r0", "pooling": "last"},
        )
    )
    out.append(ReportItem("probes", _png(root / "probes/acc.png", "probes")))
    out.append(
        ReportItem(
            "sanity",
            _tsv(
                root / "sanity/variance.tsv", pd.DataFrame({"layer": [0, 1], "ratio": [0.1, 0.2]})
            ),
        )
    )
    for fold in (0, 1):
        metrics = root / f"saes/base/fold_{fold}.metrics.json"
        metrics.parent.mkdir(parents=True, exist_ok=True)
        metrics.write_text(
            json.dumps(
                {
                    "embedder": "r0",
                    "layer": 1,
                    "scheme": "base",
                    "fold": fold,
                    "fvu": 0.12,
                    "l0": 4.0,
                    "dead_fraction": 0.0,
                    "models": ["r0"],
                }
            )
        )
        out.append(ReportItem("sae", str(metrics), wildcards={"fold": str(fold)}))
        out.append(
            ReportItem(
                "sae",
                _png(root / f"saes/base/fold_{fold}.curves.png", "curves"),
                caption=str(CAPTIONS / "sae_curves.rst"),
                wildcards={"scheme": "base", "fold": str(fold)},
            )
        )

    planted = build_planted(root / "planted", Plant())
    d = root / "diff/r0/layer_01/base"
    d.mkdir(parents=True)
    names = {
        "features_tsv": "features.tsv",
        "features_parquet": "features.parquet",
        "examples_parquet": "examples.parquet",
        "examples_tsv": "examples.tsv",
        "stability_tsv": "stability.tsv",
        "volcano_png": "volcano.png",
        "volcano_svg": "volcano.svg",
        "trajectories_png": "trajectories.png",
        "stability_png": "stability.png",
    }
    outputs = DiffOutputs(**{k: str(d / v) for k, v in names.items()})
    run_diff(
        "base",
        MODELS,
        ["base"],
        [0, 1],
        planted["stats_paths"],
        planted["sae_paths"],
        DiffConfig.from_section({**section_defaults("diff"), **CONFIG["diff"]}),
        outputs,
    )
    wc = {"embedder": "r0", "layer": "01", "family": "base"}
    captions = {
        "features.tsv": "diff_features.rst",
        "volcano.png": "diff_volcano.rst",
        "trajectories.png": "diff_trajectories.rst",
        "examples.tsv": "diff_examples.rst",
        "stability.tsv": "diff_stability_table.rst",
        "stability.png": "diff_stability.rst",
    }
    for name in (
        "features.tsv",
        "examples.tsv",
        "examples.parquet",
        "volcano.png",
        "trajectories.png",
        "stability.tsv",
        "stability.png",
    ):
        stage = "stability" if name.startswith("stability") else "diff"
        cap = str(CAPTIONS / captions[name]) if name in captions else None
        out.append(ReportItem(stage, str(d / name), caption=cap, wildcards=wc))

    rng = np.random.default_rng(0)
    frames = []
    for r, m in enumerate(MODELS):
        entries = [SequenceEntry(f"{m}_000_{i:05d}", "MKV" * 5, {"model": m}) for i in range(4)]
        values = [np.zeros(16) if r == 0 else rng.exponential(0.1 * r, 16) for _ in entries]
        for s in ("own", "base"):
            frames.append(kl_frame(entries, values, model=m, sequence_set=s))
    tables = []
    for m in MODELS:
        path = root / f"kl/{m}.parquet"
        path.parent.mkdir(parents=True, exist_ok=True)
        frame = pd.concat([f for f in frames if f["model"].iloc[0] == m])
        frame.to_parquet(path)
        tables.append(str(path))
        top = frame.sort_values("kl_mean", ascending=False).head(2)
        out.append(
            ReportItem(
                "kl",
                _tsv(root / f"kl/{m}.top.tsv", top.drop(columns=["kl_per_position"])),
                wildcards={"model": m},
            )
        )
    run_kl_summary(tables, MODELS, root / "kl/summary.tsv", [root / "kl/kl_by_round.png"])
    out.append(
        ReportItem("kl", str(root / "kl/summary.tsv"), caption=str(CAPTIONS / "kl_summary.rst"))
    )
    out.append(
        ReportItem(
            "kl", str(root / "kl/kl_by_round.png"), caption=str(CAPTIONS / "kl_by_round.rst")
        )
    )
    out.extend(_potts_items(root / "potts"))
    return out


def _potts_items(root: Path) -> list[ReportItem]:
    def item(path: str, caption: str, **wildcards: str) -> ReportItem:
        return ReportItem("potts", path, caption=str(CAPTIONS / caption), wildcards=wildcards)

    fits = pd.DataFrame(
        {"set": MODELS, "neff": [30.0, 80.0, 90.0], "warning": ["N_eff / L = 0.6 is below", "", ""]}
    )
    sites = pd.DataFrame({"site": [1, 2, 3], "field_shift": [0.1, 2.5, 0.3]})
    out = [
        item(_tsv(root / "fits.tsv", fits), "potts_fits.rst"),
        item(_tsv(root / "changes.tsv", pd.DataFrame({"model": ["r1"]})), "potts_changes.rst"),
        item(_png(root / "energy.png", "energies"), "potts_energy.rst"),
        item(_png(root / "r1/couplings.png", "couplings"), "potts_couplings.rst", model="r1"),
        item(_tsv(root / "r1/sites.tsv", sites), "potts_sites.rst", model="r1"),
    ]
    return out


class _Collector(HTMLParser):
    def __init__(self):
        super().__init__()
        self.ids, self.imgs, self.open = [], [], []

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if "id" in attrs:
            self.ids.append(attrs["id"])
        if tag == "img":
            self.imgs.append(attrs["src"])


def test_report_holds_every_section_figure_and_caption(items, tmp_path):
    out = tmp_path / "report/index.html"
    page = build_report(items, CONFIG, out)
    assert out.read_text() == page
    parser = _Collector()
    parser.feed(page)
    assert [s for s, _, _ in SECTIONS] == [
        i for i in parser.ids if i in {s for s, _, _ in SECTIONS}
    ]
    n_png = sum(
        1
        for i in items
        if i.path.endswith(".png") and (i.stage != "sae" or i.wildcards.get("fold") == "0")
    )
    assert len(parser.imgs) == n_png
    for src in parser.imgs:  # embedded, decodable PNGs: the page needs no other file
        assert src.startswith("data:image/png;base64,")
        assert base64.b64decode(src.split(",", 1)[1])[:8] == b"\x89PNG\r\n\x1a\n"
    assert "{{" not in page and "}}" not in page  # every caption template was filled
    assert "q &lt;= 0.05" in page or "q <= 0.05" in page
    # the diff: planted feature first, its examples with marked residues, stability table
    assert re.search(
        r"<td[^>]*>1</td><td[^>]*>base</td><td[^>]*>0</td><td class=\"up\">up</td>", page
    )
    assert 'class="peak"' in page and "background:rgba(230,85,13" in page
    assert "fold_replica" in page and "Highest-KL sequences" in page
    assert "r0 → r1 → r2" in page and "GPT2LMHeadModel" in page and "abababababab" in page
    assert "Not part of this run" not in page
    assert "r1 vs base" in page and "1 of 3 fits have N_eff / L below" in page


def test_absent_stages_are_said_not_hidden(items, tmp_path):
    page = build_report(
        [i for i in items if i.stage not in ("demo", "sanity")], CONFIG, tmp_path / "index.html"
    )
    assert page.count("Not part of this run") == 2
    assert 'class="absent" href="#demo"' in page


def test_unstable_changes_are_marked(items, tmp_path):
    features = next(i for i in items if i.path.endswith("features.tsv"))
    frame = pd.read_csv(features.path, sep="\t")
    frame["mark"] = frame["mark"].astype(object)
    frame.loc[0, "mark"] = "UNSTABLE"
    moved = tmp_path / "features.tsv"
    frame.to_csv(moved, sep="\t", index=False)
    swapped = [
        ReportItem(i.stage, str(moved), i.caption, i.wildcards) if i is features else i
        for i in items
    ]
    page = build_report(swapped, CONFIG, tmp_path / "index.html")
    assert '<td class="mark">UNSTABLE</td>' in page and "1 of them are marked UNSTABLE" in page


def test_bad_inputs(items, tmp_path):
    with pytest.raises(DataError, match="unknown stage"):
        build_report([ReportItem("nope", items[0].path)], CONFIG, tmp_path / "x.html")
    missing = ReportItem("sampling", str(tmp_path / "gone.png"))
    with pytest.raises(DataError, match=r"gone\.png does not exist"):
        build_report([missing], CONFIG, tmp_path / "x.html")
    assert not (tmp_path / "x.html").exists()  # nothing half-written


@pytest.mark.parametrize("jinja", [True, False])
def test_caption_rendering(jinja, monkeypatch):
    if not jinja:  # the report's conda environment has no jinja2: the fallback fills fields
        monkeypatch.setitem(sys.modules, "jinja2", None)
    text = 'FDR {{ snakemake.config["diff"]["fdr"] }} on layer {{ snakemake.wildcards.layer }}.'
    assert render_template(text, {"diff": {"fdr": 0.05}}, {"layer": "03"}) == (
        "FDR 0.05 on layer 03."
    )
    rendered = rst_to_html("**Left:** the ``x`` value, *here*, with \\|a\\|.\n\nSecond.")
    assert rendered == (
        "<p><b>Left:</b> the <code>x</code> value, <i>here</i>, with |a|.</p>\n<p>Second.</p>"
    )


def test_page_skeleton_and_style_are_package_data():
    skeleton, css = template("page.html"), template("report.css")
    assert skeleton.startswith("<!DOCTYPE html>") and "$body" in skeleton
    assert "section{" in css and "$" not in css
    page = page_html("a <b> title", "sub", ['<a href="#x">x</a>'], ["<section>$1</section>"])
    assert "<title>a &lt;b&gt; title</title>" in page and css in page
    assert '<nav><a href="#x">x</a></nav>' in page and "<section>$1</section>" in page
    assert page.endswith("</html>\n")
