"""Rule potts_profile: the family HMM every set is aligned to."""

from plmdiff.core.runtime import setup_logging
from plmdiff.potts.job import run_potts_profile

setup_logging(snakemake.log[0])
run_potts_profile(
    snakemake.input.source,
    from_family=snakemake.params.from_family,
    # Result-defining keys from params (the rerun triggers), the rest from the config.
    potts_section={**snakemake.config["potts"], **snakemake.params.potts},
    hmm_path=snakemake.output.hmm,
    info_path=snakemake.output.info,
)
