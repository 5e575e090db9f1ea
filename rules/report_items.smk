# The report stage's Snakefile helpers (included by rules/report.smk): which outputs of which
# rules the standalone report shows. They read Snakemake's `workflow` and `rules` objects, so
# they live in Snakefile code; in a file of their own, since `snakemake --lint` wants rules and
# functions apart.

from itertools import product

# (report section, rule, wildcard values): the rules whose outputs the report shows. A rule that
# does not exist in this workflow (stage not built, demo disabled) is simply left out.
REPORT_RULES = [
    ("overview", "check_checkpoint", {"model": MODELS}),
    ("sampling", "sampling_summary", {}),
    ("demo", "demo_summary", {}),
    ("probes", "probes", {"embedder": ROUND_EMBEDDERS, "pooling": POOLINGS}),
    ("sanity", "sanity", {"embedder": ROUND_EMBEDDERS}),
    (
        "sae",
        "train_sae",
        {
            "embedder": EMBEDDERS,
            "layer": SAE_LAYERS,
            "scheme": SAE_SCHEMES,
        },
    ),
    (
        "diff",
        "diff",
        {"embedder": EMBEDDERS, "layer": SAE_LAYERS, "family": SAE_FAMILIES},
    ),
    ("kl", "kl_summary", {}),
    ("kl", "kl", {"model": ROUNDS}),
    ("model_diff", "model_diff_profile", {}),
    ("model_diff", "crosscoder", {"layer": MODEL_DIFF_LAYERS}),
    ("model_diff", "model_diff_agreement", {"layer": MODEL_DIFF_LAYERS}),
    ("potts", "potts_summary", {}),
    ("potts", "potts_compare", {"model": ROUNDS}),
]
REPORT_SUFFIXES = (".tsv", ".png", ".json")
# Parquet tables the report reads: the diff's examples, and its full ranking (lead features).
REPORT_PARQUETS = ("examples.parquet", "features.parquet")
# Outputs a report() category sends to another section than their rule's.
REPORT_CATEGORY_SECTIONS = {"Stability": "stability"}


def _report_caption(flags):
    obj = flags.get("report")
    if obj is None or obj.caption is None:
        return None, None
    caption = obj.caption
    path = (
        caption.get_path_or_uri(True)
        if hasattr(caption, "get_path_or_uri")
        else caption
    )
    return str(path), obj.category


def replica_wildcards(name, wc, path):
    """The fold of a train_sae output (one job writes every fold replica of an SAE family)."""
    if name != "train_sae":
        return {}
    for f in FOLDS:
        if path.startswith(sae_dir(wc["embedder"], wc["layer"], wc["scheme"], f) + "."):
            return {"fold": str(f)}
    return {}


def report_items():
    """Every file the standalone report shows: section, path, caption template, wildcards."""
    items = []
    for section, name, values in REPORT_RULES:
        if (
            not has_rule(name)
            or (name == "demo_summary" and not config["demo"]["enabled"])
            or (section == "model_diff" and not MODEL_DIFF_LAYERS)
        ):
            continue
        smk_rule = workflow.get_rule(workflow_rule_name(name))
        names = sorted(smk_rule.wildcard_names)
        if any(not values.get(w) for w in names):
            continue
        combos = product(*[[str(v) for v in values[w]] for w in names])
        patterns = list(getattr(rules, name).output)
        for combo in combos:
            wc = dict(zip(names, combo))
            for pattern, spec in zip(patterns, smk_rule.output):
                if spec.flags.get("directory"):
                    continue
                # str(): a rule's output patterns are Snakemake file objects, which params
                # must not carry (they are pickled into the job's script).
                path = str(pattern).format(**wc)
                if (
                    not path.endswith(REPORT_SUFFIXES)
                    and Path(path).name not in REPORT_PARQUETS
                ):
                    continue
                caption, category = _report_caption(spec.flags)
                items.append(
                    {
                        "stage": REPORT_CATEGORY_SECTIONS.get(category, section),
                        "path": path,
                        "caption": caption,
                        "wildcards": {**wc, **replica_wildcards(name, wc, path)},
                    }
                )
    return items
