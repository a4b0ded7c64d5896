"""Every component logs one layout: the same JSON keys from the controller to the runtimes."""

from __future__ import annotations

import ast
import io
import json
import logging
import re
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest

from crds.logs import RECORD_KEYS, configure_logging

pytestmark = pytest.mark.unit

REPO = Path(__file__).resolve().parents[2]
PACKAGES = ("kaito", "crds", "presets", "webhook", "controller", "runtime")
# the processes Kaito runs, each with the module that sets its logging up
ENTRY_POINTS = {
    "controller": "controller/__main__.py",
    "node provisioner": "controller/provisioning/__main__.py",
    "webhook": "webhook/__main__.py",
    "tuning": "runtime/tuning/__main__.py",
    "serving": "runtime/serving/__main__.py",
    "data fetch": "runtime/fetch.py",
    "model fetch": "runtime/fetch_model.py",
    "adapter push/pull": "runtime/oci.py",
    "adapter pull (serving init)": "runtime/adapter_pull.py",
}
SHARED = "crds/logs.py"


def _sources() -> Iterator[tuple[str, ast.Module]]:
    for package in PACKAGES:
        for path in sorted((REPO / package).rglob("*.py")):
            relative = str(path.relative_to(REPO))
            yield relative, ast.parse(path.read_text(encoding="utf-8"), filename=relative)


def _called_names(tree: ast.AST) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            func = node.func
            names.add(func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", ""))
    return names


def test_one_formatter_for_the_whole_repository() -> None:
    formatters, setups = [], []
    for path, tree in _sources():
        if path == SHARED:
            continue
        for node in ast.walk(tree):
            if isinstance(node, ast.ClassDef) and any(
                "Formatter" in ast.unparse(base) for base in node.bases
            ):
                formatters.append(f"{path}:{node.name}")
        if _called_names(tree) & {"basicConfig", "setFormatter"}:
            setups.append(path)
    assert formatters == [], "log formatters outside crds/logs.py"
    assert setups == [], "logging set up by hand instead of crds.logs.configure_logging"


@pytest.mark.parametrize("component", sorted(ENTRY_POINTS))
def test_every_component_configures_the_shared_layout(component: str) -> None:
    tree = ast.parse((REPO / ENTRY_POINTS[component]).read_text(encoding="utf-8"))
    assert "configure_logging" in _called_names(tree)
    imported = {node.module for node in ast.walk(tree)
                if isinstance(node, ast.ImportFrom) and any(
                    alias.name == "configure_logging" for alias in node.names)}
    assert imported == {"crds.logs"}


@pytest.fixture
def captured() -> Iterator[io.StringIO]:
    root = logging.getLogger()
    saved = (root.handlers[:], root.level, warnings.showwarning)
    stream = io.StringIO()
    yield stream
    root.handlers[:], root.level, warnings.showwarning = saved


def test_json_records_have_the_shared_keys(captured: io.StringIO) -> None:
    configure_logging("INFO", "json", captured)
    log = logging.getLogger("runtime.tuning")
    log.info("step done", extra={"step": 3, "loss": 1.25})
    try:
        raise ValueError("boom")
    except ValueError:
        log.exception("push failed", extra={"reference": "r.io/a:1"})
    log.debug("not shown at INFO")
    first, second = (json.loads(line) for line in captured.getvalue().splitlines())
    assert list(first) == [*RECORD_KEYS, "step", "loss"]
    assert first["level"] == "info" and first["logger"] == "runtime.tuning"
    assert first["msg"] == "step done" and first["step"] == 3
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", first["ts"])
    assert list(second) == [*RECORD_KEYS, "reference", "exception"]
    assert second["level"] == "error" and "ValueError: boom" in second["exception"]


def test_python_warnings_are_records_of_the_shared_layout(captured: io.StringIO) -> None:
    configure_logging("INFO", "json", captured)
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        warnings.warn("use the new flag", DeprecationWarning, stacklevel=1)
    (record,) = (json.loads(line) for line in captured.getvalue().splitlines())
    assert list(record)[:4] == list(RECORD_KEYS)
    assert (record["level"], record["logger"], record["msg"]) == (
        "warning", "py.warnings", "python warning")
    assert record["category"] == "DeprecationWarning"
    assert record["warning"] == "use the new flag"
    assert record["source"].startswith(__file__ + ":")


def test_runtime_commands_report_errors_as_log_records() -> None:
    """No runtime module writes free text to stderr: a failure is a log record (its
    fields are what a log pipeline and the tests read)."""
    writers = []
    for path, tree in _sources():
        if not path.startswith("runtime/"):
            continue
        for node in ast.walk(tree):
            if isinstance(node, ast.Call) and "stderr" in ast.unparse(node) and (
                    isinstance(node.func, ast.Name) and node.func.id == "print"
                    or isinstance(node.func, ast.Attribute) and node.func.attr == "write"):
                writers.append(f"{path}:{node.lineno}")
    assert writers == []


def test_text_layout_carries_the_same_fields(captured: io.StringIO) -> None:
    configure_logging("INFO", "text", captured)
    logging.getLogger("webhook").warning("certificate renewed", extra={"days_left": 29})
    line = captured.getvalue().strip()
    assert re.fullmatch(
        r"\S+Z warning webhook: certificate renewed days_left=29", line
    ), line
