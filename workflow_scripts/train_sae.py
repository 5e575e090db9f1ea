"""Rule train_sae: train, fine-tune or import every fold replica of one SAE family."""

from plmdiff.core.runtime import setup_logging
from plmdiff.models.text import PromptFormat
from plmdiff.sae.job import SAEJob, SAEOutputs, run_train_sae_replicas
from plmdiff.sae.training import SAESettings

setup_logging(snakemake.log[0])
wildcards, params, output = snakemake.wildcards, snakemake.params, snakemake.output
family = SAEJob(
    embedder=wildcards.embedder,
    layer=int(wildcards.layer),
    scheme=wildcards.scheme,
    fold=-1,  # set per replica below
    models=list(params.models),
    token_files=list(snakemake.input.tokens),
    fasta=dict(params.fasta),
    checkpoint_records=dict(params.records),
    settings=SAESettings.from_section(params.sae),
    prompt=PromptFormat.from_section(params.prompt),
    import_path=params.import_path,
    fold_table=[str(p) for p in snakemake.input.folds],
    device=snakemake.config["device"],
    allow_pickle=snakemake.config["allow_pickle"],
)
base_saes = list(snakemake.input.base) or [None] * len(params.folds)
run_train_sae_replicas(
    [family.for_fold(f, base) for f, base in zip(params.folds, base_saes, strict=True)],
    [
        SAEOutputs(sae_dir=d, metrics=m, curves_tsv=t, curves_png=png)
        for d, m, t, png in zip(
            output.saes, output.metrics, output.curves, output.figures, strict=True
        )
    ],
)
