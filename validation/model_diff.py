"""Model diffing (the model_diff stage) in the validation suite: the shared set, the stage's
settings, and its scores, read from the workflow's outputs only.

The shared set. Every checkpoint embeds the same sequences: the base model's kept samples plus a
family FASTA written here (`model_diff.sequences`), in which the study's motif is planted at its
last round's rate. The rounds are trained on the first `crop` residues of every family sequence,
so the FASTA takes the next `crop` residues ([crop, 2 crop)) of the sequences that long: residues
no checkpoint was trained on, with the motif at positions no round saw it (its own seed). The null
study gets the same kind of FASTA (same motif and rate): its rounds never saw the motif, so a
round-only latent for it would be a false call.

The scores (every round vs the base; the verdict reads the last): two ranked lists, both by
held-out activation mass (fires x mean activation), each latent with its coverage, precision and
enrichment on the motif's occurrences in the held-out shared tokens (validation.scoring's
match_features, the crosscoder encoding the paired tokens as the stage's evaluation does):
- round-only: the stage's own list (plmdiff.model_diff.scaling.top_round_only, round_only.tsv):
  round-only latents that latent scaling scored and did not flag;
- round-heavy: every latent with a decoder norm ratio below 0.5 - shared_width that latent
  scaling did not flag (round-only and round-leaning mixed ones).
Targets: on a motif study a latent meeting coverage >= 0.5 and enrichment >= 5 (MOTIF_TARGET)
among the top 5 of either list (the issue: "a round-only (or round-heavy) latent among the top
5"); on a null study, no round-only latent that survives latent scaling (zero).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml

from plmdiff.config import paths
from plmdiff.config.sections import section_defaults
from plmdiff.core.fasta import SequenceEntry, read_fasta, write_fasta
from plmdiff.model_diff.crosscoder import load_crosscoder
from plmdiff.model_diff.paired import split_ids
from plmdiff.model_diff.scaling import top_round_only
from validation import scoring
from validation.studies import Study, plant_motif

FASTA_NAME = "model_diff_family.fasta"

# The stage at suite size (the models are 2 x 48): a 192-latent crosscoder (4 x d_model, near
# the SAEs' 256) with k 8 as the SAEs, trained for ~10 passes over the ~25k training tokens;
# diffing-toolkit's lr (2e-4) is for millions of tokens, far too slow for a few hundred steps.
SETTINGS: dict[str, Any] = {
    "max_sequences": 300,
    "shards": 1,
    "eval_fraction": 0.25,
    "expansion": 4,
    "k": 8,
    "diff_expansion": 2,
    "diff_k": 8,
    "lr": 1e-3,
    "batch_size": 256,
    "training_tokens": 250_000,
    "shuffle_buffer": 16384,
    "dead_tokens": 25_000,
    "top_latents": 10,
}


def shared_family(
    family: Sequence[str], crop: int, motif: str, share: float, seed: int
) -> list[str]:
    """Residues [crop, 2 crop) of the family sequences at least 2 crop long, with `motif`
    planted in `share` of them (validation.studies.plant_motif)."""
    windows = [s[crop : 2 * crop] for s in family if len(s) >= 2 * crop]
    return plant_motif(windows, motif, share, seed)


def write_shared_family(study: Study, family: Sequence[str], n: int, workdir: Path) -> Path | None:
    """The study's shared family FASTA in its work directory (None: model_diff is off)."""
    if study.model_diff is None:
        return None
    motif, share = study.model_diff
    # Another seed than the rounds' (seed * 100 + round), so the motif sits elsewhere.
    seqs = shared_family(family, study.crop, motif, share, study.seed * 100 + 50)[:n]
    out = workdir / FASTA_NAME
    entries = [SequenceEntry(f"fam{i}", s, {}) for i, s in enumerate(seqs)]
    # Rewritten only when it changes: a newer FASTA would rerun the whole stage.
    if not out.is_file() or [e.sequence for e in read_fasta(out)] != seqs:
        write_fasta(out, entries)
    return out


def config_section(study: Study, fasta: Path) -> dict[str, Any]:
    """The study's `model_diff` section: the suite-sized settings, the shared FASTA, its seed."""
    return {"enabled": True, "sequences": str(fasta), **SETTINGS, "seed": study.seed}


def targets(study: Study, layer: int) -> list[str]:
    """What the scores read: the crosscoder's weights and latents table (and its ranked list)."""
    if study.model_diff is None:
        return []
    lid = paths.layer_id(layer)
    return [
        paths.model_diff_layer_file(lid, name)
        for name in ("crosscoder.safetensors", "latents.parquet", "round_only.tsv")
    ]


# ----------------------------------------------------------------------------- scores

ROUND_ONLY = "round_only"  # plmdiff.model_diff.scaling's class name, as the latents table has it
LISTED = 10  # ranked latents kept in the scores per round


