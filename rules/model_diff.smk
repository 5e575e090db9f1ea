# Stage: model_diff. The base model's kept samples (and model_diff.sequences) are embedded by
# every checkpoint at model_diff's layers, token by token (one GPU job per model and part);
# the activation-difference profile reads every layer; per layer one GPU job trains the
# crosscoder over every model and one trains the difference SAE of every round; a cheap local
# job compares them with the SAE diff. Every rule runs in the sae env: the stage's library
# trains with sae-lens's prefetching and reads the SAE diff's sae-lens SAEs.


rule model_diff_sequences:
    input:
        base=fasta(BASE),
        extra=model_diff_extra_fasta(),
    output:
        paths.model_diff_sequences(),
    log:
        "logs/model_diff_sequences.log",
    localrule: True
    conda:
        "../envs/sae.yaml"
    resources:
        mem_mb=mem_mb(2000),
        runtime=runtime_min(10),
    params:
        extra=config["model_diff"]["sequences"],
        max_sequences=config["model_diff"]["max_sequences"],
    script:
        "../workflow_scripts/model_diff_sequences.py"


rule model_diff_extract:
    input:
        fasta=paths.model_diff_sequences(),
        record=lambda wildcards: checkpoint_record(wildcards.model),
    output:
        pooled=paths.paired_pooled_part("{model}", "{part}"),
        tokens=[
            paths.paired_token_part("{model}", layer, "{part}")
            for layer in MODEL_DIFF_LAYERS
        ],
    log:
        "logs/model_diff_extract/{model}/part-{part}.log",
    benchmark:
        "benchmarks/model_diff_extract/{model}/part-{part}.tsv"
    conda:
        "../envs/sae.yaml"
    threads: 4
    resources:
        mem_mb=extract_mem_mb,
        runtime=model_diff_extract_runtime_min,
        gpu=config["activations"]["gpus"],
    params:
        checkpoint=lambda wildcards: STUDY.checkpoint(wildcards.model),
        layers=[int(layer) for layer in MODEL_DIFF_LAYERS],
        # The keys that change the stored activations (as rule extract), and the part count.
        activations={
            k: v
            for k, v in config["activations"].items()
            if k in ("dtype", "rows_per_file", "truncate", "pooling")
        },
        shards=config["model_diff"]["shards"],
        prompt=config["prompt"],
    script:
        "../workflow_scripts/model_diff_extract.py"


rule model_diff_profile:
    input:
        tokens=[part for layer in MODEL_DIFF_LAYERS for part in paired_parts(layer)],
        kl=[kl_table(m) for m in ROUNDS],
    output:
        tsv=report(
            paths.model_diff_profile("tsv"),
            caption="../report/model_diff_profile.rst",
            category="Model diffing",
            labels={"table": "activation-difference profile"},
        ),
        png=report(
            paths.model_diff_profile("png"),
            caption="../report/model_diff_profile.rst",
            category="Model diffing",
            labels={"figure": "activation-difference profile"},
        ),
        svg=paths.model_diff_profile("svg"),
    log:
        "logs/model_diff_profile.log",
    benchmark:
        "benchmarks/model_diff_profile.tsv"
    conda:
        "../envs/sae.yaml"
    threads: 2
    resources:
        mem_mb=mem_mb(8000),
        runtime=runtime_min(60),
    params:
        layer_dirs={int(layer): paired_layer_dirs(layer) for layer in MODEL_DIFF_LAYERS},
        rounds=ROUNDS,
        model_diff=config["model_diff"],
    script:
        "../workflow_scripts/model_diff_profile.py"


