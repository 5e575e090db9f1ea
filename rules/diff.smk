# Stage: diff. feature_stats encodes every model's held-out token activations with each SAE replica
# (one GPU job per embedder, layer and scheme, over every fold, grouped with the SAE family's
# training into one SLURM submission); diff compares a family's SAEs across rounds,
# folds and schemes (a cheap CPU job), its direction cut calibrated on the null fine-tune
# null_ft; kl scores every model against the base on the same
# sequences (one GPU job per model) and kl_summary gathers them.


rule feature_stats:
    input:
        saes=lambda wildcards: [
            sae_dir(wildcards.embedder, wildcards.layer, wildcards.scheme, fold)
            for fold in FOLDS
        ],
        base_saes=lambda wildcards: (
            []
            if wildcards.scheme == paths.BASE_SCHEME
            else [
                sae_dir(wildcards.embedder, wildcards.layer, paths.BASE_SCHEME, fold)
                for fold in FOLDS
            ]
        ),
        folds=lambda wildcards: [
            paths.sae_fold_table(m) for m in STUDY.embedded_models(wildcards.embedder)
        ],
        tokens=lambda wildcards: [
            part
            for m in STUDY.embedded_models(wildcards.embedder)
            for part in token_parts(wildcards.embedder, m, wildcards.layer)
        ],
    output:
        **{
            key: [
                feature_stats_files("{embedder}", "{layer}", "{scheme}", fold)[key]
                for fold in FOLDS
            ]
            for key in FEATURE_STATS_KEYS
        },
    log:
        "logs/feature_stats/{embedder}/layer_{layer}/{scheme}.log",
    benchmark:
        "benchmarks/feature_stats/{embedder}/layer_{layer}/{scheme}.tsv"
    group:
        SAE_GROUP
    conda:
        "../envs/sae.yaml"
    threads: 4
    resources:
        mem_mb=mem_mb(16000),
        runtime=runtime_min(30 * len(FOLDS)),
        gpu=1,
    params:
        # In the order of the outputs: the layer, fold and token directories of each replica.
        replicas=lambda wildcards: [
            {
                "layer": int(wildcards.layer),
                "fold": fold,
                "token_dirs": {
                    m: token_layer_dir(wildcards.embedder, m, wildcards.layer)
                    for m in STUDY.embedded_models(wildcards.embedder)
                },
            }
            for fold in FOLDS
        ],
        diff=config["diff"],
        kfold=config["sae"]["kfold"],
        fold_seed=config["sae"]["seed"],
    script:
        "../workflow_scripts/feature_stats.py"


