"""Plain HTTP only for the registries the operator names (an in-cluster test registry)."""

from __future__ import annotations

import pytest

from runtime.oci import ENV_PLAIN_HTTP, _client


def test_only_listed_registries_are_reached_over_plain_http(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv(ENV_PLAIN_HTTP, "10.244.0.1:5002, registry.local:80")
    assert _client("10.244.0.1:5002", None).prefix == "http"
    assert _client("registry.local:80", None).prefix == "http"
    assert _client("10.244.0.1:5003", None).prefix == "https"
    assert _client("myacr.azurecr.io", None).prefix == "https"
    monkeypatch.delenv(ENV_PLAIN_HTTP)
    assert _client("10.244.0.1:5002", None).prefix == "https"
