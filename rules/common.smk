# Helpers shared by every stage: validated config, wildcard values, input functions, targets.
# Every path comes from plmdiff.config.paths (the data contract of ARCHITECTURE.md); the rules
# call those functions, never literals.

import json
import math
import os
import sys
from itertools import product
from pathlib import Path

# The directory of this workflow's Snakefile, found from this file (rules/..) rather than from
# workflow.basedir: when plmdiff is used as a Snakemake `module`, basedir is the importing
# workflow's directory, and config/schema.yaml, src/ and resources/ would be looked up there.
WORKFLOW_ROOT = Path(str(workflow.current_basedir)).resolve().parent
SRC = WORKFLOW_ROOT / "src"
# Rule scripts import the plmdiff library from this checkout, also inside conda envs that do
# not install it; jobs on cluster nodes re-read this file, so the path travels with them.
sys.path.insert(0, str(SRC))
# (The workflow sets this variable for its jobs; it needs none from the user.)
os.environ.update(
    PYTHONPATH=os.pathsep.join(p for p in (str(SRC), os.getenv("PYTHONPATH")) if p)
)

from plmdiff.config import paths  # noqa: E402
from plmdiff.config import study as wc  # noqa: E402
from plmdiff.config.paths import (  # noqa: E402
    checkpoint_record,
    clusters_table,
    demo_base_report,
    demo_file,
    demo_round_file,
    diff_dir,
    diff_file,
    fasta,
    fasta_stats,
    feature_stats,
    feature_stats_files,
    FEATURE_STATS_SUFFIXES,
    kl_table,
    pooled,
    pooled_part,
    probe_file,
    sae_curves,
    sae_dir,
    sae_metrics,
    sample_shard,
    sanity_file,
    token_layer_dir,
    token_part,
)
from plmdiff.config.schema import SELF_EMBEDDER  # noqa: E402
from plmdiff.core.errors import PlmdiffError  # noqa: E402
from plmdiff.core.fasta import resolve_fasta_sources  # noqa: E402
from plmdiff.demo.settings import resolve_family_fasta  # noqa: E402
from plmdiff.sae.imports import import_source_files, resolve_import_path  # noqa: E402

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
# The models compared with the base (KL of the base against itself is 0 by definition).
ROUNDS = [m for m in MODELS if m != BASE]
EMBEDDERS = STUDY.embedders
# Probes and sanity checks compare rounds embedded by one model: with `self` each round's own
# weights embed its own samples, and separating them would measure the models, not the rounds.
ROUND_EMBEDDERS = [e for e in EMBEDDERS if e != SELF_EMBEDDER]
SAE_LAYERS = STUDY.sae_layers
SAE_SCHEMES = STUDY.sae_schemes
SAE_FAMILIES = STUDY.sae_families
FEATURE_STATS_KEYS = list(FEATURE_STATS_SUFFIXES)
FOLDS = list(range(config["sae"]["kfold"]))
# (layer, fold) of every SAE replica of one (embedder, scheme): what one feature_stats job reads.
SAE_REPLICAS = [(layer, fold) for layer in SAE_LAYERS for fold in FOLDS]
POOLINGS = config["activations"]["pooling"]
SAMPLE_SHARDS = paths.sample_shard_ids(config["sampling"]["shards"])
EXTRACT_SHARDS = paths.extract_part_ids(config["activations"]["shards"])
TOKEN_LAYERS = [
    paths.layer_id(layer) for layer in config["activations"]["token_layers"]
]
POTTS = config["potts"]
# Potts sets: every model, and the natural family when potts.family is given; energies are
# scored under the base model (and the family's), the band taken from the family (else the base).
_POTTS_FAMILY = [paths.FAMILY_SET] if POTTS["family"] else []
POTTS_SETS = MODELS + _POTTS_FAMILY
POTTS_SCORERS = [BASE] + _POTTS_FAMILY
POTTS_REFERENCE = paths.FAMILY_SET if POTTS["family"] else BASE


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
    potts_set=wc.alternatives(POTTS_SETS),


# ----------------------------------------------------------------------------- resources
# Every value doubles with each attempt, so a job killed for memory or time comes back asking
# SLURM for more. The model rules' needs follow the checkpoint (its record's parameter count
# and width, read when the job is about to run: `-n` shows <TBD> before the record exists) and
# the config. The rates are deliberately conservative (a fraction of one A100); the retries
# cover a slower GPU.

