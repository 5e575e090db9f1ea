# Stage: activations. Each (embedder, model) FASTA is embedded in activations.shards parts. Per
# part, `extract` writes the pooled table of every layer and `extract_tokens` the token file of
# one layer of activations.token_layers (its forward pass stops at that layer), so adding a
# token layer runs only that layer's jobs. On a cluster the jobs of one part are one group: one
# SLURM submission that runs them one after another (profiles/slurm: group-components,
# group_slot). A cheap local job concatenates the pooled parts, which is what probes and sanity
# read; SAEs read the token parts directly.

# Keys that only choose what exists or how a part is batched: never a rerun trigger.
ACTIVATIONS_RUN_KEYS = ("embedders", "batch_tokens", "gpus")


rule extract:
    input:
        fasta=lambda wildcards: fasta(wildcards.model),
        record=lambda wildcards: checkpoint_record(
            embedder_model(wildcards.embedder, wildcards.model)
        ),
    output:
        pooled=pooled_part("{embedder}", "{model}", "{part}"),
    log:
        "logs/extract/{embedder}/{model}/part-{part}.log",
    benchmark:
        "benchmarks/extract/{embedder}/{model}/part-{part}.tsv"
    group:
        EXTRACT_GROUP
    conda:
        "../envs/torch.yaml"
    threads: 4
    resources:
        mem_mb=extract_mem_mb,
        runtime=extract_runtime_min,
        gpu=config["activations"]["gpus"],
        group_slot=1,
    params:
        checkpoint=lambda wildcards: STUDY.checkpoint(
            embedder_model(wildcards.embedder, wildcards.model)
        ),
        # Not token_layers or rows_per_file: the token files are extract_tokens' outputs.
        activations={
            k: v
            for k, v in config["activations"].items()
            if k not in (*ACTIVATIONS_RUN_KEYS, "token_layers", "rows_per_file")
        },
        prompt=config["prompt"],
    script:
        "../workflow_scripts/extract.py"


rule extract_tokens:
    input:
        fasta=lambda wildcards: fasta(wildcards.model),
        record=lambda wildcards: checkpoint_record(
            embedder_model(wildcards.embedder, wildcards.model)
        ),
    output:
        tokens=token_part("{embedder}", "{model}", "{layer}", "{part}"),
    log:
        "logs/extract_tokens/{embedder}/{model}/layer_{layer}/part-{part}.log",
    benchmark:
        "benchmarks/extract_tokens/{embedder}/{model}/layer_{layer}/part-{part}.tsv"
    wildcard_constraints:
        # Also sae.base.sequences (paths.SAE_BASE_SOURCE): the base SAE's extra sequences.
        model=wc.alternatives(TOKEN_SOURCES),
    group:
        EXTRACT_GROUP
    conda:
        "../envs/torch.yaml"
    threads: 4
    resources:
        mem_mb=extract_mem_mb,
        runtime=extract_tokens_runtime_min,
        gpu=config["activations"]["gpus"],
        group_slot=1,
    params:
        checkpoint=lambda wildcards: STUDY.checkpoint(
            embedder_model(wildcards.embedder, wildcards.model)
        ),
        # Not token_layers (the layer is the wildcard), layers or pooling (the pooled table's).
        activations={
            k: v
            for k, v in config["activations"].items()
            if k not in (*ACTIVATIONS_RUN_KEYS, "token_layers", "layers", "pooling")
        },
        prompt=config["prompt"],
    script:
        "../workflow_scripts/extract_tokens.py"


rule gather_pooled:
    input:
        lambda wildcards: [
            pooled_part(wildcards.embedder, wildcards.model, part)
            for part in EXTRACT_SHARDS
        ],
    output:
        pooled("{embedder}", "{model}"),
    log:
        "logs/gather_pooled/{embedder}/{model}.log",
    localrule: True
    conda:
        "../envs/torch.yaml"
    resources:
        mem_mb=mem_mb(2000),
        runtime=runtime_min(20),
    script:
        "../workflow_scripts/gather_pooled.py"
