"""The content tags of hack/images.sh: an image is rebuilt when, and only when, something
its Dockerfile target copies changes, and its build context holds exactly those files."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

pytestmark = pytest.mark.unit

REPO = Path(__file__).resolve().parents[2]

DOCKERFILE = """\
# syntax=docker/dockerfile:1
ARG PYTHON_IMAGE=python:3.11-slim-bookworm
FROM ${PYTHON_IMAGE} AS base
COPY requirements/build.txt requirements/
RUN pip install -r requirements/build.txt

FROM base AS operator
COPY requirements/operator.txt requirements/
COPY pyproject.toml ./
COPY kaito ./kaito
COPY controller ./controller
COPY --from=base /etc/hostname /tmp/ignored
RUN pip install .

FROM base AS runtime
COPY ["requirements/runtime.txt", \\
      "requirements/nodeps.txt", "requirements/"]
COPY pyproject.toml ./
COPY kaito ./kaito
COPY runtime ./runtime
"""


@pytest.fixture(scope="module")
def inputs() -> ModuleType:
    spec = importlib.util.spec_from_file_location("images_inputs", REPO / "hack/images/inputs.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while decorating
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    files = {
        "Dockerfile": DOCKERFILE,
        "pyproject.toml": "[project]\nname = 'x'\n",
        "requirements/build.txt": "setuptools==1\n",
        "requirements/operator.txt": "aiohttp==1\n",
        "requirements/runtime.txt": "torch==1\n",
        "requirements/nodeps.txt": "model==1\n",
        "kaito/__init__.py": "",
        "kaito/cli.py": "def main(): pass\n",
        "controller/__init__.py": "",
        "runtime/__init__.py": "",
        "runtime/serve.py": "PORT = 5000\n",
        "tests/test_x.py": "",
        "README.md": "docs\n",
        ".gitignore": "__pycache__/\n*.pyc\n",
        "kaito/__pycache__/cli.cpython-311.pyc": "bytecode",
    }
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
    return tmp_path


def _tag(inputs: ModuleType, tree: Path, target: str, base: str = "b1") -> str:
    tag: str = inputs.target_tag(tree, tree / "Dockerfile", target, {"base": base})
    return tag


def test_sources_per_target_follow_the_stage_chain(inputs: ModuleType) -> None:
    assert inputs.target_sources(DOCKERFILE, "operator") == [
        "requirements/build.txt", "requirements/operator.txt", "pyproject.toml", "kaito",
        "controller"]
    assert inputs.target_sources(DOCKERFILE, "runtime") == [
        "requirements/build.txt", "requirements/runtime.txt", "requirements/nodeps.txt",
        "pyproject.toml", "kaito", "runtime"]
    with pytest.raises(KeyError, match="no stage 'gpu'"):
        inputs.target_sources(DOCKERFILE, "gpu")


def test_the_project_dockerfile_targets_copy_what_their_images_need(inputs: ModuleType) -> None:
    text = (REPO / "Dockerfile").read_text()
    operator = inputs.target_sources(text, "operator")
    runtime = inputs.target_sources(text, "runtime")
    assert {"controller", "webhook", "requirements/operator.txt"} <= set(operator)
    assert "runtime" not in operator and "requirements/runtime.txt" not in operator
    assert {"runtime", "requirements/runtime.txt"} <= set(runtime)
    assert "controller" not in runtime and "webhook" not in runtime


def test_tag_is_stable_for_an_unchanged_tree(inputs: ModuleType, tree: Path) -> None:
    assert _tag(inputs, tree, "runtime") == _tag(inputs, tree, "runtime")
    assert len(_tag(inputs, tree, "runtime")) == inputs.TAG_LENGTH


def test_a_source_edit_changes_only_the_targets_that_copy_it(
    inputs: ModuleType, tree: Path
) -> None:
    operator, runtime = _tag(inputs, tree, "operator"), _tag(inputs, tree, "runtime")
    (tree / "runtime/serve.py").write_text("PORT = 5001\n")
    assert _tag(inputs, tree, "runtime") != runtime
    assert _tag(inputs, tree, "operator") == operator
    (tree / "kaito/cli.py").write_text("def main(): return 1\n")
    assert _tag(inputs, tree, "operator") != operator


def test_files_nobody_copies_and_ignored_files_leave_tags_alone(
    inputs: ModuleType, tree: Path
) -> None:
    before = {t: _tag(inputs, tree, t) for t in ("operator", "runtime")}
    (tree / "tests/test_x.py").write_text("def test(): pass\n")
    (tree / "README.md").write_text("other docs\n")
    (tree / "kaito/__pycache__/cli.cpython-311.pyc").write_text("other bytecode")
    (tree / "runtime/__pycache__").mkdir()
    (tree / "runtime/__pycache__/serve.cpython-311.pyc").write_text("bytecode")
    assert {t: _tag(inputs, tree, t) for t in before} == before


def test_new_files_modes_and_the_base_image_count(inputs: ModuleType, tree: Path) -> None:
    runtime = _tag(inputs, tree, "runtime")
    assert _tag(inputs, tree, "runtime", base="b2") != runtime
    (tree / "runtime/new.py").write_text("")  # untracked, not ignored: it is copied
    with_new_file = _tag(inputs, tree, "runtime")
    assert with_new_file != runtime
    (tree / "runtime/new.py").chmod(0o755)
    assert _tag(inputs, tree, "runtime") != with_new_file


def test_a_dockerfile_edit_changes_the_tag(inputs: ModuleType, tree: Path) -> None:
    operator = _tag(inputs, tree, "operator")
    dockerfile = tree / "Dockerfile"
    dockerfile.write_text(dockerfile.read_text().replace("RUN pip install .", "RUN true"))
    assert _tag(inputs, tree, "operator") != operator


def test_the_staged_context_holds_exactly_the_hashed_files(
    inputs: ModuleType, tree: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    context = tmp_path_factory.mktemp("context")
    files = inputs.target_files(tree, tree / "Dockerfile", "operator")
    inputs.stage_context(tree, files, context)
    staged = sorted(str(p.relative_to(context)) for p in context.rglob("*") if p.is_file())
    assert staged == files
    assert "kaito/__pycache__/cli.cpython-311.pyc" not in staged
    assert "runtime/serve.py" not in staged
    # Fixed timestamps: buildah's layer cache then hits in a fresh clone as well.
    assert {os.stat(context / f).st_mtime for f in files} == {inputs.STAGED_MTIME_SECONDS}


def test_a_copied_path_that_is_missing_is_an_error(inputs: ModuleType, tree: Path) -> None:
    (tree / "controller/__init__.py").unlink()
    (tree / "controller").rmdir()
    with pytest.raises(FileNotFoundError, match="controller"):
        _tag(inputs, tree, "operator")
