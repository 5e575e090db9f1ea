"""What the Snakefile needs from a validated config: names, wildcard values, DAG-time checks.

Kept out of the .smk files so that it is typed and unit-tested; `rules/common.smk` calls it once.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from plmdiff.config import paths
from plmdiff.config.schema import BASE_EMBEDDER, SELF_EMBEDDER, validate_config
from plmdiff.core.errors import CheckpointError, ConfigError, DataError
from plmdiff.core.fasta import resolve_fasta_sources
from plmdiff.models.anatomy import config_depth
from plmdiff.models.checkpoints import CONFIG_FILE, TOKENIZER_FILES, checkpoint_files, weight_files


def alternatives(names: Iterable[str]) -> str:
    """A wildcard constraint that accepts exactly these names."""
    names = sorted(set(names), key=lambda n: (-len(n), n))
    return "|".join(re.escape(n) for n in names) if names else "(?!x)x"


def demo_checkpoint_dirs(config: Mapping[str, Any]) -> list[str]:
    """Checkpoint directories that the demo rules produce (iteration 0 is the base model)."""
    demo = config["demo"]
    if not demo["enabled"]:
        return []
    return [
        paths.demo_checkpoint(demo["checkpoint_dir"], i) for i in range(demo["dpo"]["rounds"] + 1)
    ]


@dataclass(frozen=True)
class Study:
    """Names and wildcard values of one study, derived from its validated config."""

    config: Mapping[str, Any] = field(repr=False)
    models: list[str]
    embedders: list[str]
    sae_layers: list[str]
    sae_schemes: list[str]
    sae_families: list[str]
    demo_dirs: list[str]
    # Layers of the model_diff stage ([] when it is disabled).
    model_diff_layers: list[str] = field(default_factory=list)

    @property
    def base(self) -> str:
        return self.models[0]

    @property
    def rounds(self) -> list[str]:
        return self.models[1:]

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> Study:
        models = [m["name"] for m in config["models"]]
        embedders: list[str] = []
        for name in config["activations"]["embedders"]:
            resolved = models[0] if name == BASE_EMBEDDER else name
            if resolved not in embedders:
                embedders.append(resolved)
        layers = config["sae"]["layers"]
        if layers is None:
            layers = config["activations"]["token_layers"]
        schemes = [paths.BASE_SCHEME]
        wanted = config["sae"]["schemes"]
        if paths.PER_MODEL_FAMILY in wanted:
            schemes += [paths.finetune_scheme(m) for m in models[1:]]
        if paths.POOLED_FAMILY in wanted:
            groups = config["sae"]["groups"]
            schemes += (
                [paths.pooled_scheme(g) for g in groups] if groups else [paths.pooled_scheme()]
            )
        if len(schemes) > 1:
            schemes.append(paths.NULL_SCHEME)
        families = [paths.BASE_FAMILY] + [
            f for f in (paths.PER_MODEL_FAMILY, paths.POOLED_FAMILY) if f in wanted
        ]
        return cls(
            config=config,
            models=models,
            embedders=embedders,
            sae_layers=[f"{layer:02d}" for layer in sorted(layers)],
            sae_schemes=schemes,
            sae_families=families,
            demo_dirs=demo_checkpoint_dirs(config),
            model_diff_layers=[f"{layer:02d}" for layer in model_diff_layers(config)],
        )

    def checkpoint(self, model: str) -> str:
        for m in self.config["models"]:
            if m["name"] == model:
                return m["checkpoint"]
        raise ConfigError(f"unknown model '{model}'; accepted: {', '.join(self.models)}")

    def given_fasta(self, model: str) -> str | None:
        """models[].fasta of `model`: its own sequences replace sampling (None: it samples)."""
        for m in self.config["models"]:
            if m["name"] == model:
                return m.get("fasta")
        raise ConfigError(f"unknown model '{model}'; accepted: {', '.join(self.models)}")

    @property
    def sampled_models(self) -> list[str]:
        """Models whose sequences the workflow samples from their checkpoint."""
        return [m for m in self.models if self.given_fasta(m) is None]

    @property
    def given_models(self) -> list[str]:
        """Models whose sequences come from their own FASTA (models[].fasta)."""
        return [m for m in self.models if self.given_fasta(m) is not None]

    def is_demo_checkpoint(self, model: str) -> bool:
        return _normalise(self.checkpoint(model)) in {_normalise(d) for d in self.demo_dirs}

    def checkpoint_inputs(self, model: str) -> list[str]:
        """Input files of check_checkpoint: the checkpoint's files, or the demo's output directory."""
        path = self.checkpoint(model)
        if self.is_demo_checkpoint(model):
            return [_normalise(path)]
        return [str(p) for p in checkpoint_files(path, self.config["allow_pickle"])]

    def embedded_models(self, embedder: str) -> list[str]:
        """Models whose sequences `embedder` embeds (every model, for a checkpoint and for 'self')."""
        return list(self.models)

    def scheme_models(self, scheme: str) -> list[str]:
        """Models whose token activations train (or fine-tune) an SAE of this scheme."""
        if scheme in (paths.BASE_SCHEME, paths.NULL_SCHEME):
            return [self.base]
        if paths.is_finetune_scheme(scheme):
            return [paths.finetuned_model(scheme)]
        if paths.is_pooled_scheme(scheme):
            group = paths.pooled_group(scheme)
            return list(self.rounds) if group is None else list(self.config["sae"]["groups"][group])
        raise ConfigError(f"unknown SAE scheme '{scheme}'; accepted: {', '.join(self.sae_schemes)}")

    @property
    def sae_base_sequences(self) -> str | None:
        """sae.base.sequences: a FASTA (or glob) whose sequences also train the base SAE."""
        return self.config["sae"]["base"].get("sequences")

    def sae_training_sources(self, scheme: str) -> list[str]:
        """Token sources that train (or fine-tune) an SAE of this scheme: its models, and for the
        base scheme also sae.base.sequences (paths.SAE_BASE_SOURCE) when set."""
        models = self.scheme_models(scheme)
        if scheme == paths.BASE_SCHEME and self.sae_base_sequences:
            return [*models, paths.SAE_BASE_SOURCE]
        return models

    def family_schemes(self, family: str) -> list[str]:
        """SAE schemes compared by one diff family (the base SAE is the reference of each)."""
        base = [paths.BASE_SCHEME]
        if family == paths.BASE_FAMILY:
            return base
        if family == paths.PER_MODEL_FAMILY:
            return base + [s for s in self.sae_schemes if paths.is_finetune_scheme(s)]
        if family == paths.POOLED_FAMILY:
            return base + [s for s in self.sae_schemes if paths.is_pooled_scheme(s)]
        raise ConfigError(
            f"unknown SAE family '{family}'; accepted: {', '.join(self.sae_families)}"
        )


def _normalise(path: str) -> str:
    return str(Path(path)).rstrip("/")


def _n_layers(config_json: Path) -> int | None:
    try:
        data = json.loads(config_json.read_text())
    except (OSError, json.JSONDecodeError):
        return None  # intake reports an unreadable config.json with the full story
    return config_depth(data)


def check_checkpoints_exist(config: Mapping[str, Any], study: Study) -> None:
    """Cheap file checks at DAG-build time; deep checks (corruption, tokenizer) run in intake."""
    for i, model in enumerate(study.models):
        if study.is_demo_checkpoint(model):
            continue
        path = Path(study.checkpoint(model))
        key = f"models[{i}].checkpoint"
        if not path.is_dir():
            hint = ""
            if config["demo"]["enabled"]:
                hint = f"; the demo produces only {', '.join(study.demo_dirs)}"
            raise ConfigError(
                f"{key}: checkpoint directory '{path}' (model '{model}') does not exist{hint}"
            )
        if not (path / CONFIG_FILE).is_file():
            raise ConfigError(
                f"{key}: '{path}' has no {CONFIG_FILE}; expected a Hugging Face checkpoint directory"
            )
        try:
            weight_files(path, config["allow_pickle"])
        except CheckpointError as exc:
            raise ConfigError(f"{key}: {exc}") from None
        if not any((path / name).is_file() for name in TOKENIZER_FILES[:2]):
            raise ConfigError(f"{key}: '{path}' has no tokenizer (tokenizer.json or vocab.json)")


def model_diff_layers(config: Mapping[str, Any]) -> list[int]:
    """The layers model_diff embeds (model_diff.layers, else activations.token_layers); none
    when the stage is disabled."""
    section = config.get("model_diff") or {}
    if not section.get("enabled"):
        return []
    layers = section.get("layers")
    return sorted(config["activations"]["token_layers"] if layers is None else layers)


def check_layers(config: Mapping[str, Any], study: Study) -> None:
    """Layer indices must exist in every embedder (0..L); checked where the depth is known."""
    depths: dict[str, int] = {}
    for model in study.models:
        if study.is_demo_checkpoint(model):
            depths[model] = config["demo"]["base"]["n_layer"]
        else:
            n = _n_layers(Path(study.checkpoint(model)) / CONFIG_FILE)
            if n is not None:
                depths[model] = n
    embedding_models = study.models if SELF_EMBEDDER in study.embedders else []
    embedding_models = [*embedding_models, *[e for e in study.embedders if e != SELF_EMBEDDER]]
    acts = config["activations"]
    keyed: list[tuple[str, Sequence[int]]] = [("activations.token_layers", acts["token_layers"])]
    if acts["layers"] != "all":
        keyed.append(("activations.layers", acts["layers"]))
    for model in study.models if study.model_diff_layers else []:
        bad = [layer for layer in model_diff_layers(config) if layer > depths.get(model, layer)]
        if bad:
            raise ConfigError(
                f"model_diff.layers: layer {bad[0]} does not exist in '{model}', which has "
                f"layers 0..{depths[model]} (0 = embeddings, L = last block)"
            )
    for model in embedding_models:
        if model not in depths:
            continue
        top = depths[model]
        for key, layers in keyed:
            bad = [layer for layer in layers if layer > top]
            if bad:
                raise ConfigError(
                    f"{key}: layer {bad[0]} does not exist in '{model}', which has layers 0..{top} "
                    "(0 = embeddings, L = last block)"
                )


def check_given_fasta(study: Study) -> None:
    """Every models[].fasta names at least one file when the DAG is built."""
    for i, model in enumerate(study.models):
        spec = study.given_fasta(model)
        if spec is None:
            continue
        try:
            resolve_fasta_sources(spec, f"models[{i}].fasta")
        except DataError as exc:
            raise ConfigError(str(exc)) from None


def check_sae_base_sequences(study: Study) -> None:
    """sae.base.sequences names at least one file, and is not combined with sae.base.import
    (an imported base SAE is not trained, so extra training sequences would be ignored)."""
    spec = study.sae_base_sequences
    if not spec:
        return
    if study.config["sae"]["base"]["import"]:
        raise ConfigError(
            "sae.base.sequences and sae.base.import are both set: an imported base SAE is not "
            "trained; set one of them"
        )
    try:
        resolve_fasta_sources(spec, "sae.base.sequences")
    except DataError as exc:
        raise ConfigError(str(exc)) from None


def validate_workflow_config(
    config: Mapping[str, Any], schema_path: str | Path, configfiles: Sequence[Any] = ()
) -> dict[str, Any]:
    """Validate at DAG-build time; ConfigError messages are prefixed with the config file."""
    where = ", ".join(str(c) for c in configfiles) or "config"
    try:
        validated = validate_config(config, schema_path)
        reserved = [m for m in validated["models"][1:] if m["name"] == BASE_EMBEDDER]
        if reserved:
            raise ConfigError("models: only the first (base) model may be named 'base'")
        if any(m["name"] == SELF_EMBEDDER for m in validated["models"]):
            raise ConfigError(
                "models: 'self' is reserved (activations.embedders keyword); rename the model"
            )
        study = Study.from_config(validated)
        check_checkpoints_exist(validated, study)
        check_layers(validated, study)
        check_given_fasta(study)
        check_sae_base_sequences(study)
    except ConfigError as exc:
        raise ConfigError(f"{where}: {exc}") from None
    return validated
