"""Every package foil's code imports is a declared dependency, pinned to the version in the lock.

A package that is only in requirements.lock (there as someone else's dependency) installs today
and silently disappears the day that someone drops it; a pin in pyproject.toml that disagrees
with the lock installs one version with `pip install .` and another with `make`.
"""

from __future__ import annotations

import ast
import importlib.metadata
import re
import sys
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CODE = ("flows", "pipeline", "training")
OWN = {"flows", "pipeline", "training", "sql", "tests"}
# Used by name, not by an import statement: foil's real two-tower config names a timm image tower.
USED_WITHOUT_IMPORT = {"timm": "pipeline/models/factory.py"}


def _imported_modules() -> dict[str, str]:
    """Top-level module name -> the first file importing it (absolute imports only)."""
    found: dict[str, str] = dict(USED_WITHOUT_IMPORT)
    for folder in CODE:
        for path in sorted((REPO / folder).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                if isinstance(node, ast.Import):
                    names = [alias.name for alias in node.names]
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    names = [node.module]
                else:
                    continue
                for name in names:
                    found.setdefault(name.split(".")[0], str(path.relative_to(REPO)))
    return found


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _pins(lines: list[str]) -> dict[str, str]:
    """{canonical distribution name: pinned version} from `name[extras]==version` requirements."""
    pins = {}
    for line in lines:
        line = line.split("#")[0].strip()
        match = re.fullmatch(r"([A-Za-z0-9_.-]+)(\[[^\]]*\])?==([^\s;]+)", line)
        if match:
            pins[_canonical(match.group(1))] = match.group(3)
    return pins


def test_every_imported_package_is_declared_at_its_locked_version():
    declared = _pins(tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"])
    locked = _pins((REPO / "requirements.lock").read_text().splitlines())
    distributions = importlib.metadata.packages_distributions()
    problems = []
    for module, where in sorted(_imported_modules().items()):
        if module in sys.stdlib_module_names or module in OWN or module == "__future__":
            continue
        dists = distributions.get(module)
        if not dists:
            problems.append(f"{module} ({where}): no installed distribution provides it")
            continue
        for dist in sorted({_canonical(d) for d in dists}):
            if dist not in declared:
                problems.append(f"{module} ({where}): distribution {dist} is not in pyproject.toml dependencies")
            elif locked.get(dist) != declared[dist]:
                problems.append(f"{dist}: pyproject.toml pins {declared[dist]}, requirements.lock {locked.get(dist)}")
    assert not problems, "\n".join(problems)


def test_every_declared_pin_matches_the_lock():
    declared = _pins(tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"])
    locked = _pins((REPO / "requirements.lock").read_text().splitlines())
    assert {d: v for d, v in declared.items() if locked.get(d) != v} == {}
