"""Rule check_checkpoint: verify a checkpoint and record its fingerprint."""

from plmdiff.core.runtime import setup_logging, write_json
from plmdiff.models.checkpoints import inspect_checkpoint
from plmdiff.models.text import PromptFormat

setup_logging(snakemake.log[0])
record = inspect_checkpoint(
    snakemake.params.checkpoint,
    snakemake.wildcards.model,
    PromptFormat.from_section(snakemake.params.prompt),
    allow_pickle=snakemake.config["allow_pickle"],
)
write_json(snakemake.output[0], record.to_json())
