# Helpers shared by every stage: validated config, names, paths, input functions, targets.
# Paths are the data contract of design.md; each stage's rules use these helpers, never literals.

import os
import sys
from pathlib import Path

WORKFLOW_ROOT = Path(workflow.basedir)
SRC = WORKFLOW_ROOT / "src"
# Rule scripts import the plmdiff library from this checkout, also inside conda envs that do
# not install it; jobs on cluster nodes re-read this file, so the path travels with them.
sys.path.insert(0, str(SRC))
# (The workflow sets this variable for its jobs; it needs none from the user.)
os.environ.update(
    PYTHONPATH=os.pathsep.join(p for p in (str(SRC), os.getenv("PYTHONPATH")) if p)
)

from plmdiff import workflow_config as wc  # noqa: E402
from plmdiff.errors import PlmdiffError  # noqa: E402

try:
    _validated = wc.validate_workflow_config(
        config, WORKFLOW_ROOT / "config" / "schema.yaml", workflow.configfiles
    )
except PlmdiffError as exc:
    # One line, no traceback: the message names the key or path and what is accepted.
    sys.exit(f"plmdiff: {exc}")
config.clear()
config.update(_validated)

STUDY = wc.Study.from_config(config)
MODELS = STUDY.models
BASE = STUDY.base
ROUNDS = STUDY.rounds
EMBEDDERS = STUDY.embedders
SAE_LAYERS = STUDY.sae_layers
SAE_SCHEMES = STUDY.sae_schemes
SAE_FAMILIES = STUDY.sae_families
FOLDS = list(range(config["sae"]["kfold"]))
POOLINGS = config["activations"]["pooling"]
SAMPLE_SHARDS = [f"{s:03d}" for s in range(config["sampling"]["shards"])]
EXTRACT_SHARDS = [f"{s:05d}" for s in range(config["activations"]["shards"])]
TOKEN_LAYERS = [f"{layer:02d}" for layer in config["activations"]["token_layers"]]


wildcard_constraints:
    model=wc.alternatives(MODELS),
    embedder=wc.alternatives(EMBEDDERS),
    shard=r"\d{3}",
    part=r"\d{5}",
    layer=r"\d{2}",
    scheme=wc.alternatives(SAE_SCHEMES),
    family=wc.alternatives(SAE_FAMILIES),
    fold=r"\d+",
    pooling="last|mean",
    iteration=r"\d+",


# ----------------------------------------------------------------------------- resources


def mem_mb(base_mb):
    """Memory that doubles with each attempt, so a retried job asks SLURM for more."""
    return lambda wildcards, attempt: base_mb * 2 ** (attempt - 1)


def runtime_min(base_min):
    """Runtime (minutes) that doubles with each attempt."""
    return lambda wildcards, attempt: base_min * 2 ** (attempt - 1)


# ----------------------------------------------------------------------------- checkpoints


def checkpoint_record(model):
    return f"results/checkpoints/{model}.json"


def checkpoint_inputs(wildcards):
    """The files that define a checkpoint, or the demo rule's output directory."""
    return STUDY.checkpoint_inputs(wildcards.model)


def embedder_model(embedder, model):
    """The model whose checkpoint embeds `model`'s sequences for `embedder`."""
    return model if embedder == "self" else embedder


# ----------------------------------------------------------------------------- sampling


def sample_shard(model, shard):
    return f"results/samples/{model}/shard_{shard}.parquet"


def fasta(model):
    return f"results/fasta/{model}.fasta"


def fasta_stats(model):
    return f"results/fasta/{model}.stats.json"


# ----------------------------------------------------------------------------- activations


def pooled(embedder, model):
    return f"results/activations/{embedder}/{model}.pooled.parquet"


def pooled_part(embedder, model, part):
    return f"results/activations/{embedder}/{model}/pooled/part-{part}.parquet"


def token_part(embedder, model, layer, part):
    return f"results/activations/{embedder}/{model}/layer_{layer}/part-{part}.parquet"


def token_parts(embedder, model, layer):
    return [token_part(embedder, model, layer, p) for p in EXTRACT_SHARDS]


def all_pooled(embedder):
    return [pooled(embedder, m) for m in MODELS]


# ----------------------------------------------------------------------------- probes, sanity


def probe_dir(embedder, pooling):
    return f"results/probes/{embedder}/{pooling}"


def sanity_dir(embedder):
    return f"results/sanity/{embedder}"


# ----------------------------------------------------------------------------- SAEs, diffs


def sae_dir(embedder, layer, scheme, fold):
    return f"results/saes/{embedder}/layer_{layer}/{scheme}/fold_{fold}"


def feature_stats(embedder, layer, scheme, fold):
    return f"results/features/{embedder}/layer_{layer}/{scheme}/fold_{fold}.parquet"


def diff_dir(embedder, layer, family):
    return f"results/diff/{embedder}/layer_{layer}/{family}"


def kl_table(model):
    return f"results/kl/{model}.parquet"


# ----------------------------------------------------------------------------- targets


def has_rule(name):
    return any(rule.name == name for rule in workflow.rules)


def all_targets():
    """Final outputs of every stage that exists; a stage without rules is simply absent."""
    targets = [checkpoint_record(m) for m in MODELS]
    if config["demo"]["enabled"] and has_rule("demo_summary"):
        targets.append("results/demo/dpo_summary.tsv")
    if has_rule("filter_samples"):
        targets += [fasta(m) for m in MODELS]
    if has_rule("sampling_summary"):
        targets.append("results/sampling/summary.tsv")
    if has_rule("gather_pooled"):
        targets += [pooled(e, m) for e in EMBEDDERS for m in STUDY.embedded_models(e)]
    if has_rule("probes"):
        targets += [
            f"{probe_dir(e, p)}/accuracy.tsv" for e in EMBEDDERS for p in POOLINGS
        ]
    if has_rule("sanity"):
        targets += [f"{sanity_dir(e)}/variance.tsv" for e in EMBEDDERS]
    if has_rule("diff") and SAE_LAYERS:
        targets += [
            f"{diff_dir(e, layer, fam)}/features.tsv"
            for e in EMBEDDERS
            for layer in SAE_LAYERS
            for fam in SAE_FAMILIES
        ]
    if has_rule("kl"):
        targets.append("results/kl/summary.tsv")
    if has_rule("report"):
        targets.append("results/report/index.html")
    return targets
