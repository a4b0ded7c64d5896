"""The reconcile contract, as in controller-runtime.

A reconciler is level-based and idempotent: it is told only *which* object (`Request`)
to look at, reads the current state itself, and returns a `Result`. Raising any
exception means "retry with per-item backoff"; raising `TerminalError` means the input
is wrong and retrying cannot help, so the error is recorded and the key is dropped
until the object changes again.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from controller.cache import split_key


@dataclass(frozen=True, order=True)
class Request:
    """The object to reconcile; `namespace` is None for cluster-scoped objects."""

    name: str
    namespace: str | None = None

    def __post_init__(self) -> None:
        if not self.name or "/" in self.name:
            raise ValueError(f"invalid object name {self.name!r}")
        if self.namespace is not None and (not self.namespace or "/" in self.namespace):
            raise ValueError(f"invalid namespace {self.namespace!r}")

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}" if self.namespace else self.name

    @classmethod
    def from_key(cls, key: str) -> Request:
        namespace, name = split_key(key)
        return cls(name=name, namespace=namespace)

    def __str__(self) -> str:
        return self.key


@dataclass(frozen=True)
class Result:
    """What to do after a successful reconcile.

    `requeue_after_seconds` schedules another reconcile (and resets the backoff);
    `requeue` alone asks for a rate-limited retry. The default means "done".
    """

    requeue: bool = False
    requeue_after_seconds: float | None = None

    def __post_init__(self) -> None:
        if self.requeue_after_seconds is not None and self.requeue_after_seconds < 0:
            raise ValueError("requeue_after_seconds must be >= 0")


class TerminalError(Exception):
    """A reconcile failure that retrying cannot fix (bad user input)."""


class Reconciler(Protocol):
    async def reconcile(self, request: Request) -> Result:
        """Drive the object named by `request` toward its desired state."""
