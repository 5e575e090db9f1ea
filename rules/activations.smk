# Stage: activations. Each (embedder, model) FASTA is embedded in activations.shards parts, one
# GPU job each (a node with N GPUs runs N parts at once); every part writes a pooled table and
# one token file per layer of activations.token_layers. A cheap local job concatenates the
# pooled parts, which is what probes and sanity read; SAEs read the token parts directly.


rule extract:
    input:
        fasta=lambda wildcards: fasta(wildcards.model),
        record=lambda wildcards: checkpoint_record(
            embedder_model(wildcards.embedder, wildcards.model)
        ),
    output:
        pooled=pooled_part("{embedder}", "{model}", "{part}"),
        tokens=[
            token_part("{embedder}", "{model}", layer, "{part}")
            for layer in TOKEN_LAYERS
        ],
    log:
        "logs/extract/{embedder}/{model}/part-{part}.log",
    benchmark:
        "benchmarks/extract/{embedder}/{model}/part-{part}.tsv"
    conda:
        "../envs/torch.yaml"
    threads: 4
    resources:
        mem_mb=extract_mem_mb,
        runtime=extract_runtime_min,
        gpu=config["activations"]["gpus"],
    params:
        checkpoint=lambda wildcards: STUDY.checkpoint(
            embedder_model(wildcards.embedder, wildcards.model)
        ),
        token_layers=[int(layer) for layer in TOKEN_LAYERS],
        # Not activations.embedders, batch_tokens or gpus: adding an embedder or changing how a
        # part is batched must not redo the extraction.
        activations={
            k: v
            for k, v in config["activations"].items()
            if k not in ("embedders", "batch_tokens", "gpus")
        },
        prompt=config["prompt"],
    script:
        "../workflow_scripts/extract.py"


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
