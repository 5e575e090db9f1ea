"""Rule train_sae: train, fine-tune or import one SAE, evaluate it, write metrics and curves."""

from plmdiff.core.runtime import setup_logging
from plmdiff.models.text import PromptFormat
from plmdiff.sae.job import SAEJob, SAEOutputs, run_train_sae
from plmdiff.sae.training import SAESettings

setup_logging(snakemake.log[0])
wildcards, params = snakemake.wildcards, snakemake.params
job = SAEJob(
    embedder=wildcards.embedder,
    layer=int(wildcards.layer),
    scheme=wildcards.scheme,
    fold=int(wildcards.fold),
    models=list(params.models),
    token_files=list(snakemake.input.tokens),
    fasta=dict(params.fasta),
    checkpoint_records=dict(params.records),
    settings=SAESettings.from_config(params.sae),
    prompt=PromptFormat.from_config(params.prompt),
    base_sae=snakemake.input.base[0] if snakemake.input.base else None,
    import_path=params.import_path,
    device=snakemake.config["device"],
    allow_pickle=snakemake.config["allow_pickle"],
)
outputs = SAEOutputs(
    sae_dir=snakemake.output.sae,
    metrics=snakemake.output.metrics,
    curves_tsv=snakemake.output.curves,
    curves_png=snakemake.output.figure,
)
run_train_sae(job, outputs)
