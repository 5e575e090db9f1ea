"""`--sdm conda`: every rule's env holds what its script imports, pinned as pyproject.toml.

The imports of a rule are those of its workflow script and, transitively, of every plmdiff
module it reaches, in-function imports included (heavy libraries are imported where used).
A library counts as present when its distribution is pinned in the env, or when it is not a
direct dependency of plmdiff (pyproject.toml) and a pinned distribution of the env requires it.
"""

from __future__ import annotations

import ast
import re
import sys
import tomllib
from functools import cache
from importlib import metadata
from itertools import pairwise
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

REPO = Path(__file__).resolve().parents[2]
SRC = REPO / "src"
RULE = re.compile(r"^\s*(?:local)?rule (\w+):", re.MULTILINE)


def rule_envs_and_scripts() -> dict[str, tuple[str, str]]:
    """rule -> (env file, script file), from rules/*.smk."""
    found = {}
    for smk in sorted((REPO / "rules").glob("*.smk")):
        text = smk.read_text()
        starts = [m.start() for m in RULE.finditer(text)] + [len(text)]
        for start, end in pairwise(starts):
            block = text[start:end]
            name = RULE.match(block).group(1)
            conda = re.search(r"conda:\s*\n\s*\"([^\"]+)\"", block)
            script = re.search(r"script:\s*\n\s*\"([^\"]+)\"", block)
            if conda and script:
                found[name] = (
                    str((smk.parent / conda.group(1)).resolve()),
                    str((smk.parent / script.group(1)).resolve()),
                )
    return found


def imports_of(path: Path) -> set[str]:
    """Absolute module names imported anywhere in a file (functions included)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def plmdiff_file(module: str) -> Path | None:
    base = SRC.joinpath(*module.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.exists():
            return candidate
    return None


@cache
def third_party_imports(script: str) -> frozenset[str]:
    """Top-level names of the libraries a script needs, following plmdiff's own modules."""
    seen: set[Path] = set()
    todo = [Path(script)]
    libraries = set()
    while todo:
        path = todo.pop()
        if path in seen:
            continue
        seen.add(path)
        for name in imports_of(path):
            top = name.split(".")[0]
            if top == "plmdiff":
                target = plmdiff_file(name)
                if target is not None:
                    todo.append(target)
            elif top not in sys.stdlib_module_names and top != "__future__":
                libraries.add(top)
    return frozenset(libraries)


def env_pins(env_file: str) -> dict[str, str]:
    """Distribution -> version pinned by an env (pip and conda entries)."""
    env = yaml.safe_load(Path(env_file).read_text())
    pins = {}
    for dep in env["dependencies"]:
        entries = dep["pip"] if isinstance(dep, dict) else [dep]
        for entry in entries:
            name, _, version = re.split(r"(==|=)", entry, maxsplit=1)
            pins[canonicalize_name(name)] = version
    return pins


def pyproject_pins() -> dict[str, str]:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    pins = {}
    for spec in project["dependencies"]:
        req = Requirement(spec)
        (specifier,) = req.specifier
        pins[canonicalize_name(req.name)] = specifier.version
    return pins


@cache
def distributions_of_module() -> dict[str, list[str]]:
    return {
        k: [canonicalize_name(d) for d in v] for k, v in metadata.packages_distributions().items()
    }


def requirements_closure(distributions: set[str]) -> set[str]:
    """The distributions and everything they require (in this environment's metadata)."""
    found, todo = set(distributions), list(distributions)
    while todo:
        try:
            requires = metadata.requires(todo.pop()) or []
        except metadata.PackageNotFoundError:
            continue
        for spec in requires:
            req = Requirement(spec)
            if req.marker is not None and not req.marker.evaluate({"extra": ""}):
                continue
            name = canonicalize_name(req.name)
            if name not in found:
                found.add(name)
                todo.append(name)
    return found


RULES = rule_envs_and_scripts()


def test_every_script_rule_has_an_env():
    assert len(RULES) >= 15, sorted(RULES)
    for rule, (env, script) in RULES.items():
        assert Path(env).exists(), f"{rule}: {env}"
        assert Path(script).exists(), f"{rule}: {script}"


@pytest.mark.parametrize("rule", sorted(RULES))
def test_env_holds_every_import_of_the_rule(rule):
    env, script = RULES[rule]
    pinned = set(env_pins(env))
    direct = set(pyproject_pins())
    available = requirements_closure(pinned)
    modules = distributions_of_module()
    missing = []
    for library in sorted(third_party_imports(script)):
        candidates = modules.get(library)
        if not candidates:
            missing.append(f"{library} (not installed here either)")
            continue
        if any(d in pinned for d in candidates):
            continue
        if any(d in available and d not in direct for d in candidates):
            continue
        missing.append(f"{library} ({'/'.join(candidates)})")
    assert not missing, f"{Path(env).name} lacks, for rule {rule} ({Path(script).name}): {missing}"


@pytest.mark.parametrize("env", sorted({env for env, _ in RULES.values()}))
def test_env_pins_match_pyproject(env):
    """Same versions as the venv (pyproject.toml), so --sdm conda runs what the tests ran."""
    project = pyproject_pins()
    pins = env_pins(env)
    wrong = {
        name: (version, project[name])
        for name, version in pins.items()
        if name in project and version != project[name]
    }
    assert not wrong, f"{Path(env).name}: pinned (env, pyproject.toml): {wrong}"
    python = pins["python"]
    required = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["requires-python"]
    assert python.startswith("3.") and int(python.split(".")[1]) >= int(required.split(".")[1])


def test_the_checker_sees_a_missing_library(tmp_path):
    """The test above can fail: a script importing a library no env has is caught."""
    script = tmp_path / "s.py"
    script.write_text("def f():\n    import psutil\n    from plmdiff.sae import job\n")
    libraries = third_party_imports(str(script))
    # In-function imports count, and plmdiff's own modules are followed (sae.job -> pandas).
    assert {"psutil", "pandas", "torch"} <= libraries
    assert "psutil" not in env_pins(str(REPO / "envs" / "report.yaml"))
