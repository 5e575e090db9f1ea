"""Rule gather_pooled: concatenate the pooled parts of one (embedder, model) into one table."""

import logging

from plmdiff.activations.store import gather_pooled_parts
from plmdiff.core.runtime import setup_logging

setup_logging(snakemake.log[0])
rows = gather_pooled_parts(list(snakemake.input), snakemake.output[0])
logging.getLogger("plmdiff").info("%d sequences in %s", rows, snakemake.output[0])