MB = 1_000_000
HOST_MB = 2000  # Python, torch, the CUDA context and the libraries of one job
LM_FLOPS = 5e11  # sustained FLOP/s of batched inference (generation is memory-bound)
SAE_FLOPS = 5e12  # sustained FLOP/s of SAE training (dense encoder, fp32)
WRITE_BYTES_PER_S = 50 * MB  # zstd Parquet writing of token activations
REPLICA_EVAL_MIN = 10  # per SAE replica: held-out metrics and the spliced LM loss


def attempt_scaled(value, attempt):
    """An integer resource that doubles with each attempt."""
    return int(math.ceil(value)) * 2 ** (attempt - 1)


def mem_mb(base_mb):
    """Memory that doubles with each attempt, so a retried job asks SLURM for more."""
    return lambda wildcards, attempt: attempt_scaled(base_mb, attempt)


def runtime_min(base_min):
    """Runtime (minutes) that doubles with each attempt."""
    return lambda wildcards, attempt: attempt_scaled(base_min, attempt)


def record_shape(path):
    """(parameters, d_model) from a checkpoint record; FileNotFoundError while it is missing,
    which Snakemake turns into <TBD> until check_checkpoint has written it."""
    record = json.loads(Path(path).read_text())
    return int(record["n_parameters"]), int(record["d_model"])


def model_host_mb(parameters):
    """Host memory of loading a model: float32 weights plus the state dict they come from."""
    return parameters * 8 / MB


def checkpoint_mem_mb(wildcards, input, attempt):
    """check_checkpoint reads every tensor once and loads the model in float32: up to 3x the
    weight files (float16 files double in float32)."""
    return attempt_scaled(HOST_MB + 3 * input.size_mb, attempt)


def checkpoint_runtime_min(wildcards, input, attempt):
    """Reading, hashing and loading the weight files, at 200 MB a minute."""
    return attempt_scaled(15 + input.size_mb / 200, attempt)


def sample_mem_mb(wildcards, input, attempt):
    parameters, _ = record_shape(input.record)
    return attempt_scaled(HOST_MB + model_host_mb(parameters) + 2000, attempt)


def sample_runtime_min(wildcards, input, attempt):
    """2 FLOPs per parameter and generated token, for every token a shard may generate."""
    parameters, _ = record_shape(input.record)
    sampling = config["sampling"]
    tokens = (
        math.ceil(sampling["n_sequences"] / sampling["shards"]) * sampling["max_length"]
    )
    return attempt_scaled(10 + 2 * parameters * tokens / LM_FLOPS / 60, attempt)


def extract_mem_mb(wildcards, input, attempt):
    """The model, plus one token batch of every layer in float32 (twice: overlapped writing)."""
    parameters, d_model = record_shape(input.record)
    n_layers = json.loads(Path(input.record).read_text())["n_layers"]
    batch = config["activations"]["batch_tokens"] * (n_layers + 1) * d_model * 4 * 2
    return attempt_scaled(HOST_MB + model_host_mb(parameters) + batch / MB, attempt)


def extract_runtime_min(wildcards, input, attempt):
    """A forward pass over this part's residues (the FASTA's bytes bound them), plus writing
    their float16 rows of every token layer."""
    parameters, d_model = record_shape(input.record)
    residues = input.size_mb * MB / config["activations"]["shards"]
    written = residues * len(TOKEN_LAYERS) * d_model * 2
    seconds = 2 * parameters * residues / LM_FLOPS + written / WRITE_BYTES_PER_S
    return attempt_scaled(10 + seconds / 60, attempt)


def sae_width(d_in):
    sae = config["sae"]
    return sae["d_sae"] or sae["expansion"] * d_in


def sae_tokens(scheme):
    sae = config["sae"]
    return (
        sae["training_tokens"]
        if scheme == paths.BASE_SCHEME
        else sae["finetune_tokens"]
    )


def train_sae_mem_mb(wildcards, input, attempt):
    """The shuffle buffer, the SAE with Adam's two moments, and the largest embedding model
    (spliced LM loss)."""
    shapes = [record_shape(r) for r in input.records]
    parameters = max(p for p, _ in shapes)
    d_in = shapes[0][1]
    buffer = config["sae"]["shuffle_buffer"] * d_in * 4
    sae = 2 * d_in * sae_width(d_in) * 4 * 4
    return attempt_scaled(
        HOST_MB + (buffer + sae) / MB + model_host_mb(parameters), attempt
    )


