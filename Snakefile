# plmdiff: how a protein language model changes over rounds of DPO alignment.
# Stages live in rules/*.smk, helpers in rules/common.smk, logic in src/plmdiff/.
import os

from snakemake.utils import min_version

min_version("9.0")


# The demo's config is the default. A study's --configfile replaces it rather than being merged
# into it (Snakemake's default), so no demo key leaks into a real study.
# It is found next to this Snakefile, whatever --directory is.
if not workflow.overwrite_configfiles:

    configfile: os.path.join(workflow.basedir, "config", "demo.yaml")


report: "report/workflow.rst"


include: "rules/common.smk"
include: "rules/demo.smk"
include: "rules/checkpoints.smk"
include: "rules/sampling.smk"
include: "rules/activations.smk"
include: "rules/probes.smk"
include: "rules/sae.smk"
include: "rules/diff.smk"
include: "rules/model_diff.smk"
include: "rules/potts.smk"
include: "rules/report.smk"


rule all:
    default_target: True
    input:
        all_targets(),
    localrule: True
