"""Every path of the data contract and every SAE scheme name, written once.

`rules/common.smk`, the library, the bench scripts and the README all build paths with these
functions (ARCHITECTURE.md, "Outputs"). Each function takes wildcard *values*; passing
`"{model}"` and friends gives the rule's output pattern, so the rule and the code that later
reads the file cannot disagree.
"""

from __future__ import annotations

import os
from pathlib import Path

RESULTS = "results"
LOGS = "logs"
BENCHMARKS = "benchmarks"

# ----------------------------------------------------------------------------- SAE schemes

BASE_SCHEME = "base"  # trained from scratch (or imported) on the base model's tokens
# The token source of sae.base.sequences: more sequences for the base SAE, embedded like the base
# model's samples (a pseudo-model of the extraction rules, its FASTA at fasta(SAE_BASE_SOURCE)).
# Model names start with a letter or digit, so it never collides with one.
SAE_BASE_SOURCE = "_sae_base"
FINETUNE_PREFIX = "ft_"  # ft_{model}: the base SAE fine-tuned on one round's tokens
POOLED_SCHEME = "pooled"  # the base SAE fine-tuned on every round's tokens
POOLED_PREFIX = "pooled_"  # pooled_{group}: ... on the rounds of one sae.groups entry
# The base SAE fine-tuned, with the per-round budget, on base tokens it never trained on (its
# held-out fold): how far fine-tuning moves decoders when nothing changed. Trained only when
# fine-tuned schemes exist; the diff takes its direction cut from it.
NULL_SCHEME = "null_ft"

# Diff families: which schemes a diff job compares (the base scheme is the reference of each).
BASE_FAMILY = "base"
PER_MODEL_FAMILY = "per_model"
POOLED_FAMILY = "pooled"


def finetune_scheme(model: str) -> str:
    return f"{FINETUNE_PREFIX}{model}"


def pooled_scheme(group: str | None = None) -> str:
    return POOLED_SCHEME if group is None else f"{POOLED_PREFIX}{group}"


def is_finetune_scheme(scheme: str) -> bool:
    return scheme.startswith(FINETUNE_PREFIX)


def is_null_scheme(scheme: str) -> bool:
    return scheme == NULL_SCHEME


def is_pooled_scheme(scheme: str) -> bool:
    return scheme == POOLED_SCHEME or scheme.startswith(POOLED_PREFIX)


def finetuned_model(scheme: str) -> str:
    """The model an ft_{model} scheme fine-tunes on."""
    return scheme[len(FINETUNE_PREFIX) :]


def pooled_group(scheme: str) -> str | None:
    """The sae.groups entry of a pooled_{group} scheme, None for the plain pooled scheme."""
    return None if scheme == POOLED_SCHEME else scheme[len(POOLED_PREFIX) :]


# ----------------------------------------------------------------------------- wildcard values


def sample_shard_ids(n_shards: int) -> list[str]:
    return [f"{s:03d}" for s in range(n_shards)]


def extract_part_ids(n_parts: int) -> list[str]:
    return [f"{p:05d}" for p in range(n_parts)]


def layer_id(layer: int) -> str:
    return f"{layer:02d}"


# ----------------------------------------------------------------------------- checkpoints, demo


def checkpoint_record(model: str) -> str:
    return f"{RESULTS}/checkpoints/{model}.json"


def demo_checkpoint(checkpoint_dir: str, iteration: int | str) -> str:
    """output_iteration{i}/ of the demo (0: the base model), the layout of the study's DPO loop."""
    return f"{str(checkpoint_dir).rstrip('/')}/output_iteration{iteration}"


def demo_file(name: str) -> str:
    return f"{RESULTS}/demo/{name}"


def demo_base_report() -> str:
    return demo_file("base_model.json")


def demo_round_file(iteration: int | str, name: str) -> str:
    return demo_file(f"round_{iteration}.{name}")


def demo_summary(ext: str) -> str:
    return demo_file(f"dpo_summary.{ext}")


# ----------------------------------------------------------------------------- sampling


def sample_shard(model: str, shard: str) -> str:
    return f"{RESULTS}/samples/{model}/shard_{shard}.parquet"


def fasta(model: str) -> str:
    return f"{RESULTS}/fasta/{model}.fasta"


def fasta_stats(model: str) -> str:
    return f"{RESULTS}/fasta/{model}.stats.json"


def sampling_summary(ext: str) -> str:
    return f"{RESULTS}/sampling/summary.{ext}"