def train_sae_runtime_min(wildcards, input, attempt):
    """Every fold replica: 6 FLOPs per token, input and feature (encoder and decoder, forward
    and backward), plus its evaluation."""
    _, d_in = record_shape(input.records[0])
    flops = 6 * d_in * sae_width(d_in) * sae_tokens(wildcards.scheme)
    per_replica = flops / SAE_FLOPS / 60 + REPLICA_EVAL_MIN
    return attempt_scaled(10 + len(FOLDS) * per_replica, attempt)


def kl_mem_mb(wildcards, input, attempt):
    """The model and the base model."""
    parameters, _ = record_shape(input.record)
    base, _ = record_shape(input.base_record)
    return attempt_scaled(
        HOST_MB + model_host_mb(parameters) + model_host_mb(base), attempt
    )


def potts_fit_mem_mb(wildcards, input, attempt):
    """The Lq x Lq couplings (L from the profile) held about 30 times: parameters, gradient,
    symmetrised copy and L-BFGS's 10-step history; plus one-hot rows for the weights."""
    columns = json.loads(Path(input.profile_info).read_text())["match_columns"]
    if POTTS["columns"]:
        columns = POTTS["columns"][1] - POTTS["columns"][0] + 1
    couplings = (columns * 21) ** 2 * 4
    return attempt_scaled(HOST_MB + 30 * couplings / MB + 3 * input.size_mb, attempt)


def potts_compare_mem_mb(wildcards, input, attempt):
    """Both fits (couplings and bootstrap scores) a few times over."""
    return attempt_scaled(HOST_MB + 4 * input.size_mb, attempt)


# ----------------------------------------------------------------------------- checkpoints


def checkpoint_inputs(wildcards):
    """The files that define a checkpoint, or the demo rule's output directory."""
    return STUDY.checkpoint_inputs(wildcards.model)


def embedder_model(embedder, model):
    """The model whose checkpoint embeds `model`'s sequences for `embedder`."""
    return model if embedder == SELF_EMBEDDER else embedder


# ----------------------------------------------------------------------------- demo

DEMO_ROUNDS = list(range(1, config["demo"]["dpo"]["rounds"] + 1))


def demo_checkpoint(iteration):
    """output_iteration{i}/ of the demo (0: base); the same string as STUDY.demo_dirs."""
    return paths.demo_checkpoint(config["demo"]["checkpoint_dir"], iteration)


def demo_family_fasta():
    """demo.family_fasta, looked up in the working directory, then the workflow's directory."""
    return resolve_family_fasta(
        config["demo"]["family_fasta"], Path.cwd(), WORKFLOW_ROOT
    )


# ----------------------------------------------------------------------------- sampling


def sample_shards(model):
    """The model's sample shards: sampling.shards of them, or the one shard its own FASTA
    (models[].fasta) becomes."""
    if STUDY.given_fasta(model) is not None:
        return [sample_shard(model, paths.sample_shard_ids(1)[0])]
    return [sample_shard(model, s) for s in SAMPLE_SHARDS]


def given_fasta_files(wildcards):
    """The files models[].fasta names for this model (a file or a glob), resolved now."""
    spec = STUDY.given_fasta(wildcards.model)
    return [
        str(f) for f in resolve_fasta_sources(spec, f"models[{wildcards.model}].fasta")
    ]


def base_sample_shards(wildcards):
    """The base model's shards when the length window is taken from its samples, else none."""
    if config["filter"]["relative_to_base"] is None:
        return []
    return sample_shards(BASE)


# ----------------------------------------------------------------------------- activations


def token_parts(embedder, model, layer):
    return [token_part(embedder, model, layer, p) for p in EXTRACT_SHARDS]


def all_pooled(embedder):
    return [pooled(embedder, m) for m in MODELS]


# ----------------------------------------------------------------------------- probes, sanity


def sanity_tsne(embedder):
    """The t-SNE grid, named after the pooling it shows."""
    return paths.sanity_tsne(embedder, config["sanity"]["pooling"])


# ----------------------------------------------------------------------------- SAEs, diffs


