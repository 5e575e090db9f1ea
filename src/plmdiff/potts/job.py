"""The rules of the Potts stage (rules/potts.smk): potts_profile, potts_align, potts_fit,
potts_compare and potts_summary."""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
from pyhmmer import plan7
from safetensors.numpy import load_file, save_file

from plmdiff.config.paths import FAMILY_SET
from plmdiff.core.errors import DataError
from plmdiff.core.fasta import read_fasta
from plmdiff.core.runtime import atomic_path, derive_seed, read_json, resolve_device, write_json
from plmdiff.core.tables import write_parquet, write_table
from plmdiff.potts import align, compare, model
from plmdiff.potts.figures import plot_coupling_change, plot_energies
from plmdiff.potts.settings import PottsConfig

log = logging.getLogger(__name__)


def _sequences(set_name: str, source: str | os.PathLike) -> tuple[list[str], list[str]]:
    """(ids, sequences) of a model's kept FASTA, or of potts.family for the family set."""
    if set_name == FAMILY_SET:
        family = align.read_family(source)
        return family.ids, family.sequences
    entries = list(read_fasta(source))
    return [e.seq_id for e in entries], [e.sequence for e in entries]


def run_potts_profile(
    source: str | os.PathLike,
    *,
    from_family: bool,
    potts_section: Mapping[str, Any],
    hmm_path: str | os.PathLike,
    info_path: str | os.PathLike,
) -> None:
    """The potts_profile rule: the family HMM every set is aligned to."""
    cfg = PottsConfig.from_section(potts_section)
    family = align.read_family(source) if from_family else None
    if family is not None and family.aligned is not None:
        hmm = align.profile_from_alignment(family.ids, family.aligned, seed=_profile_seed(cfg))
        how = "potts.family alignment"
    else:
        ids, seqs = (family.ids, family.sequences) if family else _sequences("base", source)
        hmm = unaligned_profile(ids, seqs, cfg)
        how = "potts.family sequences" if family else "base model samples"
    align.write_profile(hmm, hmm_path)
    write_json(info_path, {"source": str(source), "built_from": how, "match_columns": hmm.M})
    log.info("profile: %d match columns from %s (%s)", hmm.M, how, source)


def _profile_seed(cfg: PottsConfig) -> int:
    return derive_seed(cfg.seed, "potts_profile")


def unaligned_profile(ids: Sequence[str], sequences: Sequence[str], cfg: PottsConfig) -> plan7.HMM:
    """The profile potts_profile builds from unaligned sequences (the base model's samples or
    an unaligned potts.family): also what a planted site's columns are defined on
    (validation.studies)."""
    return align.profile_from_sequences(
        ids,
        sequences,
        iterations=cfg.profile_iterations,
        max_sequences=cfg.profile_sequences,
        seed=_profile_seed(cfg),
    )


def run_potts_align(
    set_name: str,
    profile_path: str | os.PathLike,
    source: str | os.PathLike,
    *,
    potts_section: Mapping[str, Any],
    table_path: str | os.PathLike,
    coverage_path: str | os.PathLike,
) -> pd.DataFrame:
    """The potts_align rule: the set's match-column rows and coverage; DataError when fewer than
    potts.min_sequences rows reach potts.min_coverage."""
    cfg = PottsConfig.from_section(potts_section)
    hmm = align.read_profile(profile_path)
    ids, seqs = _sequences(set_name, source)
    rows = align.column_window(align.align_to_profile(hmm, ids, seqs), cfg.columns, hmm.M)
    width = len(rows[0]) if rows else hmm.M
    table = align.aligned_table(set_name, ids, rows, cfg.min_coverage)
    summary = align.coverage_summary(table, set_name, cfg.min_coverage)
    kept = int(summary["kept"])  # type: ignore[call-overload]
    if kept < cfg.min_sequences:
        raise DataError(
            f"potts: set '{set_name}' ({source}): {kept} of {len(ids)} sequences cover >= "
            f"{cfg.min_coverage:.0%} of the {width} profile columns, fewer than "
            f"potts.min_sequences = {cfg.min_sequences}. Sample more sequences, lower "
            "potts.min_coverage, give a family profile (potts.family), or set potts.enabled: false."
        )
    write_parquet(table, table_path)
    write_json(coverage_path, summary)
    log.info(
        "%s: %d of %d sequences kept (coverage >= %.2f)", set_name, kept, len(ids), cfg.min_coverage
    )
    return table