def round_heavy(latents: pd.DataFrame, model: str, shared_width: float) -> pd.DataFrame:
    """`model`'s round-heavy latents (norm ratio below 0.5 - shared_width, not flagged by latent
    scaling), ranked by held-out activation mass (fires x mean activation), rank from 1."""
    rows = latents[latents["model"] == model]
    keep = rows[(rows["norm_ratio"] < 0.5 - shared_width) & ~rows["artifact"].astype(bool)].copy()
    keep["mass"] = keep["fires"] * keep["mean_act"]
    keep = keep.sort_values("mass", ascending=False, kind="stable").reset_index(drop=True)
    keep["rank"] = np.arange(1, len(keep) + 1)
    return keep


def stage_round_only(latents: pd.DataFrame, model: str) -> pd.DataFrame:
    """The stage's ranked round-only list of `model` (top_round_only, every latent), rank from 1."""
    ranked = top_round_only(latents[latents["model"] == model], len(latents))
    ranked["rank"] = np.arange(1, len(ranked) + 1)
    return ranked


def surviving_round_only(latents: pd.DataFrame, model: str) -> int:
    """Round-only latents that latent scaling scored and did not flag (the null's count)."""
    rows = latents[latents["model"] == model]
    return int(
        (
            (rows["class"] == ROUND_ONLY)
            & rows["nu_error"].notna()
            & ~rows["artifact"].astype(bool)
        ).sum()
    )


@dataclass(frozen=True)
class RoundScore:
    """One round against the base: its round-only latents, and both ranked lists."""

    model: str
    round_only: int
    round_only_scored: int
    round_only_surviving: int
    round_heavy: int
    n_occurrences: int
    # The first LISTED of each ranked list: latent, class, ratio, mass, match scores, meets.
    ranked_round_only: list[dict[str, Any]]
    ranked: list[dict[str, Any]]  # round-heavy
    # The best-matching latent of the whole dictionary (coverage x precision), any class.
    best: dict[str, Any]
    # A latent meeting the target's coverage and enrichment in the top of the round-only list,
    # of the round-heavy list, of either.
    target_met_round_only: bool
    target_met_round_heavy: bool
    target_met: bool


def score_round(
    latents: pd.DataFrame,
    model: str,
    match: scoring.FeatureMatch | None,
    shared_width: float,
    target: scoring.Target = scoring.MOTIF_TARGET,
) -> RoundScore:
    """`model`'s latents against the base, each matched to the planted occurrences (`match`,
    indexed by latent; None when nothing is planted)."""
    rows = latents[latents["model"] == model]
    ranked = round_heavy(latents, model, shared_width)
    stage = stage_round_only(latents, model)
    round_only = rows["class"] == ROUND_ONLY

    def matched(latent: int) -> dict[str, float]:
        if match is None:
            return {}
        return {
            "coverage": float(match.coverage[latent]),
            "precision": float(match.precision[latent]),
            "enrichment": float(match.enrichment[latent]),
        }

    def meets(latent: int) -> bool:
        return bool(
            match is not None
            and match.coverage[latent] >= target.min_coverage
            and match.enrichment[latent] >= target.min_enrichment
            and match.precision[latent] >= target.min_precision
        )

    def listed(table: pd.DataFrame) -> list[dict[str, Any]]:
        return [
            {
                "rank": int(r["rank"]),
                "latent": int(r["latent"]),
                "class": str(r["class"]),
                "norm_ratio": float(r["norm_ratio"]),
                "mass": float(r["mass"]),
                "fires": int(r["fires"]),
                **matched(int(r["latent"])),
                "meets": meets(int(r["latent"])),
            }
            for _, r in table.head(LISTED).iterrows()
        ]

    def in_top(table: pd.DataFrame) -> bool:
        return any(meets(int(j)) for j in table.head(target.top)["latent"])

    best: dict[str, Any] = {}
    if match is not None and len(rows):
        j = int(np.argmax(match.coverage * match.precision))
        row = rows[rows["latent"] == j].iloc[0]
        in_ranked = ranked.index[ranked["latent"] == j]
        best = {
            "latent": j,
            "class": str(row["class"]),
            "norm_ratio": float(row["norm_ratio"]),
            "artifact": bool(row["artifact"]),
            "round_heavy_rank": int(ranked["rank"].iloc[in_ranked[0]]) if len(in_ranked) else 0,
            "round_only_rank": int(stage.loc[stage["latent"] == j, "rank"].sum()),
            **matched(j),
        }
    return RoundScore(
        model=model,
        round_only=int(round_only.sum()),
        round_only_scored=int((round_only & rows["nu_error"].notna()).sum()),
        round_only_surviving=surviving_round_only(latents, model),
        round_heavy=len(ranked),
        n_occurrences=match.n_occurrences if match is not None else 0,
        ranked_round_only=listed(stage),
        ranked=listed(ranked),
        best=best,
        target_met_round_only=in_top(stage),
        target_met_round_heavy=in_top(ranked),
        target_met=in_top(stage) or in_top(ranked),
    )


