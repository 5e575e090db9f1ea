"""Rule extract: embed one part of a model's FASTA; pooled part + one token part per layer."""

import torch

from plmdiff.activations.extraction import ExtractionSettings, extract_part
from plmdiff.core.runtime import resolve_device, setup_logging
from plmdiff.models.checkpoints import CheckpointRecord
from plmdiff.models.text import PromptFormat

setup_logging(snakemake.log[0])
torch.set_num_threads(snakemake.threads)
extract_part(
    fasta_path=snakemake.input.fasta,
    record=CheckpointRecord.read(snakemake.input.record),
    checkpoint_dir=snakemake.params.checkpoint,
    embedder=snakemake.wildcards.embedder,
    model=snakemake.wildcards.model,
    part=int(snakemake.wildcards.part),
    fmt=PromptFormat.from_config(snakemake.params.prompt),
    # Result-defining keys from params (the rerun triggers), batching keys from the config.
    settings=ExtractionSettings.from_config(
        {**snakemake.config["activations"], **snakemake.params.activations}
    ),
    pooled_path=snakemake.output.pooled,
    token_paths=dict(zip(snakemake.params.token_layers, snakemake.output.tokens, strict=True)),
    device=resolve_device(snakemake.config["device"]),
    allow_pickle=snakemake.config["allow_pickle"],
)
