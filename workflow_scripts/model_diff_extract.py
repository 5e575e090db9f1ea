"""Rule model_diff_extract: one checkpoint embeds one part of the shared sequences."""

from plmdiff.core.runtime import setup_logging
from plmdiff.model_diff.job import model_diff_extract

setup_logging(snakemake.log[0])
model_diff_extract(
    fasta_path=snakemake.input.fasta,
    record_path=snakemake.input.record,
    checkpoint_dir=snakemake.params.checkpoint,
    model=snakemake.wildcards.model,
    part=int(snakemake.wildcards.part),
    prompt_section=snakemake.params.prompt,
    # Result-defining keys from params (the rerun triggers), batching keys from the config.
    activations_section={**snakemake.config["activations"], **snakemake.params.activations},
    model_diff_section={**snakemake.config["model_diff"], "shards": snakemake.params.shards},
    layers=snakemake.params.layers,
    pooled_path=snakemake.output.pooled,
    token_paths=list(snakemake.output.tokens),
    device=snakemake.config["device"],
    allow_pickle=snakemake.config["allow_pickle"],
    threads=snakemake.threads,
)
