"""Rule extract: the pooled part of one part of a model's FASTA (plmdiff.activations.job.extract)."""

from plmdiff.activations.extraction import ExtractionSettings
from plmdiff.activations.job import extract
from plmdiff.core.runtime import setup_logging

setup_logging(snakemake.log[0])
extract(
    fasta_path=snakemake.input.fasta,
    record_path=snakemake.input.record,
    checkpoint_dir=snakemake.params.checkpoint,
    embedder=snakemake.wildcards.embedder,
    model=snakemake.wildcards.model,
    part=int(snakemake.wildcards.part),
    prompt_section=snakemake.params.prompt,
    # Result-defining keys from params (the rerun triggers), batching keys from the config.
    settings=ExtractionSettings.from_section(
        {**snakemake.config["activations"], **snakemake.params.activations}
    ),
    pooled_path=snakemake.output.pooled,
    device=snakemake.config["device"],
    allow_pickle=snakemake.config["allow_pickle"],
    threads=snakemake.threads,
)
