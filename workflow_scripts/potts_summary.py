"""Rule potts_summary: coverage, fits, changes per round and energies of every set."""

from plmdiff.core.runtime import setup_logging
from plmdiff.potts.job import run_potts_summary

setup_logging(snakemake.log[0])
params, inp, out = snakemake.params, snakemake.input, snakemake.output
run_potts_summary(
    list(params.sets),
    alignments=dict(zip(params.sets, inp.alignments, strict=True)),
    coverages=list(inp.coverages),
    fit_infos=list(inp.fit_infos),
    scorer_fits=dict(zip(params.scorers, inp.scorer_fits, strict=True)),
    compare_files={m: (s, p) for m, s, p in zip(params.rounds, inp.sites, inp.pairs, strict=True)},
    reference=params.reference,
    outputs={
        "coverage": out.coverage,
        "fits": out.fits,
        "changes": out.changes,
        "energy": out.energy,
        "energies": out.energies,
        "energy_figures": [out.png, out.svg],
    },
)
