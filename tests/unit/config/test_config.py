"""Config schema: complete, documented, and every bad value gets one clear line."""

from __future__ import annotations

import copy
from collections.abc import Iterator, Mapping
from typing import Any

import pytest
import yaml

from plmdiff.config import doc as config_doc
from plmdiff.config.schema import REPO_ROOT, _object_branch, load_schema, validate_config
from plmdiff.core.errors import ConfigError

MINIMAL = {
    "models": [{"name": "r0", "checkpoint": "a"}, {"name": "r1", "checkpoint": "b"}],
    "prompt": {"label": "4.2.1.1"},
}


def _nodes(schema: Mapping[str, Any], path: str = "") -> Iterator[tuple[str, Mapping, set]]:
    branch = _object_branch(schema)
    if branch is None:
        return
    required = set(branch.get("required", []))
    for key, sub in branch["properties"].items():
        name = f"{path}.{key}" if path else key
        yield name, sub, required
        if isinstance(sub.get("items"), Mapping):
            yield from _nodes(sub["items"], f"{name}[]")
        yield from _nodes(sub, name)


def test_every_key_has_description_and_default_or_is_required():
    for name, sub, required in _nodes(load_schema()):
        assert sub.get("description"), f"{name} has no description"
        assert "default" in sub or name.split(".")[-1].split("[")[0] in required, (
            f"{name} has no default"
        )


def test_config_readme_is_generated_from_schema():
    assert (REPO_ROOT / "config" / "README.md").read_text() == config_doc.render(), (
        "config/README.md is stale: run python -m plmdiff.config.doc > config/README.md"
    )


def test_defaults_are_filled_and_follow_zymctrl_practice():
    cfg = validate_config(MINIMAL)
    assert cfg["prompt"]["format"] == "zymctrl"
    assert cfg["sampling"]["top_k"] == 9
    assert cfg["sampling"]["repetition_penalty"] == 1.2
    assert cfg["sampling"]["max_length"] == 1024
    assert cfg["sampling"]["n_sequences"] == 1000
    assert cfg["activations"]["embedders"] == ["base"]
    assert cfg["sae"]["architecture"] == "batchtopk"
    assert cfg["sae"]["base"] == {"import": None, "sequences": None}
    assert cfg["allow_pickle"] is False


def test_nested_defaults_inside_optional_object():
    cfg = validate_config({**MINIMAL, "filter": {"relative_to_base": {"upper_quantile": 0.9}}})
    assert cfg["filter"]["relative_to_base"] == {"lower_quantile": 0.05, "upper_quantile": 0.9}


def _error(**changes) -> str:
    cfg = copy.deepcopy(MINIMAL)
    for key, value in changes.items():
        section, _, sub = key.partition("__")
        if sub:
            cfg.setdefault(section, {})[sub] = value
        else:
            cfg[section] = value
    with pytest.raises(ConfigError) as info:
        validate_config(cfg)
    message = str(info.value)
    assert "\n" not in message
    return message


def test_typo_key_names_the_key_and_suggests():
    msg = _error(sampling__topk=3)
    assert "sampling.topk" in msg and "did you mean 'top_k'" in msg


def test_unknown_top_level_key():
    msg = _error(samplng={})
    assert "unknown key 'samplng'" in msg and "sampling" in msg


def test_wrong_type_names_key_value_and_expectation():
    msg = _error(sampling__top_k="nine")
    assert "sampling.top_k = 'nine'" in msg and "integer" in msg


def test_out_of_range():
    msg = _error(sampling__n_sequences=0)
    assert "sampling.n_sequences = 0" in msg and ">= 1" in msg


def test_bad_enum_lists_accepted_values():
    msg = _error(prompt={"label": "x", "format": "zym"})
    assert "prompt.format = 'zym'" in msg and "'zymctrl'" in msg and "'plain'" in msg


def test_oneof_batch_size():
    msg = _error(sampling__batch_size="big")
    assert "sampling.batch_size" in msg and "'auto'" in msg


def test_unknown_model_in_embedders():
    msg = _error(activations__embedders=["r9"])
    assert "activations.embedders" in msg and "'r9'" in msg and "r0, r1" in msg


def test_duplicate_model_names():
    msg = _error(models=[{"name": "r0", "checkpoint": "a"}, {"name": "r0", "checkpoint": "b"}])
    assert "unique" in msg


def test_sae_layer_not_in_token_layers():
    cfg = copy.deepcopy(MINIMAL)
    cfg["activations"] = {"token_layers": [2]}
    cfg["sae"] = {"layers": [3]}
    with pytest.raises(
        ConfigError, match=r"sae.layers: layer 3 is not in activations.token_layers"
    ):
        validate_config(cfg)


def test_missing_required_key():
    cfg = copy.deepcopy(MINIMAL)
    del cfg["models"][1]["checkpoint"]
    with pytest.raises(ConfigError, match=r"missing required key 'models\[1\].checkpoint'"):
        validate_config(cfg)


def test_shipped_configs_validate():
    for name in ("demo.yaml", "config.yaml"):
        validate_config(yaml.safe_load((REPO_ROOT / "config" / name).read_text()))
