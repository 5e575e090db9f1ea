# Stage: report. One local job gathers the final outputs of every stage into a standalone HTML
# page (figures embedded) that opens without Snakemake; `snakemake --report` builds the
# Snakemake report from the same figures and captions.


include: "report_items.smk"


rule report:
    input:
        [item["path"] for item in report_items()],
    output:
        report(
            paths.report_index(),
            caption="../report/report_index.rst",
            category="Report",
            labels={"page": "standalone report"},
        ),
    log:
        "logs/report.log",
    localrule: True
    conda:
        "../envs/report.yaml"
    resources:
        mem_mb=mem_mb(4000),
        runtime=runtime_min(15),
    params:
        report_items=report_items(),
    script:
        "../workflow_scripts/report.py"
