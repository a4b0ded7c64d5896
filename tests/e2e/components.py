"""What the e2e modules share to run our components as real processes: a poll-until helper,
`python -m <component>` started against the test cluster, restartable, killable,
stoppable and scrapable (the controller and the provisioner both run this way), and a
watch that records every revision of one object, to see the order of its conditions."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, Self

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


def delete_workspaces(kubectl: Callable[..., subprocess.CompletedProcess[str]],
                      timeout: float = 180) -> None:
    """Delete every Workspace and wait until all are gone. A module whose controller is
    still running calls this before stopping it: a workspace left behind keeps its
    finalizer, and the next module's controller would reconcile it (claims for nodes
    nobody makes, writes a test counts)."""
    kubectl("delete", "workspaces", "--all", "--all-namespaces", "--wait=false", check=False)

    def none_left() -> bool:
        listed = kubectl("get", "workspaces", "--all-namespaces", "-o", "json", check=False)
        return listed.returncode == 0 and not json.loads(listed.stdout)["items"]

    wait_for("every workspace gone", none_left, timeout=timeout)


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


class Revisions:
    """Every revision of one object the API server stores, in the order it stored them:
    `kubectl get --watch` started before the object exists. A poll can miss a revision or
    see two writes at once, so only this tells which condition turned True first."""

    def __init__(self, kubectl: Path, kubeconfig: Path, resource: str, name: str,
                 namespace: str | None = None) -> None:
        argv = [str(kubectl), "--kubeconfig", str(kubeconfig), "get", resource,
                "--field-selector", f"metadata.name={name}", "--watch", "-o", "json"]
        if namespace is not None:
            argv += ["-n", namespace]
        self.objects: list[dict[str, Any]] = []
        self._process = subprocess.Popen(argv, stdout=subprocess.PIPE,
                                         stderr=subprocess.DEVNULL, text=True)
        self._reader = threading.Thread(target=self._read, name=f"watch {resource}/{name}",
                                        daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self._process.stdout is not None
        decoder, pending = json.JSONDecoder(), ""
        for line in self._process.stdout:  # kubectl prints each revision as indented JSON
            pending += line
            try:
                obj, end = decoder.raw_decode(pending.lstrip())
            except ValueError:
                continue  # the object's remaining lines are still to come
            self.objects.append(obj)
            pending = pending.lstrip()[end:]

    def stop(self) -> None:
        """End the watch (again: nothing); the revisions seen stay."""
        if self._process.poll() is None:
            self._process.terminate()
            self._process.wait(timeout=10)
        self._reader.join(timeout=10)
        if self._process.stdout is not None:
            self._process.stdout.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 trace: TracebackType | None) -> None:
        self.stop()

    def first_true(self, condition_type: str) -> int | None:
        """The index of the first revision whose ``condition_type`` condition is True."""
        for index, obj in enumerate(list(self.objects)):
            for condition in (obj.get("status") or {}).get("conditions") or []:
                if condition.get("type") == condition_type and condition.get("status") == "True":
                    return index
        return None

    def assert_became_true_in_order(self, condition_types: Sequence[str]) -> None:
        """Each condition turned True in the same write as the one before it or in a
        later one, never in an earlier one; each of them did turn True."""
        firsts: dict[str, int] = {}
        for condition_type in condition_types:
            index = self.first_true(condition_type)
            assert index is not None, (
                f"{condition_type} never True in {len(self.objects)} revisions")
            firsts[condition_type] = index
        indices = list(firsts.values())
        assert indices == sorted(indices), (
            f"expected {list(condition_types)} in this order; the first revision (of "
            f"{len(self.objects)}) where each was True: {firsts}")
