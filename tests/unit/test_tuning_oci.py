"""OCI helpers without a registry: references, dockerconfigjson credentials, annotations."""

from __future__ import annotations

import base64
import json

import pytest

from runtime.oci import (
    ANNOTATION_BASE_MODEL,
    ANNOTATION_DATASET_DIGEST,
    ANNOTATION_HYPERPARAMETERS,
    Reference,
    RegistryAuthError,
    RegistryError,
    build_annotations,
    credentials_for,
)

pytestmark = pytest.mark.unit


def test_references_parse() -> None:
    assert Reference.parse("myacr.azurecr.io/adapters/phi:0.0.1") == Reference(
        "myacr.azurecr.io", "adapters/phi", tag="0.0.1"
    )
    assert Reference.parse("127.0.0.1:5000/a") == Reference("127.0.0.1:5000", "a")
    by_digest = Reference.parse("127.0.0.1:5000/a/b@sha256:abc")
    assert by_digest.digest == "sha256:abc" and str(by_digest) == "127.0.0.1:5000/a/b@sha256:abc"
    assert str(Reference.parse("h:1/r")) == "h:1/r:latest"
    with pytest.raises(RegistryError, match="no registry host"):
        Reference.parse("justaname")


def test_credentials_from_auth_or_username_password() -> None:
    auth = base64.b64encode(b"robot:s3cr:et").decode()
    secret = json.dumps({"auths": {"https://myacr.azurecr.io": {"auth": auth}}})
    creds = credentials_for(secret, "myacr.azurecr.io")
    assert (creds.username, creds.password) == ("robot", "s3cr:et")
    plain = json.dumps({"auths": {"h:5000": {"username": "u", "password": "p"}}})
    assert credentials_for(plain, "h:5000").password == "p"


def test_missing_or_malformed_credentials_are_clear() -> None:
    secret = json.dumps({"auths": {"other.io": {"auth": "eDp5"}}})
    with pytest.raises(RegistryAuthError, match=r"no credentials for registry h:5000 .*other.io"):
        credentials_for(secret, "h:5000")
    with pytest.raises(RegistryAuthError, match="not a dockerconfigjson"):
        credentials_for("{not json", "h:5000")


def test_annotations_say_what_the_adapter_is() -> None:
    annotations = build_annotations(
        base_model="phi-3-mini-4k-instruct",
        method="qlora",
        dataset_digest="sha256:00",
        hyperparameters={"r": 8, "learning_rate": 1e-4},
        evaluation={"before": {"loss": 2.0}, "after": {"loss": 1.0}},
    )
    assert annotations[ANNOTATION_BASE_MODEL] == "phi-3-mini-4k-instruct"
    assert annotations[ANNOTATION_DATASET_DIGEST] == "sha256:00"
    assert json.loads(annotations[ANNOTATION_HYPERPARAMETERS]) == {"learning_rate": 1e-4, "r": 8}
    assert all(isinstance(value, str) for value in annotations.values())


@pytest.mark.parametrize(
    ("host", "expected"),
    [("127.0.0.1:5000", True), ("localhost:5000", True), ("[::1]:5000", True), ("::1", True),
     ("myacr.azurecr.io", False), ("10.0.0.5:5000", False)],
)
def test_only_loopback_registries_are_spoken_to_over_http(host: str, expected: bool) -> None:
    from runtime.oci import _is_loopback

    assert _is_loopback(host) is expected


def test_registry_challenges_parse() -> None:
    from runtime.oci import _challenge

    scheme, params = _challenge(
        'Bearer realm="https://auth.example/token",service="registry.example",'
        'scope="repository:team/a:pull,push",error="insufficient_scope"'
    )
    assert scheme == "bearer"
    assert params == {
        "realm": "https://auth.example/token", "service": "registry.example",
        "scope": "repository:team/a:pull,push", "error": "insufficient_scope",
    }
    assert _challenge('Basic realm="Registry Realm"') == ("basic", {"realm": "Registry Realm"})
    assert _challenge("Bearer realm=https://a/t,service=s") == (
        "bearer", {"realm": "https://a/t", "service": "s"}
    )
