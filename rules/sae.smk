# Stage: sae. One sae-lens SAE per (embedder, layer, scheme, fold): 'base' trains from scratch on
# the base model's token activations (or imports sae.base.import), every other scheme fine-tunes
# the base SAE of the same fold. Replica f never sees sequence fold f, which evaluates it.

# Keys that change what an SAE is; sae.layers/schemes/groups only choose which SAEs exist.
SAE_JOB_KEYS = [k for k in config["sae"] if k not in ("layers", "schemes", "groups")]


rule train_sae:
    input:
        tokens=sae_token_parts,
        fasta=lambda wildcards: [
            fasta(m) for m in STUDY.scheme_models(wildcards.scheme)
        ],
        records=lambda wildcards: sorted(
            set(sae_checkpoint_records(wildcards).values())
        ),
        base=sae_base_input,
        imported=sae_import_inputs,
    output:
        sae=directory(sae_dir("{embedder}", "{layer}", "{scheme}", "{fold}")),
        metrics=sae_metrics("{embedder}", "{layer}", "{scheme}", "{fold}"),
        curves=sae_curves("{embedder}", "{layer}", "{scheme}", "{fold}", "tsv"),
        figure=report(
            sae_curves("{embedder}", "{layer}", "{scheme}", "{fold}", "png"),
            caption="../report/sae_curves.rst",
            category="SAEs",
            subcategory="{embedder} layer {layer}",
            labels={
                "scheme": "{scheme}",
                "fold": "{fold}",
                "figure": "training curves",
            },
        ),
    log:
        "logs/train_sae/{embedder}/layer_{layer}/{scheme}/fold_{fold}.log",
    benchmark:
        "benchmarks/train_sae/{embedder}/layer_{layer}/{scheme}/fold_{fold}.tsv"
    conda:
        "../envs/sae.yaml"
    threads: 4
    resources:
        mem_mb=mem_mb(16000),
        runtime=runtime_min(240),
        gpu=1,
    params:
        sae={k: config["sae"][k] for k in SAE_JOB_KEYS},
        models=lambda wildcards: STUDY.scheme_models(wildcards.scheme),
        fasta=lambda wildcards: {
            m: fasta(m) for m in STUDY.scheme_models(wildcards.scheme)
        },
        records=sae_checkpoint_records,
        import_path=sae_import_path,
        prompt=config["prompt"],
    script:
        "../workflow_scripts/train_sae.py"