# ----------------------------------------------------------------------------- activations


def activations_dir(embedder: str) -> str:
    return f"{RESULTS}/activations/{embedder}"


def pooled(embedder: str, model: str) -> str:
    return f"{activations_dir(embedder)}/{model}.pooled.parquet"


# One layout of a model's activation parts, under the activations stage's embedder directory and
# under model_diff's (the paired parts): the builders below are its only spelling.


def _pooled_part(root: str, model: str, part: str) -> str:
    return f"{root}/{model}/pooled/part-{part}.parquet"


def _layer_dir(root: str, model: str, layer: str) -> str:
    return f"{root}/{model}/layer_{layer}"


def _token_part(root: str, model: str, layer: str, part: str) -> str:
    return f"{_layer_dir(root, model, layer)}/part-{part}.parquet"


def pooled_part(embedder: str, model: str, part: str) -> str:
    return _pooled_part(activations_dir(embedder), model, part)


def token_layer_dir(embedder: str, model: str, layer: str) -> str:
    return _layer_dir(activations_dir(embedder), model, layer)


def token_part(embedder: str, model: str, layer: str, part: str) -> str:
    return _token_part(activations_dir(embedder), model, layer, part)


# ----------------------------------------------------------------------------- probes, sanity


def clusters_table() -> str:
    """Sequence-identity clusters of every model's FASTA (groups of the probe folds)."""
    return f"{RESULTS}/clusters/clusters.tsv"


def probe_dir(embedder: str, pooling: str) -> str:
    return f"{RESULTS}/probes/{embedder}/{pooling}"


def probe_file(embedder: str, pooling: str, name: str) -> str:
    return f"{probe_dir(embedder, pooling)}/{name}"


def sanity_dir(embedder: str) -> str:
    return f"{RESULTS}/sanity/{embedder}"


def sanity_file(embedder: str, name: str) -> str:
    return f"{sanity_dir(embedder)}/{name}"


TSNE_FIGURES = {"last": "tsne_last_token_grid.png", "mean": "tsne_mean_pooled_grid.png"}


def sanity_tsne(embedder: str, pooling: str) -> str:
    """The t-SNE grid, named after the pooling it shows."""
    return sanity_file(embedder, TSNE_FIGURES[pooling])


# ----------------------------------------------------------------------------- SAEs


def sae_fold_table(model: str) -> str:
    """`model`'s sequences with their SAE fold (whole sequence clusters per fold)."""
    return f"{RESULTS}/saes/folds/{model}.tsv"


def sae_dir(embedder: str, layer: str, scheme: str, fold: str | int) -> str:
    return f"{RESULTS}/saes/{embedder}/layer_{layer}/{scheme}/fold_{fold}"


def sae_metrics(embedder: str, layer: str, scheme: str, fold: str | int) -> str:
    return f"{sae_dir(embedder, layer, scheme, fold)}.metrics.json"


def sae_curves(embedder: str, layer: str, scheme: str, fold: str | int, ext: str) -> str:
    """Training curves of one SAE: ext 'tsv' (table) or 'png' (figure)."""
    return f"{sae_dir(embedder, layer, scheme, fold)}.curves.{ext}"


# ----------------------------------------------------------------------------- feature stats, diff

# The files of one feature_stats job: the stats table and its siblings (same stem).
FEATURE_STATS_SUFFIXES = {
    "stats": ".parquet",
    "sequences": ".seqs.parquet",
    "fires": ".fires.parquet",
    "top": ".top.parquet",
    "positions": ".positions.parquet",
}


def feature_stats(embedder: str, layer: str, scheme: str, fold: str | int) -> str:
    return f"{RESULTS}/features/{embedder}/layer_{layer}/{scheme}/fold_{fold}.parquet"


def feature_stats_siblings(stats_path: str | os.PathLike) -> dict[str, Path]:
    """The files of one feature_stats job, from the path of its stats table."""
    path = str(stats_path)
    suffix = FEATURE_STATS_SUFFIXES["stats"]
    if not path.endswith(suffix):
        raise ValueError(f"feature stats path {path} does not end in {suffix}")
    stem = path[: -len(suffix)]
    return {key: Path(f"{stem}{ext}") for key, ext in FEATURE_STATS_SUFFIXES.items()}


