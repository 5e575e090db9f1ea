# Stage: probes and sanity checks on the pooled embeddings.
# cluster_sequences groups near-identical sequences of all models (MMseqs2; exact duplicates
# only with cluster_method auto/exact, recorded in the table) so that probe folds, permutations
# and bootstraps never split a cluster. probes fits every layer's round probe and the length /
# composition / dipeptide / layer-0 baselines (grouped and plain folds, nested C, cluster
# permutations) as one batched GPU job per (embedder, pooling); sanity runs the t-SNE, cosine,
# distance, variance and trend checks per embedder. Neither runs for the `self` embedder
# (ROUND_EMBEDDERS in common.smk).


rule cluster_sequences:
    input:
        [fasta(m) for m in MODELS],
    output:
        clusters_table(),
    log:
        "logs/cluster_sequences.log",
    benchmark:
        "benchmarks/cluster_sequences/all.tsv"
    conda:
        "../envs/stats.yaml"
    threads: 4
    resources:
        mem_mb=mem_mb(8000),
        runtime=runtime_min(60),
    params:
        # Only the clustering keys: a changed probe setting must not redo the clustering.
        probes={k: v for k, v in config["probes"].items() if k.startswith("cluster_")},
    script:
        "../workflow_scripts/cluster_sequences.py"


rule probes:
    input:
        pooled=lambda wildcards: all_pooled(wildcards.embedder),
        clusters=clusters_table(),
        # Sequences for the length and composition baselines.
        fasta=[fasta(m) for m in MODELS],
    output:
        accuracy=report(
            probe_file("{embedder}", "{pooling}", "accuracy.tsv"),
            caption="../report/probes_table.rst",
            category="Probes",
        ),
        folds=probe_file("{embedder}", "{pooling}", "folds.tsv"),
        confusion=probe_file("{embedder}", "{pooling}", "confusion.tsv"),
        confusion_png=report(
            probe_file("{embedder}", "{pooling}", "confusion.png"),
            caption="../report/probes_confusion.rst",
            category="Probes",
        ),
        png=report(
            probe_file("{embedder}", "{pooling}", "acc_per_layer.png"),
            caption="../report/probes_accuracy.rst",
            category="Probes",
        ),
        svg=probe_file("{embedder}", "{pooling}", "acc_per_layer.svg"),
    log:
        "logs/probes/{embedder}/{pooling}.log",
    benchmark:
        "benchmarks/probes/{embedder}/{pooling}.tsv"
    conda:
        "../envs/stats.yaml"
    threads: 4
    resources:
        mem_mb=mem_mb(32000),
        runtime=runtime_min(120),
        gpu=1,
    params:
        probes=config["probes"],
        rounds=MODELS,
    script:
        "../workflow_scripts/probes.py"


rule sanity:
    input:
        pooled=lambda wildcards: all_pooled(wildcards.embedder),
        clusters=clusters_table(),
    output:
        variance=report(
            sanity_file("{embedder}", "variance.tsv"),
            caption="../report/sanity_variance.rst",
            category="Sanity checks",
        ),
        trend=report(
            sanity_file("{embedder}", "trend.tsv"),
            caption="../report/sanity_trend.rst",
            category="Sanity checks",
        ),
        cosine=report(
            sanity_file("{embedder}", "cosine.tsv"),
            caption="../report/sanity_distances.rst",
            category="Sanity checks",
        ),
        tsne=report(
            sanity_tsne("{embedder}"),
            caption="../report/sanity_tsne.rst",
            category="Sanity checks",
        ),
        cosine_png=report(
            sanity_file("{embedder}", "cosine_grid.png"),
            caption="../report/sanity_cosine.rst",
            category="Sanity checks",
        ),
        stats_png=report(
            sanity_file("{embedder}", "stats_per_layer.png"),
            caption="../report/sanity_stats.rst",
            category="Sanity checks",
        ),
    log:
        "logs/sanity/{embedder}.log",
    benchmark:
        "benchmarks/sanity/{embedder}.tsv"
    conda:
        "../envs/stats.yaml"
    threads: 4
    resources:
        mem_mb=mem_mb(16000),
        runtime=runtime_min(120),
    params:
        sanity=config["sanity"],
        rounds=MODELS,
    script:
        "../workflow_scripts/sanity.py"
