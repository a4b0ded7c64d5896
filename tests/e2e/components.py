"""What the e2e modules share to run our components as real processes: a poll-until helper
and `python -m <component>` started against the test cluster, restartable, killable,
stoppable and scrapable (the controller and the provisioner both run this way)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

from kaito.devcluster.process import free_port

REPO = Path(__file__).resolve().parents[2]


def wait_for(what: str, check: Callable[[], Any], *, timeout: float = 120,
             interval: float = 0.25, tick: Callable[[], None] | None = None) -> Any:
    """``check()``'s first truthy value; ``tick()`` (if given) runs before each look."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if tick is not None:
            tick()
        value = check()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


class ComponentProcess:
    """`python -m <module>` with the shared controller flags, on a free metrics port."""

    def __init__(self, module: str, kubeconfig: Path, log_path: Path, *, args: list[str],
                 env: dict[str, str] | None = None) -> None:
        self.module, self.kubeconfig, self.log_path = module, kubeconfig, log_path
        self.args, self.env = args, env or {}
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        env = {**os.environ, "PYTHONPATH": str(REPO), **self.env}
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", self.module, "--kubeconfig", str(self.kubeconfig),
                 "--port", str(self.port), "--bind-host", "127.0.0.1", "--log-format", "text",
                 *self.args],
                cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
        wait_for(f"{self.module}'s /readyz", self._is_ready, timeout=60)

    def _is_ready(self) -> bool:
        assert self.process is not None and self.process.poll() is None, (
            self.log_path.read_text()[-3000:])
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/readyz", timeout=2) as r:
                return bool(r.status == 200)
        except OSError:
            return False

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait()
        self.process = None

    def stop(self) -> int | None:
        if self.process is None:
            return None
        self.process.send_signal(signal.SIGTERM)
        code = self.process.wait(timeout=60)
        self.process = None
        return code

    def metrics(self) -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/metrics", timeout=5) as r:
            return str(r.read().decode())

    def metric(self, name: str, **labels: str) -> float:
        """The sum of ``name``'s samples carrying every ``labels`` pair."""
        total = 0.0
        for line in self.metrics().splitlines():
            if not line.startswith(name + "{") and not line.startswith(name + " "):
                continue
            if all(f'{key}="{value}"' in line for key, value in labels.items()):
                total += float(line.rsplit(" ", 1)[1])
        return total

    def tail(self) -> str:
        return self.log_path.read_text()[-5000:]
