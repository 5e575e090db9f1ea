"""Rule cluster_sequences: sequence-identity clusters of every model's FASTA."""

import logging

from plmdiff.core.fasta import read_fasta
from plmdiff.core.runtime import setup_logging
from plmdiff.probes.clustering import ClusterSettings, cluster_sequences, write_clusters

setup_logging(snakemake.log[0])
entries = [entry for path in snakemake.input for entry in read_fasta(path)]
clusters = cluster_sequences(
    entries, ClusterSettings.from_config(snakemake.params.probes), threads=snakemake.threads
)
logging.getLogger("plmdiff").info(
    "%d sequences in %d clusters (%s)", len(entries), clusters.n_clusters, clusters.method
)
write_clusters(clusters, snakemake.output[0])