def kept_states(table_path: str | os.PathLike) -> tuple[pd.DataFrame, np.ndarray]:
    table = pd.read_parquet(table_path)
    table = table[table["kept"]].reset_index(drop=True)
    return table, model.encode(table["aligned"].tolist())


def neff_warning(neff: float, length: int, bound: float) -> str:
    """A warning text when N_eff / L is below `bound` (potts.min_neff_per_column), else ''."""
    if length and neff / length < bound:
        return (
            f"N_eff / L = {neff / length:.2f} is below potts.min_neff_per_column = {bound}: "
            "couplings are dominated by the regularisation; read changes with caution"
        )
    return ""


def save_fit(result: model.FitResult, path: str | os.PathLike) -> None:
    arrays = {
        "h": result.model.h,
        "J": result.model.J,
        "scores": result.scores.astype(np.float32),
        "boot_h": result.boot_h.astype(np.float32),
        "boot_scores": result.boot_scores.astype(np.float32),
    }
    with atomic_path(path) as tmp:
        save_file(arrays, str(tmp))


def load_fit(path: str | os.PathLike) -> model.FitResult:
    a = load_file(str(path))
    return model.FitResult(
        model=model.PottsModel(h=a["h"], J=a["J"]),
        scores=a["scores"].astype(np.float64),
        boot_h=a["boot_h"],
        boot_scores=a["boot_scores"].astype(np.float64),
    )


def run_potts_fit(
    set_name: str,
    table_path: str | os.PathLike,
    *,
    potts_section: Mapping[str, Any],
    device: Any,
    fit_path: str | os.PathLike,
    info_path: str | os.PathLike,
) -> dict[str, Any]:
    """The potts_fit rule: the set's Potts model and its bootstrap refits."""
    cfg = PottsConfig.from_section(potts_section)
    dev = resolve_device(device)
    _, states = kept_states(table_path)
    seed = derive_seed(cfg.seed, "potts_fit", set_name)
    if len(states) > cfg.max_sequences:
        pick = np.sort(
            np.random.default_rng(seed).choice(len(states), cfg.max_sequences, replace=False)
        )
        states = states[pick]
    weights = model.sequence_weights(states, cfg.identity, dev)
    result, info = model.fit_with_bootstrap(
        states,
        weights,
        lambda_h=cfg.lambda_h,
        lambda_j=cfg.lambda_j,
        max_iterations=cfg.max_iterations,
        bootstrap=cfg.bootstrap,
        seed=seed,
        device=dev,
    )
    neff = float(weights.sum())
    length = states.shape[1]
    warning = neff_warning(neff, length, cfg.min_neff_per_column)
    if warning:
        log.warning("%s: %s", set_name, warning)
    save_fit(result, fit_path)
    record = {
        "set": set_name,
        "sequences": len(states),
        "columns": int(length),
        "neff": neff,
        "neff_per_column": neff / length if length else float("nan"),
        "warning": warning,
        "bootstrap": cfg.bootstrap,
        "iterations": info.iterations,
        "objective": info.objective,
        "seconds": info.seconds,
        "device": str(dev),
    }
    write_json(info_path, record)
    log.info(
        "%s: N=%d, N_eff=%.1f, L=%d, %.1f s", set_name, len(states), neff, length, info.seconds
    )
    return record