def sae_token_parts(wildcards):
    """Token part files of this layer of every model that trains the scheme."""
    return [
        part
        for m in STUDY.scheme_models(wildcards.scheme)
        for part in token_parts(wildcards.embedder, m, wildcards.layer)
    ]


def sae_checkpoint_records(wildcards):
    """model -> record of the checkpoint that embedded it (spliced LM loss)."""
    return {
        m: checkpoint_record(embedder_model(wildcards.embedder, m))
        for m in STUDY.scheme_models(wildcards.scheme)
    }


def sae_base_input(wildcards):
    """The base SAE of every fold, in fold order: replica f of a non-base scheme fine-tunes
    the base SAE of fold f."""
    if wildcards.scheme == paths.BASE_SCHEME:
        return []
    return [
        sae_dir(wildcards.embedder, wildcards.layer, paths.BASE_SCHEME, f)
        for f in FOLDS
    ]


def sae_import_path(wildcards):
    """sae.base.import for this layer, or None (only the base scheme imports)."""
    template = config["sae"]["base"]["import"]
    if wildcards.scheme != paths.BASE_SCHEME or not template:
        return None
    return str(resolve_import_path(template, int(wildcards.layer)))


def sae_import_inputs(wildcards):
    path = sae_import_path(wildcards)
    if path is None:
        return []
    return [str(p) for p in import_source_files(path)]


def diff_keys(wildcards):
    """(scheme, fold) pairs a diff family reads, in the order of its inputs."""
    return [(s, f) for s in STUDY.family_schemes(wildcards.family) for f in FOLDS]


def diff_union_keys(wildcards):
    """(ft scheme, fold) pairs whose union the pooled SAE is compared with (pooled family):
    the reference fold only, since the union of all rounds' dictionaries is large."""
    if wildcards.family != paths.POOLED_FAMILY:
        return []
    return [(s, FOLDS[0]) for s in SAE_SCHEMES if paths.is_finetune_scheme(s)]


# ----------------------------------------------------------------------------- potts

# The keys of the potts section that change each rule's output (its rerun triggers); the rule
# scripts take the rest from the config.
POTTS_RULE_KEYS = {
    "profile": ["family", "profile_iterations", "profile_sequences", "seed"],
    "align": ["columns", "min_coverage", "min_sequences"],
    "fit": [
        "identity",
        "lambda_h",
        "lambda_j",
        "max_iterations",
        "bootstrap",
        "max_sequences",
        "min_neff_per_column",
        "seed",
    ],
    "compare": ["fdr"],
}


def potts_keys(rule):
    return {k: POTTS[k] for k in POTTS_RULE_KEYS[rule]}


def potts_profile_source():
    """potts.family when given, else the base model's kept FASTA."""
    return POTTS["family"] or fasta(BASE)


def potts_set_source(wildcards):
    if wildcards.potts_set == paths.FAMILY_SET:
        return POTTS["family"]
    return fasta(wildcards.potts_set)


# ----------------------------------------------------------------------------- targets


def workflow_rule_name(name):
    """The name of `name` in the running workflow (prefixed where plmdiff is imported as a
    Snakemake module with `use rule * from plmdiff as plmdiff_*`)."""
    return workflow.modifier.modify_rulename(name)


def has_rule(name):
    full = workflow_rule_name(name)
    return any(rule.name == full for rule in workflow.rules)


def all_targets():
    """The final outputs of every stage (the demo's summary only when the demo runs)."""
    targets = [checkpoint_record(m) for m in MODELS]
    if config["demo"]["enabled"]:
        targets.append(paths.demo_summary("tsv"))
    targets += [fasta(m) for m in MODELS]
    targets.append(paths.sampling_summary("tsv"))
    targets += [pooled(e, m) for e in EMBEDDERS for m in STUDY.embedded_models(e)]
    targets += [
        probe_file(e, p, "accuracy.tsv") for e in ROUND_EMBEDDERS for p in POOLINGS
    ]
    targets += [sanity_file(e, "variance.tsv") for e in ROUND_EMBEDDERS]
    targets += [
        diff_file(e, layer, fam, "features.tsv")
        for e in EMBEDDERS
        for layer in SAE_LAYERS
        for fam in SAE_FAMILIES
    ]
    targets.append(paths.kl_summary())
    if POTTS["enabled"]:
        targets.append(paths.potts_summary_file("changes.tsv"))
    targets.append(paths.report_index())
    return targets
