"""Packaging: every third-party module the product imports is a declared dependency, so a fresh install runs it;
and starting the CLI loads none of the heavy modules only some commands use."""
from __future__ import annotations

import ast
import subprocess
import sys
import tomllib

from tests.conftest import ROOT

PACKAGES = ("search", "spaces", "pruners", "reports", "dynamic")
DISTRIBUTION = {"torch_pruning": "torch-pruning", "sklearn": "scikit-learn", "fvcore": "fvcore"}


def imported_modules() -> set[str]:
    """Top-level names of every module imported anywhere in the product's packages."""
    names: set[str] = set()
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.Import):
                    names.update(alias.name.split(".")[0] for alias in node.names)
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    names.add(node.module.split(".")[0])
    return names


def declared() -> set[str]:
    """Distribution names in pyproject's dependencies and optional extras, without versions or extras."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    specs = list(project["dependencies"]) + [s for group in project["optional-dependencies"].values() for s in group]
    return {spec.split("[")[0].split("=")[0].split(">")[0].split("<")[0].strip().lower() for spec in specs}


def test_every_third_party_import_is_declared() -> None:
    third_party = imported_modules() - set(sys.stdlib_module_names) - set(PACKAGES) - {"__future__"}
    missing = sorted(m for m in third_party if DISTRIBUTION.get(m, m).lower() not in declared())
    assert not missing, f"imported but not declared in pyproject.toml: {missing}"


def test_starting_the_cli_loads_neither_torchvision_nor_sklearn_ensemble() -> None:
    """Each costs seconds of every start (torchvision loads torch._dynamo); `search.run --help` and every refusal
    paid them, as did each test that starts the CLI. Both load where they are used."""
    probe = "import sys, search.run; print(sorted(m for m in ('torchvision', 'sklearn.ensemble') if m in sys.modules))"
    loaded = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert loaded.returncode == 0, loaded.stderr[-2000:]
    assert loaded.stdout.strip() == "[]"
