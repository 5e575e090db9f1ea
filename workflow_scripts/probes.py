"""Rule probes: round probes for every layer of one embedder and pooling."""

import torch

from plmdiff.core.runtime import resolve_device, setup_logging
from plmdiff.probes.plots import plot_accuracy_per_layer, plot_confusion
from plmdiff.probes.probes import (
    ProbeSettings,
    load_round_embeddings,
    probe_sweep,
    write_probe_tables,
)

setup_logging(snakemake.log[0])
torch.set_num_threads(snakemake.threads)
wc, out = snakemake.wildcards, snakemake.output
data = load_round_embeddings(
    snakemake.input.pooled, wc.pooling, snakemake.params.rounds, clusters=snakemake.input.clusters
)
result = probe_sweep(
    data.X,
    data.y,
    data.groups,
    ProbeSettings.from_config(snakemake.params.probes),
    class_names=data.rounds,
    device=resolve_device(snakemake.config["device"]),
)
write_probe_tables(result, out.accuracy, out.folds, out.confusion)
title = f"embedder {wc.embedder}, {wc.pooling} pooling"
plot_accuracy_per_layer(result.accuracy, out.png, out.svg, title=title)
plot_confusion(result.confusion, out.confusion_png, title=f"{title}, layer {result.best_layer}")
