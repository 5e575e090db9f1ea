"""Model diffing scores of the validation suite (validation.model_diff) on synthetic stage outputs:
a crosscoder whose round-only latent fires exactly on a planted motif (known answer), and null
latent tables (no round-only latent survives latent scaling)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
import yaml

from plmdiff.activations.format import token_schema, vectors_to_arrow
from plmdiff.config import paths
from plmdiff.core.fasta import SequenceEntry, write_fasta
from plmdiff.model_diff.crosscoder import BatchTopKCrosscoder, save_crosscoder
from plmdiff.model_diff.paired import split_ids
from validation import model_diff
from validation.verdicts import model_diff_verdict

MOTIF = "WCY"
LAYER = 2
MODELS = ("r0", "r1")
D = 4


def latent_rows(model: str, rows: list[dict]) -> pd.DataFrame:
    """A latents table as the crosscoder rule writes it (the columns scoring reads)."""
    frame = pd.DataFrame(rows)
    frame.insert(0, "model", model)
    for column, default in (("nu_error", np.nan), ("artifact", False), ("mean_act", 1.0)):
        frame[column] = frame[column].fillna(default) if column in frame else default
    frame["artifact"] = frame["artifact"].astype(bool)
    return frame


def synthetic_sequences(n: int, seed: int) -> list[str]:
    """Random sequences over ACDEKG; the motif planted in every second one."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        seq = "".join(rng.choice(list("ACDEKG"), size=20))
        if i % 2 == 0:
            at = int(rng.integers(0, 20 - len(MOTIF)))
            seq = seq[:at] + MOTIF + seq[at + len(MOTIF) :]
        out.append(seq)
    return out


def activations(seq: str, model: str) -> np.ndarray:
    """dim 1 everywhere in both models; in r1 only, dim 0 on the motif and dim 2 on every K."""
    act = np.zeros((len(seq), D), dtype=np.float32)
    act[:, 1] = 1.0
    if model == "r1":
        at = seq.find(MOTIF)
        while at >= 0:
            act[at : at + len(MOTIF), 0] = 1.0
            at = seq.find(MOTIF, at + 1)
        act[[i for i, r in enumerate(seq) if r == "K"], 2] = 1.0
    return act


def write_part(path, seqs: dict[str, str], model: str) -> None:
    ids, pos, res, acts = [], [], [], []
    for sid, seq in seqs.items():
        ids += [sid] * len(seq)
        pos += list(range(len(seq)))
        res += list(seq)
        acts.append(activations(seq, model))
    table = pa.Table.from_arrays(
        [
            pa.array(ids, pa.string()),
            pa.array(pos, pa.int32()),
            pa.array([p + 1 for p in pos], pa.int32()),
            pa.array(res, pa.string()),
            vectors_to_arrow(np.concatenate(acts), "float32"),
        ],
        schema=token_schema(D, "float32"),
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, path, row_group_size=64)


def crosscoder() -> BatchTopKCrosscoder:
    """Latent 0 reads r1's dim 0 (the motif), latent 1 dim 1 of both (shared), latent 2 r1's
    dim 2 (every K: round-only, not the motif)."""
    model = BatchTopKCrosscoder(len(MODELS), D, 3, 1)
    with torch.no_grad():
        model.W_enc.zero_()
        model.b_enc.zero_()
        model.b_dec.zero_()
        model.W_enc[1, 0, 0] = 1.0
        model.W_enc[0, 1, 1] = model.W_enc[1, 1, 1] = 0.5
        model.W_enc[1, 2, 2] = 1.0
    return model


@pytest.fixture
def workdir(tmp_path):
    seqs = {f"fam{i}": s for i, s in enumerate(synthetic_sequences(40, seed=0))}
    write_fasta(
        tmp_path / paths.model_diff_sequences(), [SequenceEntry(k, v) for k, v in seqs.items()]
    )
    lid = paths.layer_id(LAYER)
    for model in MODELS:
        write_part(tmp_path / paths.paired_token_part(model, lid, "00000"), seqs, model)
    save_crosscoder(
        crosscoder(), tmp_path / paths.model_diff_layer_file(lid, "crosscoder.safetensors")
    )
    (tmp_path / "config.yaml").write_text(
        yaml.safe_dump({"model_diff": {"seed": 3, "eval_fraction": 0.5}})
    )
    return tmp_path, seqs


def write_latents(workdir, rows: list[dict]) -> None:
    lid = paths.layer_id(LAYER)
    latent_rows("r1", rows).to_parquet(
        workdir / paths.model_diff_layer_file(lid, "latents.parquet")
    )


MOTIF_LATENT = {
    "latent": 0,
    "class": "round_only",
    "norm_ratio": 0.02,
    "fires": 50,
    "nu_error": 0.1,
}
SHARED_LATENT = {"latent": 1, "class": "shared", "norm_ratio": 0.5, "fires": 400}
K_LATENT = {"latent": 2, "class": "round_only", "norm_ratio": 0.05, "fires": 90, "nu_error": 0.0}


