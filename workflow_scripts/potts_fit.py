"""Rule potts_fit: one set's pseudo-likelihood Potts model and its bootstrap refits."""

import torch

from plmdiff.core.runtime import setup_logging
from plmdiff.potts.job import run_potts_fit

setup_logging(snakemake.log[0])
torch.set_num_threads(snakemake.threads)
run_potts_fit(
    snakemake.wildcards.potts_set,
    snakemake.input.table,
    potts_section={**snakemake.config["potts"], **snakemake.params.potts},
    device=snakemake.config["device"],
    fit_path=snakemake.output.fit,
    info_path=snakemake.output.info,
)
