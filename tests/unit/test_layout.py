"""The repository's shape: our packages import from here, and the boundaries hold."""

from __future__ import annotations

import ast
import importlib
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

REPO = Path(__file__).resolve().parents[2]
PACKAGES = ("kaito", "crds", "presets", "webhook", "controller", "runtime")


@pytest.mark.parametrize("package", PACKAGES)
def test_package_imports_from_this_repository(package: str) -> None:
    # Each name also exists on PyPI; the one imported must be ours.
    module = importlib.import_module(package)
    assert module.__file__ is not None
    assert Path(module.__file__).resolve().is_relative_to(REPO)


def _imported_top_levels(package: str) -> dict[str, set[str]]:
    found: dict[str, set[str]] = {}
    for path in (REPO / package).rglob("*.py"):
        tree = ast.parse(path.read_text(), filename=str(path))
        names: set[str] = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names.update(alias.name.split(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names.add(node.module.split(".")[0])
        found[str(path.relative_to(REPO))] = names
    return found


FORBIDDEN = {
    "crds": {"presets", "webhook", "controller", "runtime", "kaito", "torch"},
    "presets": {"webhook", "controller", "runtime", "kaito", "torch"},
    "controller": {"webhook", "runtime", "torch", "transformers", "peft"},
    "webhook": {"controller", "runtime", "torch", "transformers", "peft"},
    "runtime": {"controller", "webhook", "kubernetes_asyncio", "kaito"},
    "kaito": {"torch", "transformers", "peft"},
}


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_import_boundaries(package: str) -> None:
    violations = {
        path: sorted(names & FORBIDDEN[package])
        for path, names in _imported_top_levels(package).items()
        if names & FORBIDDEN[package]
    }
    assert violations == {}


def test_kaito_version_command() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "kaito", "version"], capture_output=True, text=True, cwd=REPO,
        check=True,
    )
    assert result.stdout.strip() == importlib.import_module("kaito").__version__
