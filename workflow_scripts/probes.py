"""Rule probes: round probes for every layer and baseline of one embedder and pooling."""

from plmdiff.core.runtime import setup_logging
from plmdiff.probes.job import run_probes

setup_logging(snakemake.log[0])
run_probes(
    pooled=snakemake.input.pooled,
    clusters=snakemake.input.clusters,
    fasta=snakemake.input.fasta,
    outputs=dict(snakemake.output.items()),
    probes_section=snakemake.params.probes,
    rounds=snakemake.params.rounds,
    embedder=snakemake.wildcards.embedder,
    pooling=snakemake.wildcards.pooling,
    device=snakemake.config["device"],
    threads=snakemake.threads,
)
