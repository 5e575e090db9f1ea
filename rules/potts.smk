# Stage: Potts models per round (potts.enabled). potts_profile builds one family HMM (from
# potts.family or the base model's kept samples), potts_align aligns every set to it (match
# columns, coverage filter), potts_fit fits a pseudo-likelihood Potts model and its bootstrap
# refits per set (one GPU job per set), potts_compare compares each round with the base and
# potts_summary gathers coverage, fits, changes and energies.

if POTTS["enabled"]:

    rule potts_profile:
        input:
            source=potts_profile_source(),
        output:
            hmm=paths.potts_profile("hmm"),
            info=paths.potts_profile("json"),
        log:
            "logs/potts/profile.log",
        benchmark:
            "benchmarks/potts_profile/profile.tsv"
        conda:
            "../envs/torch.yaml"
        threads: 1
        resources:
            mem_mb=mem_mb(4000),
            runtime=runtime_min(30),
        params:
            from_family=POTTS["family"] is not None,
            potts=potts_keys("profile"),
        script:
            "../workflow_scripts/potts_profile.py"

    rule potts_align:
        input:
            profile=paths.potts_profile("hmm"),
            source=potts_set_source,
        output:
            table=paths.potts_alignment("{potts_set}"),
            coverage=paths.potts_coverage("{potts_set}"),
        log:
            "logs/potts/align/{potts_set}.log",
        benchmark:
            "benchmarks/potts_align/{potts_set}.tsv"
        conda:
            "../envs/torch.yaml"
        threads: 1
        resources:
            mem_mb=mem_mb(4000),
            runtime=runtime_min(30),
        params:
            potts=potts_keys("align"),
        script:
            "../workflow_scripts/potts_align.py"

    rule potts_fit:
        input:
            table=paths.potts_alignment("{potts_set}"),
            profile_info=paths.potts_profile("json"),
        output:
            fit=paths.potts_fit("{potts_set}"),
            info=paths.potts_fit_info("{potts_set}"),
        log:
            "logs/potts/fit/{potts_set}.log",
        benchmark:
            "benchmarks/potts_fit/{potts_set}.tsv"
        conda:
            "../envs/torch.yaml"
        threads: 4
        resources:
            mem_mb=potts_fit_mem_mb,
            runtime=runtime_min(120),
            gpu=1,
        params:
            potts=potts_keys("fit"),
        script:
            "../workflow_scripts/potts_fit.py"

    rule potts_compare:
        input:
            base=paths.potts_fit(BASE),
            other=paths.potts_fit("{model}"),
        output:
            sites=report(
                paths.potts_compare_file("{model}", "sites.tsv"),
                caption="../report/potts_sites.rst",
                category="Potts models",
                subcategory="{model}",
                labels={"model": "{model}", "table": "field shifts"},
            ),
            pairs=paths.potts_compare_file("{model}", "pairs.tsv"),
            png=report(
                paths.potts_compare_file("{model}", "couplings.png"),
                caption="../report/potts_couplings.rst",
                category="Potts models",
                subcategory="{model}",
                labels={"model": "{model}", "figure": "coupling changes"},
            ),
            svg=paths.potts_compare_file("{model}", "couplings.svg"),
        log:
            "logs/potts/compare/{model}.log",
        benchmark:
            "benchmarks/potts_compare/{model}.tsv"
        wildcard_constraints:
            model=wc.alternatives(ROUNDS),
        conda:
            "../envs/torch.yaml"
        threads: 1
        resources:
            mem_mb=potts_compare_mem_mb,
            runtime=runtime_min(15),
        params:
            potts=potts_keys("compare"),
        script:
            "../workflow_scripts/potts_compare.py"

    rule potts_summary:
        input:
            alignments=[paths.potts_alignment(s) for s in POTTS_SETS],
            coverages=[paths.potts_coverage(s) for s in POTTS_SETS],
            fit_infos=[paths.potts_fit_info(s) for s in POTTS_SETS],
            scorer_fits=[paths.potts_fit(s) for s in POTTS_SCORERS],
            sites=[paths.potts_compare_file(m, "sites.tsv") for m in ROUNDS],
            pairs=[paths.potts_compare_file(m, "pairs.tsv") for m in ROUNDS],
        output:
            coverage=report(
                paths.potts_summary_file("coverage.tsv"),
                caption="../report/potts_coverage.rst",
                category="Potts models",
                labels={"table": "alignment coverage"},
            ),
            fits=report(
                paths.potts_summary_file("fits.tsv"),
                caption="../report/potts_fits.rst",
                category="Potts models",
                labels={"table": "fits"},
            ),
            changes=report(
                paths.potts_summary_file("changes.tsv"),
                caption="../report/potts_changes.rst",
                category="Potts models",
                labels={"table": "changes per round"},
            ),
            energy=report(
                paths.potts_summary_file("energy.tsv"),
                caption="../report/potts_energy_table.rst",
                category="Potts models",
                labels={"table": "energy band"},
            ),
            energies=paths.potts_summary_file("energies.parquet"),
            png=report(
                paths.potts_summary_file("energy.png"),
                caption="../report/potts_energy.rst",
                category="Potts models",
                labels={"figure": "energies"},
            ),
            svg=paths.potts_summary_file("energy.svg"),
        log:
            "logs/potts/summary.log",
        benchmark:
            "benchmarks/potts_summary/summary.tsv"
        localrule: True
        conda:
            "../envs/torch.yaml"
        resources:
            mem_mb=mem_mb(4000),
            runtime=runtime_min(15),
        params:
            sets=POTTS_SETS,
            rounds=ROUNDS,
            scorers=POTTS_SCORERS,
            reference=POTTS_REFERENCE,
        script:
            "../workflow_scripts/potts_summary.py"