def feature_stats_files(embedder: str, layer: str, scheme: str, fold: str | int) -> dict[str, str]:
    """The files of one feature_stats job, as rule outputs."""
    siblings = feature_stats_siblings(feature_stats(embedder, layer, scheme, fold))
    return {key: str(path) for key, path in siblings.items()}


def diff_dir(embedder: str, layer: str, family: str) -> str:
    return f"{RESULTS}/diff/{embedder}/layer_{layer}/{family}"


def diff_file(embedder: str, layer: str, family: str, name: str) -> str:
    return f"{diff_dir(embedder, layer, family)}/{name}"


def diff_fit(embedder: str, layer: str, family: str) -> str:
    """Per analysis, fold and model: the evaluating SAE's FVU, L0 and dead fraction."""
    return diff_file(embedder, layer, family, "fit.tsv")


# ----------------------------------------------------------------------------- model diffing


def model_diff_dir() -> str:
    return f"{RESULTS}/model_diff"


def model_diff_sequences() -> str:
    """The shared sequences every checkpoint embeds (base samples + model_diff.sequences)."""
    return f"{model_diff_dir()}/sequences.fasta"


def _paired_root() -> str:
    return f"{model_diff_dir()}/activations"


def paired_pooled_part(model: str, part: str) -> str:
    return _pooled_part(_paired_root(), model, part)


def paired_layer_dir(model: str, layer: str) -> str:
    return _layer_dir(_paired_root(), model, layer)


def paired_token_part(model: str, layer: str, part: str) -> str:
    return _token_part(_paired_root(), model, layer, part)


def model_diff_profile(ext: str) -> str:
    """The activation-difference profile: profile.tsv, profile.{png,svg}."""
    return f"{model_diff_dir()}/profile.{ext}"


def model_diff_layer_file(layer: str, name: str) -> str:
    """Per-layer outputs: crosscoder.safetensors, latents.{parquet,tsv}, classes.tsv, ..."""
    return f"{model_diff_dir()}/layer_{layer}/{name}"


def diff_sae_file(layer: str, model: str, ext: str) -> str:
    """The SAE on activation differences of one round: .safetensors, .metrics.json."""
    return f"{model_diff_dir()}/layer_{layer}/diff_sae/{model}.{ext}"


# ----------------------------------------------------------------------------- KL, report


def kl_table(model: str) -> str:
    return f"{RESULTS}/kl/{model}.parquet"


def kl_top(model: str) -> str:
    return f"{RESULTS}/kl/{model}.top.tsv"


def kl_summary() -> str:
    return f"{RESULTS}/kl/summary.tsv"


def kl_figure(ext: str) -> str:
    return f"{RESULTS}/kl/kl_by_round.{ext}"


# Potts models (potts.enabled): sets are the models and, with potts.family, FAMILY_SET (a name no
# model can take: model names start with a letter or digit).
FAMILY_SET = "_family"


def potts_dir() -> str:
    return f"{RESULTS}/potts"


def potts_profile(ext: str) -> str:
    """profile.hmm (the HMM) or profile.json (how it was built)."""
    return f"{RESULTS}/potts/profile.{ext}"


def potts_alignment(set_name: str) -> str:
    return f"{RESULTS}/potts/align/{set_name}.parquet"


def potts_coverage(set_name: str) -> str:
    return f"{RESULTS}/potts/align/{set_name}.coverage.json"


def potts_fit(set_name: str) -> str:
    return f"{RESULTS}/potts/fit/{set_name}.safetensors"


def potts_fit_info(set_name: str) -> str:
    return f"{RESULTS}/potts/fit/{set_name}.json"


def potts_compare_file(model: str, name: str) -> str:
    """sites.tsv, pairs.tsv, couplings.{png,svg} of one round against the base."""
    return f"{RESULTS}/potts/compare/{model}/{name}"


def potts_summary_file(name: str) -> str:
    """coverage.tsv, fits.tsv, changes.tsv, energy.tsv, energies.parquet, energy.{png,svg}."""
    return f"{RESULTS}/potts/{name}"


def report_index() -> str:
    return f"{RESULTS}/report/index.html"


def snakemake_report() -> str:
    return f"{RESULTS}/report/snakemake_report.html"


# ----------------------------------------------------------------------------- logs, benchmarks


def log_file(rule: str, *parts: str) -> str:
    return "/".join([LOGS, rule, *parts]) + ".log"


def benchmark_file(rule: str, *parts: str) -> str:
    return "/".join([BENCHMARKS, rule, *parts]) + ".tsv"
