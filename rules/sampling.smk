# Stage: sampling. Every checkpoint draws sampling.n_sequences sequences over sampling.shards
# jobs (per-sequence seeds, so the set does not depend on the shard count), then a cheap local
# job per model filters them into FASTA, and one figure and table summarise all models. A model
# with its own FASTA (models[].fasta) skips sampling: import_fasta writes its sequences as its
# one shard, which the same filter reads.


rule sample:
    input:
        record=lambda wildcards: checkpoint_record(wildcards.model),
    output:
        sample_shard("{model}", "{shard}"),
    log:
        "logs/sample/{model}/shard_{shard}.log",
    benchmark:
        "benchmarks/sample/{model}/shard_{shard}.tsv"
    wildcard_constraints:
        model=wc.alternatives(STUDY.sampled_models),
    conda:
        "../envs/torch.yaml"
    threads: 4
    resources:
        mem_mb=sample_mem_mb,
        runtime=sample_runtime_min,
        gpu=1,
    params:
        # Not sampling.batch_size: per-sequence seeds make the samples independent of it.
        sampling={k: v for k, v in config["sampling"].items() if k != "batch_size"},
        prompt=config["prompt"],
    script:
        "../workflow_scripts/sample.py"


rule import_fasta:
    input:
        fasta=given_fasta_files,
    output:
        sample_shard("{model}", "000"),
    log:
        "logs/import_fasta/{model}.log",
    wildcard_constraints:
        model=wc.alternatives(STUDY.given_models),
    localrule: True
    conda:
        "../envs/torch.yaml"
    resources:
        mem_mb=mem_mb(2000),
        runtime=runtime_min(10),
    script:
        "../workflow_scripts/import_fasta.py"


rule filter_samples:
    input:
        samples=lambda wildcards: sample_shards(wildcards.model),
        base_samples=base_sample_shards,
    output:
        fasta=fasta("{model}"),
        stats=fasta_stats("{model}"),
    log:
        "logs/filter_samples/{model}.log",
    localrule: True
    conda:
        "../envs/torch.yaml"
    resources:
        mem_mb=mem_mb(2000),
        runtime=runtime_min(10),
    params:
        filter=config["filter"],
        base=BASE,
    script:
        "../workflow_scripts/filter_samples.py"


rule sampling_summary:
    input:
        stats=[fasta_stats(m) for m in MODELS],
        fasta=[fasta(m) for m in MODELS],
        samples=[shard for m in MODELS for shard in sample_shards(m)],
    output:
        tsv=paths.sampling_summary("tsv"),
        png=report(
            paths.sampling_summary("png"),
            caption="../report/sampling_summary.rst",
            category="Sampling",
        ),
        svg=paths.sampling_summary("svg"),
    log:
        "logs/sampling_summary.log",
    localrule: True
    conda:
        "../envs/torch.yaml"
    resources:
        mem_mb=mem_mb(2000),
        runtime=runtime_min(10),
    params:
        models=MODELS,
        shards={m: sample_shards(m) for m in MODELS},
    script:
        "../workflow_scripts/sampling_summary.py"