def test_a_round_only_motif_latent_meets_the_target(workdir):
    root, seqs = workdir
    write_latents(root, [MOTIF_LATENT, SHARED_LATENT, K_LATENT])
    scores = model_diff.score_study(root, LAYER, MODELS, MOTIF)
    _, held = split_ids(list(seqs), 3, 0.5)
    assert scores["held_out_sequences"] == len(held)
    (r1,) = scores["rounds"]
    assert r1["n_occurrences"] == sum(seqs[s].count(MOTIF) for s in held) > 0
    # The K latent carries more mass and ranks first; the motif latent second, still top 5.
    assert [x["latent"] for x in r1["ranked"]] == [2, 0]
    motif = r1["ranked"][1]
    assert motif["coverage"] == pytest.approx(1.0)
    assert motif["precision"] == pytest.approx(1.0)
    assert motif["enrichment"] >= 5 and motif["meets"]
    assert not r1["ranked"][0]["meets"]
    assert [x["latent"] for x in r1["ranked_round_only"]] == [2, 0]
    assert r1["best"]["latent"] == 0
    assert r1["best"]["round_heavy_rank"] == r1["best"]["round_only_rank"] == 2
    assert r1["target_met_round_only"] and r1["target_met_round_heavy"] and r1["target_met"]
    assert r1["round_only_surviving"] == 2
    assert model_diff_verdict("motif", scores)["met"]


def test_the_motif_latent_does_not_count_when_shared_or_flagged(workdir):
    root, _ = workdir
    for motif_latent in (
        {**MOTIF_LATENT, "class": "shared", "norm_ratio": 0.5},
        {**MOTIF_LATENT, "artifact": True, "nu_error": 0.9},
    ):
        write_latents(root, [motif_latent, SHARED_LATENT, K_LATENT])
        scores = model_diff.score_study(root, LAYER, MODELS, MOTIF)
        (r1,) = scores["rounds"]
        assert [x["latent"] for x in r1["ranked"]] == [2]
        assert [x["latent"] for x in r1["ranked_round_only"]] == [2]
        assert r1["best"]["latent"] == 0 and r1["best"]["round_heavy_rank"] == 0
        assert r1["best"]["round_only_rank"] == 0
        assert not r1["target_met"]
        assert not model_diff_verdict("motif", scores)["met"]


def motif_match(n_latents: int) -> model_diff.scoring.FeatureMatch:
    """Latent 0 fires on the motif's 3 tokens of 40 (13x enriched), the others elsewhere."""
    n = 40
    occurrence = np.full(n, -1)
    occurrence[:3] = 0
    codes = np.zeros((n, n_latents))
    codes[:3, 0] = 1.0
    codes[5:, 1:] = 1.0
    return model_diff.scoring.match_features(
        codes, model_diff.scoring.TokenSet(np.zeros((n, 0)), occurrence, 1)
    )


def test_a_motif_latent_below_the_top_5_misses_the_target():
    rows = [MOTIF_LATENT] + [
        {"latent": j, "class": "round_only", "norm_ratio": 0.0, "fires": 100 + j, "nu_error": 0.0}
        for j in range(1, 6)
    ]
    score = model_diff.score_round(latent_rows("r1", rows), "r1", motif_match(6), 0.1)
    assert [x["latent"] for x in score.ranked][:5] == [5, 4, 3, 2, 1]
    assert [x["latent"] for x in score.ranked_round_only][:5] == [5, 4, 3, 2, 1]
    assert score.ranked[5]["meets"] and not score.target_met


def test_either_list_meets_the_target():
    # Five round-leaning mixed latents outweigh the motif latent among the round-heavy ones; the
    # stage's round-only list holds only the motif latent.
    rows = [MOTIF_LATENT] + [
        {"latent": j, "class": "mixed", "norm_ratio": 0.3, "fires": 100 + j} for j in range(1, 6)
    ]
    score = model_diff.score_round(latent_rows("r1", rows), "r1", motif_match(6), 0.1)
    assert [x["latent"] for x in score.ranked_round_only] == [0]
    assert not score.target_met_round_heavy
    assert score.target_met_round_only and score.target_met


def test_null_counts_only_round_only_latents_that_survive_latent_scaling():
    flagged = {"latent": 0, "class": "round_only", "norm_ratio": 0.0, "fires": 80}
    rows = [
        {**flagged, "nu_error": 0.8, "artifact": True},  # scaled and flagged
        {**flagged, "latent": 1, "fires": 5},  # too few firings to be scored
        {**flagged, "latent": 2, "class": "base_only", "norm_ratio": 1.0, "nu_error": 0.0},
        {**flagged, "latent": 3, "class": "mixed", "norm_ratio": 0.3},
    ]
    scores = {
        "rounds": [
            model_diff.asdict(model_diff.score_round(latent_rows(m, rows), m, None, 0.1))
            for m in ("r1", "r2")
        ]
    }
    assert [r["round_only_surviving"] for r in scores["rounds"]] == [0, 0]
    assert [r["round_only_scored"] for r in scores["rounds"]] == [1, 1]
    assert model_diff_verdict("null", scores) == {"met": True, "round_only_surviving": 0}
    genuine = [*rows, {**flagged, "latent": 4, "nu_error": 0.1}]
    scores["rounds"][1] = model_diff.asdict(
        model_diff.score_round(latent_rows("r2", genuine), "r2", None, 0.1)
    )
    assert model_diff_verdict("null", scores) == {"met": False, "round_only_surviving": 1}


def test_the_shared_family_lies_past_the_rounds_training_window():
    family = ["A" * 30 + "K" * 30 + "G" * 5, "A" * 40, "A" * 30 + "E" * 31]
    out = model_diff.shared_family(family, crop=30, motif=MOTIF, share=1.0, seed=0)
    assert len(out) == 2  # the 40-residue sequence has no second window
    assert all(len(s) == 30 and MOTIF in s and "A" not in s for s in out)
    none = model_diff.shared_family(family, crop=30, motif=MOTIF, share=0.0, seed=0)
    assert none == ["K" * 30, "E" * 30]
