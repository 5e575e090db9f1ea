"""Render config/README.md from config/schema.yaml, so the two never disagree.

python -m plmdiff.config.doc > config/README.md
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from typing import Any

from plmdiff.config.schema import _object_branch, load_schema

HEADER = """# Configuration

Generated from `config/schema.yaml` by `python -m plmdiff.config.doc > config/README.md`
(a test fails when they disagree). Every key is validated when the Snakefile loads; an unknown
key, a wrong type or an out-of-range value stops the DAG build with one line naming it.

- `config/demo.yaml`: the demo (the default when no `--configfile` is given).
- `config/config.yaml`: a commented template for a real study (10 ZymCTRL checkpoints).

A `--configfile` replaces the default config; it is not merged into it.

| key | default | description |
|---|---|---|
"""


def _rows(schema: Mapping[str, Any], prefix: str = "") -> Iterator[tuple[str, str, str]]:
    branch = _object_branch(schema)
    if branch is None:
        return
    required = set(branch.get("required", []))
    for key, sub in branch["properties"].items():
        name = f"{prefix}.{key}" if prefix else key
        if "default" in sub:
            default = f"`{json.dumps(sub['default'])}`"
        else:
            default = "**required**" if key in required else ""
        description = " ".join(str(sub.get("description", "")).split())
        yield name, default, description
        if isinstance(sub.get("items"), Mapping) and "properties" in sub["items"]:
            yield from _rows(sub["items"], f"{name}[]")
        yield from _rows(sub, name)


def render(schema: Mapping[str, Any] | None = None) -> str:
    schema = schema or load_schema()
    lines = [HEADER.rstrip("\n")]
    for name, default, description in _rows(schema):
        escaped = description.replace("|", "\\|")
        lines.append(f"| `{name}` | {default} | {escaped} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    print(render(), end="")