rule diff_sae:
    input:
        tokens=lambda wildcards: paired_parts(wildcards.layer),
        sequences=paths.model_diff_sequences(),
        records=[checkpoint_record(m) for m in MODELS],
    output:
        weights=[paths.diff_sae_file("{layer}", m, "safetensors") for m in ROUNDS],
        metrics=[paths.diff_sae_file("{layer}", m, "metrics.json") for m in ROUNDS],
    log:
        "logs/diff_sae/layer_{layer}.log",
    benchmark:
        "benchmarks/diff_sae/layer_{layer}.tsv"
    conda:
        "../envs/sae.yaml"
    threads: 4
    resources:
        mem_mb=crosscoder_mem_mb,
        runtime=diff_sae_runtime_min,
        gpu=1,
    params:
        layer_dirs=lambda wildcards: paired_layer_dirs(wildcards.layer),
        rounds=ROUNDS,
        model_diff=model_diff_params("diff_sae"),
    script:
        "../workflow_scripts/diff_sae.py"


rule crosscoder:
    input:
        tokens=lambda wildcards: paired_parts(wildcards.layer),
        sequences=paths.model_diff_sequences(),
        records=[checkpoint_record(m) for m in MODELS],
    output:
        weights=paths.model_diff_layer_file("{layer}", "crosscoder.safetensors"),
        latents=paths.model_diff_layer_file("{layer}", "latents.parquet"),
        classes=report(
            paths.model_diff_layer_file("{layer}", "classes.tsv"),
            caption="../report/model_diff_classes.rst",
            category="Model diffing",
            subcategory="layer {layer}",
            labels={"table": "latent classes"},
        ),
        top=report(
            paths.model_diff_layer_file("{layer}", "round_only.tsv"),
            caption="../report/model_diff_round_only.rst",
            category="Model diffing",
            subcategory="layer {layer}",
            labels={"table": "top round-only latents"},
        ),
        examples=report(
            paths.model_diff_layer_file("{layer}", "examples.tsv"),
            caption="../report/model_diff_examples.rst",
            category="Model diffing",
            subcategory="layer {layer}",
            labels={"table": "examples"},
        ),
        metrics=paths.model_diff_layer_file("{layer}", "crosscoder.metrics.json"),
        curves=paths.model_diff_layer_file("{layer}", "crosscoder.curves.tsv"),
        png=report(
            paths.model_diff_layer_file("{layer}", "classes.png"),
            caption="../report/model_diff_classes.rst",
            category="Model diffing",
            subcategory="layer {layer}",
            labels={"figure": "latent classes"},
        ),
        svg=paths.model_diff_layer_file("{layer}", "classes.svg"),
    log:
        "logs/crosscoder/layer_{layer}.log",
    benchmark:
        "benchmarks/crosscoder/layer_{layer}.tsv"
    conda:
        "../envs/sae.yaml"
    threads: 4
    resources:
        mem_mb=crosscoder_mem_mb,
        runtime=crosscoder_runtime_min,
        gpu=1,
    params:
        layer_dirs=lambda wildcards: paired_layer_dirs(wildcards.layer),
        model_diff=model_diff_params("crosscoder"),
    script:
        "../workflow_scripts/crosscoder.py"


rule model_diff_agreement:
    input:
        unpack(sae_diff_inputs),
        crosscoder=paths.model_diff_layer_file("{layer}", "crosscoder.safetensors"),
        latents=paths.model_diff_layer_file("{layer}", "latents.parquet"),
        diff_saes=[paths.diff_sae_file("{layer}", m, "safetensors") for m in ROUNDS],
        diff_sae_metrics=[
            paths.diff_sae_file("{layer}", m, "metrics.json") for m in ROUNDS
        ],
    output:
        table=report(
            paths.model_diff_layer_file("{layer}", "agreement.tsv"),
            caption="../report/model_diff_agreement.rst",
            category="Model diffing",
            subcategory="layer {layer}",
            labels={"table": "agreement"},
        ),
        matches=paths.model_diff_layer_file("{layer}", "matches.tsv"),
    log:
        "logs/model_diff_agreement/layer_{layer}.log",
    localrule: True
    conda:
        "../envs/sae.yaml"
    resources:
        mem_mb=mem_mb(4000),
        runtime=runtime_min(20),
    params:
        rounds=ROUNDS,
        model_diff=config["model_diff"],
    script:
        "../workflow_scripts/model_diff_agreement.py"
