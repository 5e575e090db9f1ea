"""The standalone HTML report, rendered from synthetic outputs of every stage."""

from __future__ import annotations

import base64
import html
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
from plmdiff.model_diff.figures import plot_profile
from plmdiff.report.diffs import POSTERIOR, analysis_counts, counts_sentence, pct, verdict
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
        "prior_count": 10.0,
        "min_direction_change": 0.1,
        "direction_null_quantile": 0.999,
        "stability_cosine": 0.7,
        "top_n": 4,
        "top_examples": 2,
        "pseudocount": 1.0,
        "min_firing_sequences": 5,
        "min_stable_fraction": 0.5,
        "example_window": 4,
    },
    "kl": {"max_sequences": 5},
    "model_diff": section_defaults("model_diff"),
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
        "lead_png": "lead.png",
        "stability_png": "stability.png",
        "fit_tsv": "fit.tsv",
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
        "lead.png": "diff_lead.rst",
    }
    for name in (
        "features.tsv",
        "features.parquet",
        "lead.png",
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
    # model_diff: the profile (table and figure) and one layer's class counts
    profile = pd.DataFrame(
        [
            {
                "layer": layer,
                "model": m,
                "scope": scope,
                "position_from": lo,
                "position_to": hi,
                "n_tokens": 10,
                "mean": 1.0 + r,
                "q05": 0.5,
                "q25": 0.8,
                "q50": 1.0,
                "q75": 1.2,
                "q95": 2.0,
                "mean_relative": 0.1,
                "kl_mean": 0.01 if scope == "all" else np.nan,
            }
            for layer in (1, 2)
            for r, m in enumerate(MODELS[1:])
            for scope, lo, hi in (("all", 0.0, 1.0), ("position", 0.0, 0.5), ("position", 0.5, 1.0))
        ]
    )
    plot_profile(profile, [root / "model_diff/profile.png"])
    profile_caption = str(CAPTIONS / "model_diff_profile.rst")
    out.append(
        ReportItem("model_diff", _tsv(root / "model_diff/profile.tsv", profile), profile_caption)
    )
    out.append(ReportItem("model_diff", str(root / "model_diff/profile.png"), profile_caption))
    classes = pd.DataFrame(
        {
            "layer": [1],
            "model": ["r1"],
            "latents": [8],
            "shared": [5],
            "round_only": [2],
            "base_only": [0],
            "mixed": [0],
            "dead": [1],
        }
    )
    out.append(
        ReportItem(
            "model_diff",
            _tsv(root / "model_diff/layer_01/classes.tsv", classes),
            str(CAPTIONS / "model_diff_classes.rst"),
            wildcards={"layer": "01"},
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


def _swap(items, name, frame, tmp_path):
    """The items with the fixture's diff file `name` replaced by `frame` (Parquet)."""
    old = next(i for i in items if i.name == name)
    moved = tmp_path / name
    frame.to_parquet(moved)
    return [
        ReportItem(i.stage, str(moved), i.caption, i.wildcards) if i is old else i for i in items
    ]


def _diff_section(page: str) -> str:
    return re.search(r'<section id="diff">(.*?)</section>', page, re.S).group(1)


def test_the_diff_leads_with_its_stable_changed_features(items, tmp_path):
    page = build_report(items, CONFIG, tmp_path / "index.html")
    diff = _diff_section(page)
    features = pd.read_parquet(next(i for i in items if i.name == "features.parquet").path)
    planted = features[features["feature"] == 0].iloc[0]
    assert bool(planted["changed"]) and bool(planted["stable"])
    # the lead table comes before the ranked table, and holds the planted feature's verdict
    lead_at = diff.index('<table class="lead">')
    assert lead_at < diff.index("Ranked features, volcano")
    line = html.unescape(re.search(r'<tr class="verdict"><td[^>]*>(.*?)</td>', diff).group(1))
    assert line.startswith(
        f"up r0 → r2: fires in {pct(planted['seqfrac_r0'])} → {pct(planted['seqfrac_r2'])} "
        f"of sequences ({pct(planted['freq_r0'])} → {pct(planted['freq_r2'])} of tokens)"
    )
    assert f"change called in {int(planted['folds_changed'])}/2 replicas" in line
    assert "1 of them stable; the diff leads with it." in diff
    assert "Top examples of the lead features" in diff and "#1 · feature 0" in diff
    assert diff.count("lead.png") >= 1 and "Clopper-Pearson" in diff
    # SAE fit: the base SAE evaluates every round; no per-model fit table was written
    assert "not computed (this diff wrote no <code>fit.tsv</code>)" in diff
    assert "<td>r0, r1, r2</td><td>base fold 0</td>" in diff


def test_nothing_stable_is_said_and_called_features_are_marked(items, tmp_path):
    features = pd.read_parquet(next(i for i in items if i.name == "features.parquet").path)
    features["stable"] = pd.array([False] * len(features), dtype="boolean")
    page = build_report(
        _swap(items, "features.parquet", features, tmp_path), CONFIG, tmp_path / "i.html"
    )
    diff = html.unescape(_diff_section(page))
    n_called = int(features["changed"].sum())
    assert (
        f"{n_called} of {int(features['tested'].sum())} tested features called changed, 0 of them stable"
        in diff
    )
    assert "nothing is stable and changed" in diff and "marked UNSTABLE" in diff
    assert '<span class="mark">UNSTABLE</span>' in diff
    assert "UNSTABLE: up r0 → r2: fires in" in diff
    features["changed"] = False
    page = build_report(
        _swap(items, "features.parquet", features, tmp_path), CONFIG, tmp_path / "i.html"
    )
    diff = _diff_section(page)
    assert "No feature changed in this analysis." in diff and '<table class="lead">' not in diff


# ----------------------------------------------------------------------------- synthetic diffs


def _features(rows: list[dict]) -> pd.DataFrame:
    """A diff's features.parquet: rows give rank, feature, changed, stable, change and shares."""
    out = []
    for r in rows:
        seq, tok = r.pop("seq"), r.pop("tok")
        out.append(
            {
                "analysis": "base",
                "q_value": 1e-6,
                "log2_fold_change": 1.5,
                "tested": True,
                "n_folds": 3,
                "folds_changed": 3,
                "change_replication": 1.0,
                "direction_change": np.nan,
                **{f"seqfrac_{m}": v for m, v in zip(MODELS, seq, strict=True)},
                **{f"freq_{m}": v for m, v in zip(MODELS, tok, strict=True)},
                **r,
            }
        )
    frame = pd.DataFrame(out)
    frame["stable"] = frame["stable"].astype("boolean")
    return frame


def _diff_job(root: Path, embedder: str, features: pd.DataFrame, fit=None) -> list[ReportItem]:
    d = root / f"diff/{embedder}/layer_01/base"
    d.mkdir(parents=True)
    features.to_parquet(d / "features.parquet")
    wc = {"embedder": embedder, "layer": "01", "family": "base"}
    out = [ReportItem("diff", str(d / "features.parquet"), wildcards=wc)]
    if fit is not None:
        out.append(ReportItem("diff", _tsv(d / "fit.tsv", fit), wildcards=wc))
    return out


def _sae_metrics(root: Path, embedder: str, dead: float, **extra) -> ReportItem:
    path = root / f"saes/{embedder}/base/fold_0.metrics.json"
    path.parent.mkdir(parents=True)
    record = {"embedder": embedder, "layer": 1, "scheme": "base", "fold": 0, "models": ["r0"]}
    path.write_text(json.dumps({**record, "fvu": 0.3, "l0": 8.0, "dead_fraction": dead, **extra}))
    return ReportItem("sae", str(path), wildcards={"fold": "0"})


UNSTABLE_FIRST = [
    {
        "rank": 1,
        "feature": 4,
        "changed": True,
        "stable": False,
        "change": "up",
        "folds_changed": 1,
        "change_replication": 1 / 3,
        "seq": [0.0, 0.0, 0.1],
        "tok": [0, 0, 1e-3],
    },
    {
        "rank": 2,
        "feature": 9,
        "changed": True,
        "stable": True,
        "change": "up",
        "seq": [0.12, 0.2, 0.31],
        "tok": [0.001, 0.003, 0.0052],
    },
    {
        "rank": 3,
        "feature": 2,
        "changed": False,
        "stable": True,
        "change": "",
        "q_value": 0.4,
        "seq": [0.5, 0.5, 0.5],
        "tok": [0.05, 0.05, 0.05],
    },
]


def test_stable_features_lead_before_better_ranked_unstable_ones(tmp_path):
    items = _diff_job(tmp_path, "r0", _features([dict(r) for r in UNSTABLE_FIRST]))
    diff = html.unescape(_diff_section(build_report(items, CONFIG, tmp_path / "i.html")))
    lead = re.search(r'<table class="lead">(.*?)</table>', diff, re.S).group(1)
    assert "<td>9</td>" in lead and "<td>4</td>" not in lead
    assert "2 of 3 tested features called changed, 1 of them stable" in diff
    assert (
        "up r0 → r2: fires in 12% → 31% of sequences (0.10% → 0.52% of tokens), log2 FC +1.50, "
        "q 1e-6, change called in 3/3 replicas"
    ) in lead
    assert "<td>12% → 20% → 31%</td>" in lead


def test_verdict_says_the_numbers_and_only_them():
    row = {
        "change": "down",
        "lead": "UNSTABLE",
        "seqfrac_r0": 0.4,
        "seqfrac_r2": 0.05,
        "freq_r0": 0.02,
        "freq_r2": 0.0031,
        "log2_fold_change": -2.7,
        "q_value": 0.0123,
        "folds_changed": 1,
        "n_folds": 3,
    }
    assert verdict(row, MODELS) == (
        "UNSTABLE: down r0 → r2: fires in 40% → 5.0% of sequences (2.0% → 0.31% of tokens), "
        "log2 FC -2.70, q 0.012, change called in 1/3 replicas"
    )
    posterior = {**row, "lead": "stable", POSTERIOR: -1.2, f"{POSTERIOR}_sd": 0.25}
    assert "posterior log2 FC -1.20 [-1.69, -0.71]" in verdict(posterior, MODELS)
    single = {**row, "lead": "single replica", "folds_changed": pd.NA, "n_folds": 1}
    assert verdict(single, MODELS).startswith("single replica: down")
    assert verdict(single, MODELS).endswith("change called in one replica (not checked)")
    moved = {"change": "direction", "direction_change": 0.234, "freq_r0": 0.01, "freq_r2": 0.01}
    assert verdict(moved, MODELS).startswith(
        "decoder direction moved (1 - cos 0.23): fires in 1.0% → 1.0% of tokens"
    )


def test_base_and_self_lens_side_by_side(tmp_path):
    rows = [dict(r) for r in UNSTABLE_FIRST]
    items = [
        *_diff_job(tmp_path, "self", _features([dict(r) for r in rows[:1]])),
        *_diff_job(tmp_path, "r0", _features(rows)),
    ]
    diff = html.unescape(_diff_section(build_report(items, CONFIG, tmp_path / "i.html")))
    # one paired table: a row per analysis, a column per lens, base lens first
    paired = re.search(r'<table class="paired">(.*?)</table>', diff, re.S).group(1)
    assert re.search(r"<th>analysis</th><th>base lens</th><th>self lens</th>", paired)
    cells = re.findall(r'<td class="wrap">(.*?)</td>', paired)
    assert cells[0].startswith("1 stable / 2 called / 3 tested; #2 feature 9: up r0 → r2")
    assert cells[1].startswith("0 stable / 1 called / 1 tested; #1 feature 4: UNSTABLE: up")
    # then the two lenses' columns, side by side, with what each lens measures
    columns = re.findall(r'<div class="lens" id="diff-(\w+)-01-base">', diff)
    assert columns == ["r0", "self"] and diff.count('<div class="lenses">') == 1
    assert "base lens</b>: the base model embeds every round's samples" in diff
    assert "self lens</b>: each model embeds its own samples" in diff


def test_dead_latents_over_half_are_flagged(tmp_path):
    items = [
        *_diff_job(tmp_path, "r0", _features([dict(UNSTABLE_FIRST[1])])),
        _sae_metrics(tmp_path, "r0", 0.62),
    ]
    page = build_report(items, CONFIG, tmp_path / "i.html")
    sae = re.search(r'<section id="sae">(.*?)</section>', page, re.S).group(1)
    assert '<td class="flag">over 50% dead</td>' in sae and '<p class="flag">1 of the 1 SAEs' in sae
    assert "more than 50% of their latents dead" in sae
    diff = _diff_section(page)
    assert '<td class="flag">over 50% dead</td>' in diff
    assert "<details open><summary>Fit of the evaluating SAEs" in diff
    # each flag says what to try, once per section
    hint = '<p class="flag-hint">'
    assert sae.count(hint) == 1 and diff.count(hint) == 1 and "sae.training_tokens" in diff
    # the SAE stage's own flag, when it writes one, decides
    items[-1] = _sae_metrics(tmp_path / "b", "r0", 0.62, dead_fraction_flag=False)
    page = build_report(items, CONFIG, tmp_path / "i.html")
    assert "over 50% dead</td>" not in page
    assert '<p class="flag-hint">' not in page
    items[-1] = _sae_metrics(tmp_path / "c", "r0", 0.3)
    page = build_report(items, CONFIG, tmp_path / "i.html")
    assert "over 50% dead</td>" not in page and '<p class="flag-hint">' not in page


def test_fit_table_is_shown_and_missing_columns_say_not_computed(tmp_path):
    fit = pd.DataFrame({"model": MODELS, "fvu": [0.2, 0.25, 0.4], "dead_fraction": [0.1, 0.2, 0.7]})
    items = _diff_job(tmp_path, "r0", _features([dict(UNSTABLE_FIRST[1])]), fit=fit)
    diff = _diff_section(build_report(items, CONFIG, tmp_path / "i.html"))
    assert "this diff's <code>fit.tsv</code>" in diff
    table = re.search(r"fit\.tsv</code>\)\.</p>(.*?)</table>", diff, re.S).group(1)
    assert "<th>l0</th>" in table and table.count("<td>not computed</td>") == 3
    assert table.count('<td class="flag">over 50% dead</td>') == 1


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
    text = (
        '{% if snakemake.wildcards.family == "base" %}base SAE{% elif snakemake.config["k"] > 1 %}'
        "{% if snakemake.config['k'] > 2 %}many{% else %}two{% endif %} replicas{% else %}one"
        "{% endif %}."
    )
    for family, k, said in (
        ("base", 1, "base SAE."),
        ("pooled", 3, "many replicas."),
        ("pooled", 2, "two replicas."),
        ("pooled", 1, "one."),
    ):
        assert render_template(text, {"k": k}, {"family": family}) == said
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


def test_counts_sentence_says_the_length_effects_apart():
    features = pd.DataFrame(
        {
            "analysis": "base",
            "tested": True,
            "changed": [True, False, False, False],
            "stable": pd.array([True] * 4, dtype="boolean"),
            "length_effect": [False, True, True, False],
        }
    )
    (c,) = analysis_counts(features).to_dict("records")
    text = counts_sentence(c)
    assert "1 of 4 tested features called changed, 1 of them stable" in text
    assert text.endswith(
        "2 features changed with the sequences' lengths "
        "(length_effect in features.parquet; not counted as changed)."
    )
    (old,) = analysis_counts(features.drop(columns="length_effect")).to_dict("records")
    assert "lengths" not in counts_sentence(old)