def held_out_codes(
    workdir: Path, layer: int, models: Sequence[str], held: Sequence[str], planted: str
) -> tuple[np.ndarray, scoring.TokenSet]:
    """The crosscoder's codes of the held-out paired tokens [tokens, latents], and their
    planted-occurrence labels (validation.scoring.read_tokens on every model's paired parts,
    which align row by row)."""
    import torch

    lid = paths.layer_id(layer)
    sets = [
        scoring.read_tokens(workdir / paths.paired_layer_dir(m, lid), held, planted, "motif")
        for m in models
    ]
    for m, s in zip(models[1:], sets[1:], strict=True):
        if len(s.occurrence) != len(sets[0].occurrence):
            raise RuntimeError(f"{workdir}: model_diff parts of {m} do not align with the base's")
    crosscoder = load_crosscoder(
        workdir / paths.model_diff_layer_file(lid, "crosscoder.safetensors")
    )
    x = torch.from_numpy(np.stack([s.act for s in sets], axis=1)).float()
    with torch.inference_mode():
        codes = crosscoder.encode(crosscoder.normalise(x)).numpy()
    return codes, sets[0]


def settings_of(workdir: Path) -> dict[str, Any]:
    """The study's model_diff section, completed with the schema's defaults."""
    config = yaml.safe_load((workdir / "config.yaml").read_text())
    return {**section_defaults("model_diff"), **config["model_diff"]}


def score_study(workdir: Path, layer: int, models: Sequence[str], planted: str) -> dict[str, Any]:
    """Every round's RoundScore; `planted`: the motif of the shared family FASTA."""
    section = settings_of(workdir)
    lid = paths.layer_id(layer)
    latents = pd.read_parquet(workdir / paths.model_diff_layer_file(lid, "latents.parquet"))
    ids = [e.seq_id for e in read_fasta(workdir / paths.model_diff_sequences())]
    _, held = split_ids(ids, int(section["seed"]), float(section["eval_fraction"]))
    match = None
    if planted:
        codes, tokens = held_out_codes(workdir, layer, models, held, planted)
        match = scoring.match_features(codes, tokens)
    rounds = [score_round(latents, m, match, float(section["shared_width"])) for m in models[1:]]
    return {
        "layer": layer,
        "held_out_sequences": len(held),
        "rounds": [asdict(r) for r in rounds],
    }


def markdown(studies: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """summary.md's model diffing table: per study and round, the round-only counts and the top
    5 of both ranked lists with their match to the motif; then each study's verdict."""

    def top(listed: list[dict[str, Any]]) -> str:
        return (
            "; ".join(
                f"{x['latent']} ({x['class']}) {x.get('coverage', float('nan')):.2f} / "
                f"{x.get('enrichment', float('nan')):.1f}"
                for x in listed[:5]
            )
            or "-"
        )

    lines = [
        "| study | round | round-only (scored / surviving) | round-heavy | occurrences | "
        "top 5 round-only: latent (class) coverage / enrichment | top 5 round-heavy | "
        "best match: latent (class, round-only rank, round-heavy rank) coverage / precision / "
        "enrichment | target met (round-only / round-heavy) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, s in studies.items():
        md = s.get("model_diff")
        if not md:
            continue
        for r in md["rounds"]:
            b = r["best"]
            best = (
                f"{b['latent']} ({b['class']}, {b['round_only_rank'] or '-'}, "
                f"{b['round_heavy_rank'] or '-'}) "
                f"{b['coverage']:.2f} / {b['precision']:.2f} / {b['enrichment']:.1f}"
                if b
                else "-"
            )
            lines.append(
                f"| {name} | {r['model']} | {r['round_only']} ({r['round_only_scored']} / "
                f"{r['round_only_surviving']}) | {r['round_heavy']} | {r['n_occurrences']} | "
                f"{top(r['ranked_round_only'])} | {top(r['ranked'])} | {best} | "
                f"{_yes(r['target_met_round_only'])} / {_yes(r['target_met_round_heavy'])} |"
            )
    verdicts = [
        f"- {name} ({s['kind']}): target met: {_yes(s['verdict']['model_diff']['met'])}"
        f" ({s['verdict']['model_diff']['round_only_surviving']} surviving round-only latents)"
        for name, s in studies.items()
        if s.get("model_diff")
    ]
    return [*lines, "", *verdicts] if verdicts else []


def _yes(flag: bool) -> str:
    return "yes" if flag else "no"
