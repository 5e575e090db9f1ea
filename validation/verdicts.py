"""The issue's targets, decided from a suite's scores (`validation.scoring`).

- motif: in at least one analysis a feature with coverage >= 0.5 and enrichment >= 5 ranks in the
  top 5, called changed and stable (`first_changed_rank_in_target`, scoring.MOTIF_TARGET);
- composition: the same with a residue-class feature in the top 10 (scoring.CLASS_TARGET);
- length: reported as a length effect, not as features (`length_effect`);
- null: no stable changed feature in any analysis; over the suite, the realised false discovery
  proportion of the null studies (`null_fdp`);
- Potts (a motif study with the stage on): the motif's columns are the top-|motif| columns by
  field shift (`potts_verdict`, validation.potts_scoring).

Studies that run model diffing get a separate `model_diff` verdict (`model_diff_verdict`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from plmdiff.diff.evidence import clopper_pearson

# A probe's margin over the best baseline counts as significant below this family-wise p.
ALPHA = 0.05
NULL_FDP_TARGET = 0.05
MIN_NULL_SEEDS = 10


def analysis_label(analysis: Mapping[str, Any]) -> str:
    """An analysis's name, with its SAE's layer where the score records one."""
    layer = analysis.get("layer", -1)
    return (
        f"layer {layer}/{analysis['analysis']}"
        if layer is not None and layer >= 0
        else str(analysis["analysis"])
    )


def stable_calls(study: Mapping[str, Any]) -> int:
    """Stable changed features over every analysis of a study."""
    return sum(int(a["n_stable_changed"]) for a in study["analyses"])


def length_effect(
    probes: Sequence[Mapping[str, Any]], n_stable: int, n_length_effects: int = 0
) -> dict[str, Any]:
    """A length shift is reported as a length effect when (1) the probes' length baseline tells
    the rounds apart (its balanced accuracy's bootstrap 95% CI lies above chance, in some
    pooling), (2) no layer's probe beats the best baseline (every layer's margin has a
    family-wise p >= ALPHA, in every pooling: the representation says nothing the baselines do
    not) and (3) the diff calls no stable changed feature (`n_stable`: changed, stable and not a
    length effect; the length effects, `n_length_effects`, are reported beside it)."""
    separates = any(p["length_ci_low"] > p["chance"] for p in probes)
    explained = bool(probes) and all(p["min_baseline_margin_p_fwer"] >= ALPHA for p in probes)
    return {
        "length_separates": separates,
        "layers_explained_by_baselines": explained,
        "stable_changed_features": n_stable,
        "length_effects": n_length_effects,
        "met": separates and explained and n_stable == 0,
    }


def model_diff_verdict(kind: str, scores: Mapping[str, Any]) -> dict[str, Any]:
    """Model diffing (validation.model_diff). Motif: in the last round, a latent among the top 5
    of the stage's round-only list or of the round-heavy list covers >= half of the motif's
    occurrences, >= 5x enriched. Null: no round-only latent of any round survives latent
    scaling."""
    rounds = scores["rounds"]
    surviving = sum(int(r["round_only_surviving"]) for r in rounds)
    if kind == "motif":
        last = rounds[-1]
        return {
            "met": bool(last["target_met"]),
            "met_round_only": bool(last["target_met_round_only"]),
            "met_round_heavy": bool(last["target_met_round_heavy"]),
            "round": last["model"],
            "round_only_surviving": surviving,
        }
    return {"met": surviving == 0, "round_only_surviving": surviving}


def study_verdict(study: Mapping[str, Any]) -> dict[str, Any]:
    """Whether one study meets its kind's target, and the evidence for it (with the model
    diffing verdict under `model_diff` where the study ran it)."""
    verdict = kind_verdict(study)
    if study.get("model_diff"):
        verdict["model_diff"] = model_diff_verdict(study["kind"], study["model_diff"])
    return verdict


def kind_verdict(study: Mapping[str, Any]) -> dict[str, Any]:
    """Whether one study meets its kind's target, and the evidence for it."""
    kind = study["kind"]
    n_stable = stable_calls(study)
    if kind in ("motif", "composition"):
        hits = [
            f"{a['embedder']}/{analysis_label(a)}"
            for a in study["analyses"]
            if a["first_changed_rank_in_target"]
        ]
        return {"met": bool(hits), "analyses": hits, "stable_changed_features": n_stable}
    if kind == "length":
        n_length = sum(int(a.get("n_length_effects", 0)) for a in study["analyses"])
        return length_effect(study["probes"], n_stable, n_length)
    return {"met": n_stable == 0, "stable_changed_features": n_stable}


def potts_verdict(potts: Mapping[str, Any]) -> dict[str, Any]:
    """The motif's columns, located in the last round's alignment, are exactly the columns with
    the largest field shifts (as many as the motif has residues)."""
    k = len(potts["motif_columns"])
    met = k > 0 and potts["motif_in_top"] == k
    return {"met": met, "motif_in_top": potts.get("motif_in_top", 0), "motif_columns": k}


def null_fdp(studies: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """The realised false discovery proportion over the null studies.

    In a null study every call is false, so its false discovery proportion V / max(R, 1) is 1
    when it calls any stable changed feature and 0 otherwise; its mean over the null seeds (the
    share of seeds that call anything) estimates the FDR, which under the complete null equals
    the family-wise error rate. Reported with its Clopper-Pearson 95% interval; the target is
    met with >= MIN_NULL_SEEDS seeds and a realised proportion <= NULL_FDP_TARGET.
    """
    calls = [stable_calls(s) for s in studies.values() if s["kind"] == "null"]
    n, k = len(calls), sum(c > 0 for c in calls)
    low, high = clopper_pearson(k, n) if n else (math.nan, math.nan)
    fdp = k / n if n else math.nan
    return {
        "seeds": n,
        "seeds_with_stable_call": k,
        "stable_calls": sum(calls),
        "fdp": fdp,
        "ci_low": low,
        "ci_high": high,
        "met": n >= MIN_NULL_SEEDS and fdp <= NULL_FDP_TARGET,
    }
