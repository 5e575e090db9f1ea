# Stage: demo. The demo's checkpoints are built by the workflow itself, so that `make demo` needs
# nothing but the shipped family: a small GPT-2 learns it in ZymCTRL's format (iteration 0), then
# demo.dpo.rounds rounds of DPO (sample, score, pair, train against the base) make iterations
# 1..N. Their directories are exactly the models' checkpoints of config/demo.yaml, so
# check_checkpoint depends on these rules and `snakemake -n` shows the whole DAG from a clean clone.

from plmdiff.demo.settings import check_demo_config, demo_sampling, round_settings

if config["demo"]["enabled"]:
    try:
        DEMO_FAMILY = str(demo_family_fasta())
        check_demo_config(config)
    except PlmdiffError as exc:
        sys.exit(f"plmdiff: {exc}")

    rule demo_train_base:
        input:
            family=DEMO_FAMILY,
        output:
            checkpoint=directory(demo_checkpoint(0)),
            report=demo_base_report(),
        log:
            "logs/demo/train_base.log",
        benchmark:
            "benchmarks/demo_train_base/base.tsv"
        conda:
            "../envs/torch.yaml"
        threads: 2
        resources:
            mem_mb=mem_mb(4000),
            runtime=runtime_min(60),
        params:
            base=config["demo"]["base"],
            seed=config["demo"]["dpo"]["seed"],
            prompt=config["prompt"],
            sampling=demo_sampling(config["sampling"]),
        script:
            "../workflow_scripts/demo_train_base.py"

    rule demo_dpo_round:
        input:
            previous=lambda wildcards: demo_checkpoint(int(wildcards.iteration) - 1),
            reference=demo_checkpoint(0),
            base_report=demo_base_report(),
        output:
            checkpoint=directory(demo_checkpoint("{iteration}")),
            samples=demo_round_file("{iteration}", "samples.tsv"),
            training=demo_round_file("{iteration}", "training.json"),
        log:
            "logs/demo/dpo_round_{iteration}.log",
        benchmark:
            "benchmarks/demo_dpo_round/{iteration}.tsv"
        wildcard_constraints:
            iteration=wc.alternatives(map(str, DEMO_ROUNDS)),
        conda:
            "../envs/torch.yaml"
        # Sampling and DPO steps of a 0.4M-parameter model are too small for a second thread
        # to pay; one thread lets Snakemake run another job beside it.
        threads: 1
        resources:
            mem_mb=mem_mb(4000),
            runtime=runtime_min(60),
        params:
            dpo=round_settings(config["demo"]["dpo"]),
            prompt=config["prompt"],
            sampling=demo_sampling(config["sampling"]),
        script:
            "../workflow_scripts/demo_dpo_round.py"

    rule demo_summary:
        input:
            checkpoints=[demo_checkpoint(i) for i in [0, *DEMO_ROUNDS]],
            base_report=demo_base_report(),
        output:
            tsv=paths.demo_summary("tsv"),
            png=report(
                paths.demo_summary("png"),
                caption="../report/demo_summary.rst",
                category="Demo",
            ),
            samples=demo_file("summary_samples.tsv"),
        log:
            "logs/demo/summary.log",
        benchmark:
            "benchmarks/demo_summary/summary.tsv"
        conda:
            "../envs/torch.yaml"
        threads: 1
        resources:
            mem_mb=mem_mb(4000),
            runtime=runtime_min(30),
        params:
            dpo=config["demo"]["dpo"],
            prompt=config["prompt"],
            sampling=demo_sampling(config["sampling"]),
        script:
            "../workflow_scripts/demo_summary.py"