def run_potts_compare(
    model_name: str,
    base_fit: str | os.PathLike,
    round_fit: str | os.PathLike,
    *,
    potts_section: Mapping[str, Any],
    sites_path: str | os.PathLike,
    pairs_path: str | os.PathLike,
    figure_paths: Sequence[str | os.PathLike],
) -> pd.DataFrame:
    """The potts_compare rule: field shifts per site and coupling changes per pair."""
    cfg = PottsConfig.from_section(potts_section)
    base, other = load_fit(base_fit), load_fit(round_fit)
    sites = compare.field_shifts(base, other)
    pairs = compare.coupling_changes(base, other, cfg.fdr)
    write_table(sites, sites_path, float_format="%.4g")
    write_table(pairs, pairs_path, float_format="%.4g")
    length = base.model.length
    significant = np.zeros((length, length), dtype=bool)
    sig = pairs[pairs["significant"]]
    significant[sig["site_i"] - 1, sig["site_j"] - 1] = True
    plot_coupling_change(
        compare.change_matrix(pairs, length),
        base.scores,
        significant,
        title=f"{model_name} vs base: coupling changes",
        paths=figure_paths,
    )
    return pairs


def _round_summary(model_name: str, sites: pd.DataFrame, pairs: pd.DataFrame) -> dict[str, Any]:
    top_sites = sites.sort_values("field_shift", ascending=False).head(5)["site"].tolist()
    sig = pairs[pairs["significant"]]
    return {
        "model": model_name,
        "pairs_tested": len(pairs),
        "pairs_significant": len(sig),
        "pairs_up": int((sig["change"] > 0).sum()),
        "pairs_down": int((sig["change"] < 0).sum()),
        "max_abs_change": float(pairs["change"].abs().max()) if len(pairs) else float("nan"),
        "mean_field_shift": float(sites["field_shift"].mean()),
        "top_field_sites": ",".join(str(s) for s in top_sites),
    }


def run_potts_summary(
    sets: Sequence[str],
    *,
    alignments: Mapping[str, str | os.PathLike],
    coverages: Sequence[str | os.PathLike],
    fit_infos: Sequence[str | os.PathLike],
    scorer_fits: Mapping[str, str | os.PathLike],
    compare_files: Mapping[str, tuple[str | os.PathLike, str | os.PathLike]],
    reference: str,
    outputs: Mapping[str, Any],
) -> pd.DataFrame:
    """The potts_summary rule: coverage, fits and changes per round; every set's energies
    under the base (and family) model with the fraction inside the reference set's band."""
    write_table(
        pd.DataFrame([read_json(p) for p in coverages]), outputs["coverage"], float_format="%.4g"
    )
    write_table(
        pd.DataFrame([read_json(p) for p in fit_infos]), outputs["fits"], float_format="%.4g"
    )
    rows = [
        _round_summary(m, pd.read_csv(s, sep="\t"), pd.read_csv(p, sep="\t"))
        for m, (s, p) in compare_files.items()
    ]
    write_table(pd.DataFrame(rows), outputs["changes"], float_format="%.4g")
    if reference not in sets:
        raise DataError(f"energy reference set '{reference}' is not among {list(sets)}")
    states = {s: kept_states(alignments[s]) for s in sets}
    frames, summaries = [], []
    for scorer, path in scorer_fits.items():
        fit = load_fit(path)
        values = {s: model.energies(fit.model, x) for s, (_, x) in states.items()}
        summaries.append(compare.energy_summary(values, reference, scorer))
        for s, (table, _) in states.items():
            frames.append(
                pd.DataFrame(
                    {"seq_id": table["seq_id"], "set": s, "model": scorer, "energy": values[s]}
                )
            )
    energies = pd.concat(frames, ignore_index=True)
    summary = pd.concat(summaries, ignore_index=True)
    write_parquet(energies, outputs["energies"])
    write_table(summary, outputs["energy"], float_format="%.4g")
    plot_energies(energies, summary, list(sets), outputs["energy_figures"])
    return summary
