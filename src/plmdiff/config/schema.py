"""Load, default and validate a plmdiff configuration against config/schema.yaml.

Every error is one line that names the key and what would be accepted, because it is what a
user sees when `snakemake -n` refuses to build the DAG.
"""

from __future__ import annotations

import copy
import difflib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jsonschema
import yaml

from plmdiff.core.errors import ConfigError

REPO_ROOT = Path(__file__).resolve().parents[3]
SCHEMA_PATH = REPO_ROOT / "config" / "schema.yaml"
DEMO_CONFIG_PATH = REPO_ROOT / "config" / "demo.yaml"

# Embedder keywords besides model names (activations.embedders).
BASE_EMBEDDER = "base"
SELF_EMBEDDER = "self"


def embeds_every_round(embedder: str) -> bool:
    """Whether one model embeds every round's samples for `embedder` (a model name or 'base'),
    as probes and sanity checks need: with 'self' each round's own weights embed its own
    samples, and separating them would measure the models, not the rounds."""
    return embedder != SELF_EMBEDDER


def load_schema(path: str | Path = SCHEMA_PATH) -> dict[str, Any]:
    return yaml.safe_load(Path(path).read_text())


def load_yaml(path: str | Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(Path(path).read_text())
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist") from None
    except yaml.YAMLError as exc:
        raise ConfigError(
            f"config file {path} is not valid YAML: {exc}".replace("\n", " ")
        ) from None
    if not isinstance(data, dict):
        raise ConfigError(
            f"config file {path} must hold a mapping of keys, not {type(data).__name__}"
        )
    return data


# ----------------------------------------------------------------------------- defaults


def _object_branch(schema: Mapping[str, Any]) -> Mapping[str, Any] | None:
    if "properties" in schema:
        return schema
    for key in ("oneOf", "anyOf"):
        for branch in schema.get(key, []):
            if branch.get("type") == "object" and "properties" in branch:
                return branch
    return None


def fill_defaults(schema: Mapping[str, Any], value: Any) -> Any:
    """Return a copy of `value` with every missing key that has a default filled in."""
    value = copy.deepcopy(value)
    _fill(schema, value)
    return value


def _fill(schema: Mapping[str, Any], value: Any) -> None:
    if isinstance(value, dict):
        branch = _object_branch(schema)
        if branch is None:
            return
        for key, sub in branch["properties"].items():
            if key not in value and "default" in sub:
                value[key] = copy.deepcopy(sub["default"])
            if key in value:
                _fill(sub, value[key])
    elif isinstance(value, list) and isinstance(schema.get("items"), Mapping):
        for item in value:
            _fill(schema["items"], item)


# ----------------------------------------------------------------------------- messages


def _key_path(path: Any) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "<top level>"


def _accepted(schema: Mapping[str, Any]) -> str:
    """Describe what a schema node accepts, for the error message."""
    if "enum" in schema:
        return "one of " + ", ".join(repr(v) for v in schema["enum"])
    branches = schema.get("oneOf") or schema.get("anyOf")
    if branches:
        return " or ".join(_accepted(b) for b in branches)
    kind = schema.get("type", "a value")
    if isinstance(kind, list):
        kind = " or ".join(kind)
    bounds = []
    for word, key in (
        (">=", "minimum"),
        ("<=", "maximum"),
        (">", "exclusiveMinimum"),
        ("<", "exclusiveMaximum"),
    ):
        if key in schema:
            bounds.append(f"{word} {schema[key]}")
    if "pattern" in schema:
        bounds.append(f"matching {schema['pattern']}")
    if kind == "array" and isinstance(schema.get("items"), Mapping):
        kind = f"a list of ({_accepted(schema['items'])})"
    return f"{kind} {' and '.join(bounds)}".strip()


def _format_error(error: jsonschema.ValidationError) -> str:
    path = list(error.absolute_path)
    where = _key_path(path)
    validator = error.validator
    if validator == "additionalProperties":
        allowed = sorted(error.schema.get("properties", {}))
        extra = sorted(set(error.instance) - set(allowed))
        key = extra[0]
        full = _key_path([*path, key])
        hint = difflib.get_close_matches(key, allowed, n=1)
        suggestion = f"; did you mean '{hint[0]}'?" if hint else ""
        return f"unknown key '{full}'; accepted keys here: {', '.join(allowed)}{suggestion}"
    if validator == "required":
        missing = error.message.split("'")[1] if "'" in error.message else error.message
        return f"missing required key '{_key_path([*path, missing])}'"
    if validator in ("oneOf", "anyOf"):
        return f"{where} = {error.instance!r}: expected {_accepted(error.schema)}"
    if validator in ("minItems", "maxItems", "uniqueItems"):
        return f"{where}: {error.message}"
    return f"{where} = {error.instance!r}: expected {_accepted(error.schema)}"


def validate_schema(config: Mapping[str, Any], schema: Mapping[str, Any]) -> None:
    validator = jsonschema.Draft202012Validator(schema)
    errors = sorted(validator.iter_errors(config), key=lambda e: list(e.absolute_path))
    if errors:
        best = jsonschema.exceptions.best_match(errors)
        raise ConfigError(_format_error(best))


# ----------------------------------------------------------------------------- semantics


def model_names(config: Mapping[str, Any]) -> list[str]:
    return [m["name"] for m in config["models"]]


def _check_names(
    config: Mapping[str, Any], key: str, names: list[str], accepted: list[str]
) -> None:
    for name in names:
        if name not in accepted:
            hint = difflib.get_close_matches(name, accepted, n=1)
            suggestion = f"; did you mean '{hint[0]}'?" if hint else ""
            raise ConfigError(
                f"{key}: unknown model '{name}'; accepted: {', '.join(accepted)}{suggestion}"
            )


def check_semantics(config: Mapping[str, Any]) -> None:
    """Cross-key rules that a JSON schema cannot express."""
    names = model_names(config)
    seen: set[str] = set()
    for i, name in enumerate(names):
        if name in seen:
            raise ConfigError(f"models[{i}].name = '{name}': model names must be unique")
        seen.add(name)
    if config["prompt"]["format"] == "zymctrl" and not config["prompt"]["label"].strip():
        raise ConfigError(
            "prompt.label is empty: the zymctrl format needs the control tag (EC number)"
        )

    embedders = config["activations"]["embedders"]
    _check_names(config, "activations.embedders", embedders, [BASE_EMBEDDER, SELF_EMBEDDER, *names])

    flt = config["filter"]
    if flt["min_length"] and flt["max_length"] and flt["min_length"] > flt["max_length"]:
        raise ConfigError(
            f"filter.min_length = {flt['min_length']} is above filter.max_length = {flt['max_length']}"
        )
    rel = flt["relative_to_base"]
    if rel is not None and rel["lower_quantile"] >= rel["upper_quantile"]:
        raise ConfigError(
            "filter.relative_to_base: lower_quantile "
            f"{rel['lower_quantile']} must be below upper_quantile {rel['upper_quantile']}"
        )

    token_layers = config["activations"]["token_layers"]
    sae_layers = config["sae"]["layers"]
    for layer in sae_layers or []:
        if layer not in token_layers:
            raise ConfigError(
                f"sae.layers: layer {layer} is not in activations.token_layers {token_layers}; "
                "SAEs train on stored token activations, so add it there or remove it here"
            )
    model_diff = config.get("model_diff") or {}
    if model_diff.get("enabled") and not (model_diff.get("layers") or token_layers):
        raise ConfigError(
            "model_diff.enabled: no layers to embed; set model_diff.layers or "
            "activations.token_layers"
        )
    if model_diff.get("enabled") and len(config["models"]) < 2:
        raise ConfigError("model_diff.enabled: model diffing needs a base and at least one round")
    groups = config["sae"]["groups"] or {}
    for group, members in groups.items():
        if not str(group).replace("-", "").replace("_", "").isalnum():
            raise ConfigError(
                f"sae.groups: group name '{group}' must be letters, digits, '-' or '_'"
            )
        _check_names(config, f"sae.groups.{group}", members, names[1:])
    if config["probes"]["folds"] > config["sampling"]["n_sequences"]:
        raise ConfigError(
            f"probes.folds = {config['probes']['folds']} exceeds sampling.n_sequences = "
            f"{config['sampling']['n_sequences']}"
        )


def validate_config(
    config: Mapping[str, Any], schema_path: str | Path = SCHEMA_PATH
) -> dict[str, Any]:
    """Validate `config` and return it with every default filled in.

    Raises ConfigError with a one-line message on the first problem found.
    """
    schema = load_schema(schema_path)
    # Validate the raw config first so that a wrongly typed section is reported as such,
    # not as a failure inside the defaults that would have been filled into it.
    validate_schema(config, schema)
    filled = fill_defaults(schema, dict(config))
    validate_schema(filled, schema)
    check_semantics(filled)
    return filled


def load_config(path: str | Path, schema_path: str | Path = SCHEMA_PATH) -> dict[str, Any]:
    """Read a YAML config file and validate it (for notebooks and tests)."""
    try:
        return validate_config(load_yaml(path), schema_path)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None