rule diff:
    input:
        stats=lambda wildcards: [
            feature_stats(wildcards.embedder, wildcards.layer, s, f)
            for s, f in diff_keys(wildcards)
        ],
        stats_parts=lambda wildcards: [
            path
            for s, f in diff_keys(wildcards)
            for path in feature_stats_files(
                wildcards.embedder, wildcards.layer, s, f
            ).values()
        ],
        saes=lambda wildcards: [
            sae_dir(wildcards.embedder, wildcards.layer, s, f)
            for s, f in diff_keys(wildcards)
        ],
        union=lambda wildcards: [
            sae_dir(wildcards.embedder, wildcards.layer, s, f)
            for s, f in diff_union_keys(wildcards)
        ],
        null=lambda wildcards: [
            sae_dir(wildcards.embedder, wildcards.layer, paths.NULL_SCHEME, f)
            for f in diff_null_folds(wildcards)
        ],
    output:
        features=report(
            diff_file("{embedder}", "{layer}", "{family}", "features.tsv"),
            caption="../report/diff_features.rst",
            category="Feature diffs",
            subcategory="{embedder} layer {layer}",
            labels={"family": "{family}", "table": "top features"},
        ),
        parquet=diff_file("{embedder}", "{layer}", "{family}", "features.parquet"),
        examples=diff_file("{embedder}", "{layer}", "{family}", "examples.parquet"),
        examples_tsv=report(
            diff_file("{embedder}", "{layer}", "{family}", "examples.tsv"),
            caption="../report/diff_examples.rst",
            category="Feature diffs",
            subcategory="{embedder} layer {layer}",
            labels={"family": "{family}", "table": "top examples"},
        ),
        stability=report(
            diff_file("{embedder}", "{layer}", "{family}", "stability.tsv"),
            caption="../report/diff_stability_table.rst",
            category="Stability",
            subcategory="{embedder} layer {layer}",
            labels={"family": "{family}", "table": "alignments"},
        ),
        volcano=report(
            diff_file("{embedder}", "{layer}", "{family}", "volcano.png"),
            caption="../report/diff_volcano.rst",
            category="Feature diffs",
            subcategory="{embedder} layer {layer}",
            labels={"family": "{family}", "figure": "volcano"},
        ),
        volcano_svg=diff_file("{embedder}", "{layer}", "{family}", "volcano.svg"),
        fit=report(
            paths.diff_fit("{embedder}", "{layer}", "{family}"),
            caption="../report/diff_fit.rst",
            category="Feature diffs",
            subcategory="{embedder} layer {layer}",
            labels={"family": "{family}", "table": "SAE fit per model"},
        ),
        trajectories=report(
            diff_file("{embedder}", "{layer}", "{family}", "trajectories.png"),
            caption="../report/diff_trajectories.rst",
            category="Feature diffs",
            subcategory="{embedder} layer {layer}",
            labels={"family": "{family}", "figure": "trajectories"},
        ),
        lead=report(
            diff_file("{embedder}", "{layer}", "{family}", "lead.png"),
            caption="../report/diff_lead.rst",
            category="Feature diffs",
            subcategory="{embedder} layer {layer}",
            labels={"family": "{family}", "figure": "lead features"},
        ),
        stability_png=report(
            diff_file("{embedder}", "{layer}", "{family}", "stability.png"),
            caption="../report/diff_stability.rst",
            category="Stability",
            subcategory="{embedder} layer {layer}",
            labels={"family": "{family}", "figure": "stability"},
        ),
    log:
        "logs/diff/{embedder}/layer_{layer}/{family}.log",
    benchmark:
        "benchmarks/diff/{embedder}/layer_{layer}/{family}.tsv"
    conda:
        "../envs/sae.yaml"
    threads: 2
    resources:
        mem_mb=mem_mb(16000),
        runtime=runtime_min(60),
    params:
        models=MODELS,
        schemes=lambda wildcards: STUDY.family_schemes(wildcards.family),
        folds=FOLDS,
        stats_keys=diff_keys,
        union_keys=diff_union_keys,
        null_folds=diff_null_folds,
        diff=config["diff"],
    script:
        "../workflow_scripts/diff.py"


rule kl:
    input:
        record=lambda wildcards: checkpoint_record(wildcards.model),
        base_record=checkpoint_record(BASE),
        own=lambda wildcards: fasta(wildcards.model),
        base=fasta(BASE),
    output:
        table=kl_table("{model}"),
        top=paths.kl_top("{model}"),
    log:
        "logs/kl/{model}.log",
    benchmark:
        "benchmarks/kl/{model}.tsv"
    wildcard_constraints:
        model=wc.alternatives(ROUNDS),
    conda:
        "../envs/torch.yaml"
    threads: 4
    resources:
        mem_mb=kl_mem_mb,
        runtime=runtime_min(60),
        gpu=1,
    params:
        checkpoint=lambda wildcards: STUDY.checkpoint(wildcards.model),
        base=BASE,
        base_checkpoint=STUDY.checkpoint(BASE),
        kl=config["kl"],
        prompt=config["prompt"],
    script:
        "../workflow_scripts/kl.py"


rule kl_summary:
    input:
        tables=[kl_table(m) for m in ROUNDS],
        clusters=clusters_table(),
    output:
        tsv=report(
            paths.kl_summary(),
            caption="../report/kl_summary.rst",
            category="KL to the base",
            labels={"table": "summary"},
        ),
        png=report(
            paths.kl_figure("png"),
            caption="../report/kl_by_round.rst",
            category="KL to the base",
            labels={"figure": "KL by round"},
        ),
        svg=paths.kl_figure("svg"),
    log:
        "logs/kl_summary.log",
    localrule: True
    conda:
        "../envs/torch.yaml"
    resources:
        mem_mb=mem_mb(4000),
        runtime=runtime_min(10),
    params:
        models=MODELS,
    script:
        "../workflow_scripts/kl_summary.py"
