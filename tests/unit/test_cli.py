"""`kaito` in the runtime image, which has no operator packages (cryptography)."""

from __future__ import annotations

import sys

import pytest


def test_help_and_workload_commands_work_without_the_operator_packages(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    for name in [m for m in sys.modules if m.startswith(("kaito.devcluster", "kaito.demo",
                                                          "cryptography"))]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "cryptography", None)  # import fails, as in the image
    from kaito.cli import build_parser, main

    with pytest.raises(SystemExit) as exit_info:
        build_parser().parse_args(["--help"])
    assert exit_info.value.code == 0
    assert main(["dev", "up"]) == 2
    assert "not available in this installation" in capsys.readouterr().err
