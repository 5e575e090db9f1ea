# Checkpoint intake: every downstream rule depends on the record, so a changed checkpoint
# (new fingerprint) reruns exactly its dependants.


rule check_checkpoint:
    input:
        checkpoint_inputs,
    output:
        checkpoint_record("{model}"),
    log:
        "logs/check_checkpoint/{model}.log",
    conda:
        "../envs/torch.yaml"
    resources:
        mem_mb=checkpoint_mem_mb,
        runtime=checkpoint_runtime_min,
    params:
        checkpoint=lambda wildcards: STUDY.checkpoint(wildcards.model),
        prompt=config["prompt"],
    script:
        "../workflow_scripts/check_checkpoint.py"
