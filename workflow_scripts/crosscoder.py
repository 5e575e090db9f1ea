"""Rule crosscoder: the layer's BatchTopK crosscoder over every model, classes, latent scaling."""

from plmdiff.core.runtime import setup_logging
from plmdiff.model_diff.job import run_crosscoder

setup_logging(snakemake.log[0])
out = snakemake.output
run_crosscoder(
    layer=int(snakemake.wildcards.layer),
    layer_dirs=snakemake.params.layer_dirs,
    sequences=snakemake.input.sequences,
    section={**snakemake.config["model_diff"], **snakemake.params.model_diff},
    device=snakemake.config["device"],
    threads=snakemake.threads,
    outputs={
        "weights": out.weights,
        "latents": out.latents,
        "classes": out.classes,
        "top": out.top,
        "examples": out.examples,
        "metrics": out.metrics,
        "curves": out.curves,
        "figures": [out.png, out.svg],
    },
)
