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
from plmdiff.config.schema import SELF_EMBEDDER, embeds_every_round  # noqa: E402
from plmdiff.core.errors import PlmdiffError  # noqa: E402
from plmdiff.core.fasta import resolve_fasta_sources  # noqa: E402
from plmdiff.demo.settings import resolve_family_fasta  # noqa: E402
from plmdiff.sae.sources import import_source_files, resolve_import_path  # noqa: E402

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
# Probes and sanity checks compare rounds embedded by one model.
ROUND_EMBEDDERS = [e for e in EMBEDDERS if embeds_every_round(e)]
SAE_LAYERS = STUDY.sae_layers
SAE_SCHEMES = STUDY.sae_schemes
SAE_FAMILIES = STUDY.sae_families
FEATURE_STATS_KEYS = list(FEATURE_STATS_SUFFIXES)
# What the extraction rules embed: every model's samples and, when sae.base.sequences is set,
# the base SAE's extra sequences (paths.SAE_BASE_SOURCE, token parts only).
TOKEN_SOURCES = MODELS + ([paths.SAE_BASE_SOURCE] if STUDY.sae_base_sequences else [])
FOLDS = list(range(config["sae"]["kfold"]))
POOLINGS = config["activations"]["pooling"]
SAMPLE_SHARDS = paths.sample_shard_ids(config["sampling"]["shards"])
EXTRACT_SHARDS = paths.extract_part_ids(config["activations"]["shards"])
TOKEN_LAYERS = [
    paths.layer_id(layer) for layer in config["activations"]["token_layers"]
]
# Groups (`group:`; active on a cluster only): the jobs of one group are one SLURM submission.
# The pooled and token jobs of one extraction part share the embedder's load and input; an SAE
# family's training and its feature statistics run back to back. Names cannot contain '.', so
# the ids are unique.
EXTRACT_GROUP = "extract.{embedder}.{model}.{part}"
SAE_GROUP = "sae.{embedder}.{layer}.{scheme}"

# model_diff: layers embedded token by token by every model ([] when the stage is off).
MODEL_DIFF_LAYERS = STUDY.model_diff_layers
MODEL_DIFF_SHARDS = paths.extract_part_ids(config["model_diff"]["shards"])

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
    """The model, plus one token batch in float32, twice (overlapped writing): a token job holds
    one layer's rows, a pooled job far less (one vector per sequence and layer)."""
    parameters, d_model = record_shape(input.record)
    batch = config["activations"]["batch_tokens"] * d_model * 4 * 2
    return attempt_scaled(HOST_MB + model_host_mb(parameters) + batch / MB, attempt)


def part_residues(input):
    """The residues of one extraction part (the FASTA's bytes bound them)."""
    return input.size_mb * MB / config["activations"]["shards"]


def extract_runtime_min(wildcards, input, attempt):
    """A forward pass over this part's residues through every block."""
    parameters, _ = record_shape(input.record)
    seconds = 2 * parameters * part_residues(input) / LM_FLOPS
    return attempt_scaled(10 + seconds / 60, attempt)


def extract_tokens_runtime_min(wildcards, input, attempt):
    """The forward pass up to the layer (its share of the blocks), plus writing its float16 rows."""
    parameters, d_model = record_shape(input.record)
    n_layers = json.loads(Path(input.record).read_text())["n_layers"]
    residues = part_residues(input)
    depth = int(wildcards.layer) / max(n_layers, 1)
    seconds = (
        2 * parameters * residues * depth / LM_FLOPS
        + residues * d_model * 2 / WRITE_BYTES_PER_S
    )
    return attempt_scaled(10 + seconds / 60, attempt)


def model_diff_extract_runtime_min(wildcards, input, attempt):
    """extract_runtime_min for one part of the shared sequences at model_diff's layers."""
    parameters, d_model = record_shape(input.record)
    residues = input.size_mb * MB / config["model_diff"]["shards"]
    written = residues * len(MODEL_DIFF_LAYERS) * d_model * 2
    seconds = 2 * parameters * residues / LM_FLOPS + written / WRITE_BYTES_PER_S
    return attempt_scaled(10 + seconds / 60, attempt)


def crosscoder_width(d_model, n_models):
    """Encoder and decoder weights of the layer's crosscoder over n_models."""
    return 2 * n_models * d_model * config["model_diff"]["expansion"] * d_model


def crosscoder_mem_mb(wildcards, input, attempt):
    """The paired shuffle buffer, the crosscoder with Adam's two moments and gradients, and
    the held-out evaluation's per-latent sums."""
    _, d_model = record_shape(input.records[0])
    n = len(MODELS)
    buffer = config["model_diff"]["shuffle_buffer"] * n * d_model * 4
    weights = crosscoder_width(d_model, n) * 4 * 4
    return attempt_scaled(HOST_MB + (buffer + weights) / MB, attempt)


