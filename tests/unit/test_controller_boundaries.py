"""The controller package stays inside its boundaries: no webhook, runtime or torch."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

import controller

pytestmark = pytest.mark.unit

REPO_ROOT = Path(__file__).resolve().parents[2]


def test_controller_is_imported_from_this_repository() -> None:
    assert Path(controller.__file__).resolve().parent == REPO_ROOT / "controller"


def test_importing_every_controller_module_pulls_in_no_forbidden_package() -> None:
    modules = sorted(
        ".".join(path.relative_to(REPO_ROOT).with_suffix("").parts)
        for path in (REPO_ROOT / "controller").rglob("*.py")
        if path.name != "__init__.py"
    )
    code = (
        "import importlib, sys\n"
        f"for name in {modules!r}: importlib.import_module(name)\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in {'torch', 'webhook', 'runtime'})\n"
        "print(','.join(bad))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True,
                            text=True, check=True)
    assert result.stdout.strip() == ""
