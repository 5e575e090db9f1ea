"""Typed settings from validated config sections: the one `from_section` idiom.

Defaults live in `config/schema.yaml` only. A stage's settings dataclass declares its fields
without defaults; `from_section` fills them from a section that `validate_config` has already
completed with the schema's defaults, so a default is never written twice. Code outside a
workflow run (tests, notebooks, bench scripts) gets the same values through
`section_defaults`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from functools import cache
from typing import Any, TypeVar

from plmdiff.config.schema import SCHEMA_PATH, fill_defaults, load_schema
from plmdiff.core.errors import ConfigError

T = TypeVar("T")


@cache
def _schema() -> dict[str, Any]:
    return load_schema(SCHEMA_PATH)


def section_defaults(*path: str) -> dict[str, Any]:
    """The schema's defaults of one section, e.g. section_defaults("sae") or ("demo", "dpo")."""
    node: Mapping[str, Any] = _schema()
    for key in path:
        try:
            node = node["properties"][key]
        except KeyError:
            raise ConfigError(f"config section '{'.'.join(path)}' is not in the schema") from None
    return fill_defaults(node, {})


def from_section(
    cls: type[T],
    section: Mapping[str, Any],
    name: str,
    *,
    rename: Mapping[str, str] | None = None,
    convert: Mapping[str, Callable[[Any], Any]] | None = None,
    **extra: Any,
) -> T:
    """Build settings dataclass `cls` from the validated config section `name`.

    Each field takes the section's key of the same name (or `rename[field]`), passed through
    `convert[field]` when given; fields in `extra` are set by the caller. Keys of the section
    that the dataclass does not use are ignored: one section can feed several stages.
    """
    rename = rename or {}
    convert = convert or {}
    values: dict[str, Any] = {}
    for field in dataclasses.fields(cls):  # type: ignore[arg-type]
        if not field.init or field.name in extra:
            continue
        key = rename.get(field.name, field.name)
        if key not in section:
            raise ConfigError(
                f"{name}.{key} is missing: pass a section completed by validate_config "
                f"(or section_defaults('{name.split('.')[0]}'))"
            )
        value = section[key]
        values[field.name] = convert[field.name](value) if field.name in convert else value
    return cls(**values, **extra)