def crosscoder_runtime_min(wildcards, input, attempt):
    """6 FLOPs per token and weight (forward and backward), plus the evaluation."""
    _, d_model = record_shape(input.records[0])
    flops = (
        6
        * crosscoder_width(d_model, len(MODELS))
        * config["model_diff"]["training_tokens"]
    )
    return attempt_scaled(10 + REPLICA_EVAL_MIN + flops / SAE_FLOPS / 60, attempt)


def diff_sae_runtime_min(wildcards, input, attempt):
    """One difference SAE per round, 6 FLOPs per token and weight."""
    _, d_model = record_shape(input.records[0])
    md = config["model_diff"]
    flops = 6 * 2 * d_model * md["diff_expansion"] * d_model * md["training_tokens"]
    per_round = flops / SAE_FLOPS / 60 + REPLICA_EVAL_MIN
    return attempt_scaled(10 + len(ROUNDS) * per_round, attempt)


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
    """The model whose checkpoint embeds `model`'s sequences for `embedder` (sae.base.sequences
    are embedded as the base model's samples)."""
    if embedder != SELF_EMBEDDER:
        return embedder
    return BASE if model == paths.SAE_BASE_SOURCE else model


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
    """Token part files of this layer of every source that trains the scheme."""
    return [
        part
        for m in STUDY.sae_training_sources(wildcards.scheme)
        for part in token_parts(wildcards.embedder, m, wildcards.layer)
    ]


def sae_checkpoint_records(wildcards):
    """source -> record of the checkpoint that embedded it (spliced LM loss)."""
    return {
        m: checkpoint_record(embedder_model(wildcards.embedder, m))
        for m in STUDY.sae_training_sources(wildcards.scheme)
    }


def sae_base_sequence_files(wildcards):
    """The files sae.base.sequences names (a file or a glob), resolved now."""
    return [
        str(f)
        for f in resolve_fasta_sources(STUDY.sae_base_sequences, "sae.base.sequences")
    ]


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


def diff_null_folds(wildcards):
    """Folds of the null fine-tune a family reads: every fold where its SAEs are fine-tuned."""
    if wildcards.family == paths.BASE_FAMILY:
        return []
    return list(FOLDS)


# ----------------------------------------------------------------------------- model diffing


def model_diff_extra_fasta():
    """model_diff.sequences as a list (empty when unset), for an input."""
    extra = config["model_diff"]["sequences"]
    return [] if extra is None else [extra]


# model_diff keys that do not change a rule's outputs: not its rerun triggers (the job still
# gets the whole section, completed from the config by its script).
MODEL_DIFF_NOT_PARAMS = {
    "crosscoder": (
        "diff_expansion",
        "diff_k",
        "match_cosine",
        "position_bins",
        "sequences",
    ),
    "diff_sae": (
        "expansion",
        "k",
        "exclusive_cut",
        "shared_width",
        "nu_max",
        "min_firings",
        "top_latents",
        "top_examples",
        "match_cosine",
        "position_bins",
        "sequences",
    ),
}


def model_diff_params(rule):
    return {
        k: v
        for k, v in config["model_diff"].items()
        if k not in MODEL_DIFF_NOT_PARAMS[rule]
    }


def paired_layer_dirs(layer):
    """model -> the layer directory of its paired token parts, models in config order."""
    return {m: paths.paired_layer_dir(m, layer) for m in MODELS}


def paired_parts(layer):
    return [
        paths.paired_token_part(m, layer, p) for m in MODELS for p in MODEL_DIFF_SHARDS
    ]


def sae_diff_inputs(wildcards):
    """The per-round SAE diff this layer's agreement reads (family base, the base embedder's
    reference fold), when that layer has SAEs; else nothing."""
    if wildcards.layer not in SAE_LAYERS or BASE not in EMBEDDERS:
        return {}
    return {
        "sae_diff_features": diff_file(
            BASE, wildcards.layer, paths.BASE_FAMILY, "features.parquet"
        ),
        "sae_diff_sae": sae_dir(BASE, wildcards.layer, paths.BASE_SCHEME, FOLDS[0]),
    }


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
    # Every token layer, also those no SAE trains on (a product of their own).
    targets += [
        part
        for e in EMBEDDERS
        for m in STUDY.embedded_models(e)
        for layer in TOKEN_LAYERS
        for part in token_parts(e, m, layer)
    ]
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
    if MODEL_DIFF_LAYERS:
        targets.append(paths.model_diff_profile("tsv"))
        targets += [
            paths.model_diff_layer_file(layer, "agreement.tsv")
            for layer in MODEL_DIFF_LAYERS
        ]

    if POTTS["enabled"]:
        targets.append(paths.potts_summary_file("changes.tsv"))
    targets.append(paths.report_index())
    return targets
