"""The lock files under requirements/ match pyproject.toml: every declared dependency is
locked at a version its specifier allows, with hashes, in the lock of each extra that
needs it. A dependency added to pyproject.toml without `make lock` fails here."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

pytestmark = pytest.mark.unit

REPO = Path(__file__).resolve().parents[2]
LOCKS = REPO / "requirements"
_PINNED = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s\\;]+)")


def _locked(name: str) -> dict[str, str]:
    """``{canonical name: version}`` of a lock file."""
    lines = (LOCKS / name).read_text().splitlines()
    matches = (_PINNED.match(line) for line in lines)
    return {canonicalize_name(m.group(1)): m.group(2) for m in matches if m}


def _declared() -> dict[str, list[Requirement]]:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"]
    base = [Requirement(text) for text in project["dependencies"]]
    return {name: base + [Requirement(text) for text in extras[name]] for name in extras}


@pytest.mark.parametrize(
    ("lock", "extras"),
    [("dev.txt", ("operator", "runtime", "dev")), ("operator.txt", ("operator",)),
     ("runtime.txt", ("runtime",))],
)
def test_every_dependency_is_locked_at_an_allowed_version(lock: str, extras: tuple[str, ...]) -> None:
    pins = _locked(lock)
    declared = _declared()
    for extra in extras:
        for requirement in declared[extra]:
            version = pins.get(canonicalize_name(requirement.name))
            assert version is not None, f"{requirement.name} ({extra}) is not in {lock}: make lock"
            assert requirement.specifier.contains(version, prereleases=True), (
                f"{lock} locks {requirement.name}=={version}, outside {requirement}: make lock"
            )


def test_the_operator_lock_has_no_torch() -> None:
    assert "torch" not in _locked("operator.txt")


def test_image_and_venv_locks_agree() -> None:
    everything = _locked("dev.txt")
    for lock in ("operator.txt", "runtime.txt"):
        for name, version in _locked(lock).items():
            assert everything.get(name) == version, f"{lock}: {name}=={version} vs dev.txt"


def test_every_lock_entry_has_a_hash() -> None:
    for lock in ("dev.txt", "operator.txt", "runtime.txt", "nodeps.txt", "build.txt"):
        text = (LOCKS / lock).read_text()
        assert _locked(lock), lock
        for block in re.split(r"\n(?=[A-Za-z0-9])", text):
            if _PINNED.match(block):
                assert "--hash=sha256:" in block, block.splitlines()[0]
