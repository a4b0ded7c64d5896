"""One control-plane binary run as a child process, with its log in a file.

Stopping sends SIGTERM, then SIGKILL after a grace period; `kill` is the abrupt path
fault tests use. Starting again reuses the same command line, so ports and data stay.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path


def free_port() -> int:
    """A TCP port on loopback that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_until(
    is_ready: Callable[[], bool], *, timeout_seconds: float, what: str,
    process: ManagedProcess | None = None,
) -> None:
    deadline = time.monotonic() + timeout_seconds
    while time.monotonic() < deadline:
        if process is not None and not process.is_running():
            raise RuntimeError(
                f"{what}: process exited early (code {process.returncode}); "
                f"last log lines:\n{process.log_tail()}"
            )
        if is_ready():
            return
        time.sleep(0.1)
    tail = process.log_tail() if process is not None else ""
    raise TimeoutError(f"{what}: not ready after {timeout_seconds:.0f} s\n{tail}")


class ManagedProcess:
    def __init__(self, name: str, argv: list[str], log_path: Path) -> None:
        self.name = name
        self.argv = argv
        self.log_path = log_path
        self._popen: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int | None:
        return self._popen.pid if self._popen else None

    @property
    def returncode(self) -> int | None:
        return self._popen.poll() if self._popen else None

    def start(self) -> None:
        if self.is_running():
            return
        log = self.log_path.open("ab")
        try:
            self._popen = subprocess.Popen(
                self.argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                start_new_session=True,  # a Ctrl-C in the test runner reaches us, not them
            )
        finally:
            log.close()

    def is_running(self) -> bool:
        return self._popen is not None and self._popen.poll() is None

    def stop(self, grace_seconds: float = 10.0) -> None:
        if not self.is_running():
            return
        assert self._popen is not None
        self._popen.terminate()
        try:
            self._popen.wait(timeout=grace_seconds)
        except subprocess.TimeoutExpired:
            self.kill()

    def kill(self) -> None:
        if not self.is_running():
            return
        assert self._popen is not None
        os.kill(self._popen.pid, signal.SIGKILL)
        self._popen.wait(timeout=30)

    def log_tail(self, line_count: int = 30) -> str:
        try:
            lines = self.log_path.read_text(errors="replace").splitlines()
        except FileNotFoundError:
            return ""
        return "\n".join(lines[-line_count:])
