# Stage: sae. One sae-lens SAE per (embedder, layer, scheme, fold): 'base' trains from scratch on
# the base model's token activations (or imports sae.base.import), every other scheme fine-tunes
# the base SAE of the same fold. Replica f never sees sequence fold f, which evaluates it; the
# null fine-tune null_ft (trained when fine-tuned schemes exist) fine-tunes base replica f on the
# base's fold f only, the null that calibrates the diff's direction cut.
# One job trains every fold replica of an (embedder, layer, scheme): fewer, fuller GPU jobs.
# SAEs are not protected: a rerun happens only when what defines them changes (inputs, the keys
# below, the code), and deleting one retrains it.

# Keys that change what an SAE is; sae.layers/schemes/groups only choose which SAEs exist.
SAE_JOB_KEYS = [k for k in config["sae"] if k not in ("layers", "schemes", "groups")]


# Folds hold whole sequence clusters (MMseqs2, the probes' clustering settings), so near-duplicates
# never sit in a replica's training and held-out folds at once. One table per model, clustered on
# its own: adding a model adds a table and leaves the folds of the trained SAEs as they are.
rule sae_folds:
    input:
        lambda wildcards: fasta(wildcards.model),
    output:
        paths.sae_fold_table("{model}"),
    log:
        "logs/sae_folds/{model}.log",
    # Seconds of MMseqs2 on one model's samples: not worth a queue slot.
    localrule: True
    conda:
        "../envs/stats.yaml"
    threads: 2
    resources:
        mem_mb=mem_mb(4000),
        runtime=runtime_min(30),
    params:
        # Only the clustering keys of probes: a changed probe setting must not refold the SAEs.
        probes={k: v for k, v in config["probes"].items() if k.startswith("cluster_")},
        kfold=config["sae"]["kfold"],
        seed=config["sae"]["seed"],
    script:
        "../workflow_scripts/sae_folds.py"


rule train_sae:
    input:
        tokens=sae_token_parts,
        fasta=lambda wildcards: [
            fasta(m) for m in STUDY.sae_training_sources(wildcards.scheme)
        ],
        records=lambda wildcards: sorted(
            set(sae_checkpoint_records(wildcards).values())
        ),
        base=sae_base_input,
        imported=sae_import_inputs,
        folds=lambda wildcards: [
            paths.sae_fold_table(m) for m in STUDY.scheme_models(wildcards.scheme)
        ],
    output:
        saes=[directory(sae_dir("{embedder}", "{layer}", "{scheme}", f)) for f in FOLDS],
        metrics=[sae_metrics("{embedder}", "{layer}", "{scheme}", f) for f in FOLDS],
        curves=[
            sae_curves("{embedder}", "{layer}", "{scheme}", f, "tsv") for f in FOLDS
        ],
        figures=[
            report(
                sae_curves("{embedder}", "{layer}", "{scheme}", f, "png"),
                caption="../report/sae_curves.rst",
                category="SAEs",
                subcategory="{embedder} layer {layer}",
                labels={
                    "scheme": "{scheme}",
                    "fold": str(f),
                    "figure": "training curves",
                },
            )
            for f in FOLDS
        ],
    log:
        "logs/train_sae/{embedder}/layer_{layer}/{scheme}.log",
    benchmark:
        "benchmarks/train_sae/{embedder}/layer_{layer}/{scheme}.tsv"
    group:
        SAE_GROUP
    conda:
        "../envs/sae.yaml"
    threads: 4
    resources:
        mem_mb=train_sae_mem_mb,
        runtime=train_sae_runtime_min,
        gpu=1,
    params:
        sae={k: config["sae"][k] for k in SAE_JOB_KEYS},
        folds=FOLDS,
        models=lambda wildcards: STUDY.sae_training_sources(wildcards.scheme),
        fasta=lambda wildcards: {
            m: fasta(m) for m in STUDY.sae_training_sources(wildcards.scheme)
        },
        records=sae_checkpoint_records,
        import_path=sae_import_path,
        prompt=config["prompt"],
    script:
        "../workflow_scripts/train_sae.py"


# sae.base.sequences: more sequences for the base SAE, written as the FASTA of the token source
# paths.SAE_BASE_SOURCE, which extract_tokens embeds as it embeds a model's samples.
rule sae_base_sequences:
    input:
        fasta=sae_base_sequence_files,
    output:
        fasta=fasta(paths.SAE_BASE_SOURCE),
        stats=fasta_stats(paths.SAE_BASE_SOURCE),
    log:
        "logs/sae_base_sequences.log",
    localrule: True
    conda:
        "../envs/sae.yaml"
    resources:
        mem_mb=mem_mb(2000),
        runtime=runtime_min(10),
    script:
        "../workflow_scripts/sae_base_sequences.py"
