"""Rule filter_samples: validity, length window and duplicates; FASTA plus stats JSON."""

import logging

from plmdiff.core.fasta import write_fasta
from plmdiff.core.runtime import setup_logging, write_json
from plmdiff.sampling.filtering import FilterSettings, check_enough, fasta_entries, filter_model

setup_logging(snakemake.log[0])
model = snakemake.wildcards.model
settings = FilterSettings.from_config(snakemake.params.filter)
result, stats = filter_model(
    model,
    snakemake.input.samples,
    settings,
    base_model=snakemake.params.base,
    base_shard_paths=snakemake.input.base_samples,
)
try:
    check_enough(model, result, settings.min_sequences)
except Exception as exc:
    logging.getLogger("plmdiff").error("%s", exc)
    raise
write_fasta(snakemake.output.fasta, fasta_entries(model, result.kept))
write_json(snakemake.output.stats, stats)
