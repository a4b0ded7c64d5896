"""`make test` (hack/test.sh) passes only when tests ran and passed.

A tier whose marker or -k matches nothing used to exit 0 ("no tests were collected" turned
into success), so a renamed marker or a mistyped -k in CI looked green forever.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

REPO = Path(__file__).resolve().parents[2]
NO_TESTS_COLLECTED = 5  # pytest.ExitCode.NO_TESTS_COLLECTED


def test_a_run_that_collects_nothing_fails() -> None:
    # The set-up steps find everything in place (this suite runs under hack/test.sh, which
    # made it): what is measured is the script's exit status, not the set-up.
    result = subprocess.run(
        ["bash", "hack/test.sh", "tests/unit/test_test_command.py", "-k",
         "no_test_has_this_name", "-p", "no:cacheprovider"],
        cwd=REPO, env=os.environ.copy(), capture_output=True, text=True, timeout=300,
        check=False)
    assert result.returncode == NO_TESTS_COLLECTED == pytest.ExitCode.NO_TESTS_COLLECTED, (
        result.stdout[-2000:] + result.stderr[-2000:])
