"""The tuned adapter as an OCI artifact: push with the imagePushSecret, pull for serving.

Credentials come from a ``kubernetes.io/dockerconfigjson`` secret's text. The ``oras``
client moves the blobs and manifests; ``RegistryAuth`` answers the registry's challenge
either way registries ask: ``Basic`` (htpasswd) or ``Bearer`` (ACR, GHCR, Docker Hub,
Harbor: a token from the challenge's realm, got with the same user and password, kept per
scope). HTTPS is verified against the system CAs or, for a private CA, the PEM bundle
named by ``KAITO_REGISTRY_CA_FILE`` (or ``--ca-file``), or the registry's own bundle in
the folder ``KAITO_REGISTRY_CA_DIR`` (the operator's registry CA ConfigMap, mounted;
crds/registry_ca.py names its keys), trusted with the system roots; plain HTTP only for
``KAITO_REGISTRY_INSECURE=true`` or a loopback registry that does not speak TLS. Before
any upload a ping of ``/v2/`` through that flow turns a refused password, an untrusted
certificate or an unreachable registry into one clear error instead of oras' generic one
(or its minutes of retries). The manifest carries annotations saying what the artifact
is: base model, method, dataset digest, hyper-parameters and evaluation. A pull checks
every file against its digest.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import ipaddress
import json
import logging
import os
import re
import socket
import ssl
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import requests
from oras.auth import AuthenticationException, TokenAuth

from crds.logs import configure_logging
from crds.registry_ca import ENV_CA_DIR, ca_keys

log = logging.getLogger(__name__)

ARTIFACT_PREFIX = "sh.kaito.adapter."
ANNOTATION_BASE_MODEL = ARTIFACT_PREFIX + "base-model"
ANNOTATION_METHOD = ARTIFACT_PREFIX + "method"
ANNOTATION_DATASET_DIGEST = ARTIFACT_PREFIX + "dataset-digest"
ANNOTATION_HYPERPARAMETERS = ARTIFACT_PREFIX + "hyperparameters"
ANNOTATION_EVALUATION = ARTIFACT_PREFIX + "evaluation"
ANNOTATION_CREATED = "org.opencontainers.image.created"
ANNOTATION_DESCRIPTION = "org.opencontainers.image.description"
ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors")
_PING_TIMEOUT_SECONDS = 15
ENV_CA_FILE = "KAITO_REGISTRY_CA_FILE"  # PEM bundle that verifies the registry's TLS
ENV_INSECURE = "KAITO_REGISTRY_INSECURE"  # "true": plain HTTP to every registry
# Comma-separated host:port of registries reached over plain HTTP (the operator's
# KAITO_WORKSPACE__PLAIN_HTTP_REGISTRIES, for a registry inside the cluster).
ENV_PLAIN_HTTP = "KAITO_REGISTRY_PLAIN_HTTP"
_CHALLENGE_PARAM = re.compile(r'(\w+)=(?:"([^"]*)"|([^,\s]*))')


class RegistryError(Exception):
    """Pushing or pulling the artifact failed; the message says why and where."""


class RegistryAuthError(RegistryError, AuthenticationException):  # type: ignore[misc]
    """The registry rejected the credentials (or none were given for it).

    Also an oras ``AuthenticationException``: the one kind its request retry loop (five
    tries, 131 s of back-off) lets through at once, as retrying cannot help.
    """


class RegistryTLSError(RegistryError, AuthenticationException):  # type: ignore[misc]
    """The registry's (or its token service's) certificate is not trusted; not retried."""


@dataclass(frozen=True)
class Credentials:
    username: str
    password: str


@dataclass(frozen=True)
class Reference:
    """``host[:port]/repository[:tag|@digest]`` split into its parts."""

    host: str
    repository: str
    tag: str | None = None
    digest: str | None = None

    @classmethod
    def parse(cls, text: str) -> Reference:
        if "/" not in text:
            raise RegistryError(f"image reference {text!r} has no registry host")
        host, rest = text.split("/", 1)
        digest = tag = None
        if "@" in rest:
            rest, digest = rest.split("@", 1)
        elif ":" in rest.rsplit("/", 1)[-1]:
            rest, tag = rest.rsplit(":", 1)
        if not rest or not host:
            raise RegistryError(f"image reference {text!r} is incomplete")
        return cls(host=host, repository=rest, tag=tag, digest=digest)

    def with_digest(self, digest: str) -> str:
        return f"{self.host}/{self.repository}@{digest}"

    def __str__(self) -> str:
        if self.digest:
            return self.with_digest(self.digest)
        return f"{self.host}/{self.repository}:{self.tag or 'latest'}"


def credentials_for(dockerconfigjson: str, host: str) -> Credentials:
    """The user and password for ``host`` in a ``.dockerconfigjson`` text."""
    try:
        document = json.loads(dockerconfigjson)
        auths: dict[str, Any] = document["auths"]
    except (json.JSONDecodeError, KeyError, TypeError) as err:
        raise RegistryAuthError("the push secret is not a dockerconfigjson ({auths: ...})") from err
    wanted = {host, f"https://{host}", f"http://{host}", f"https://{host}/v1/"}
    for key, entry in auths.items():
        if key.rstrip("/") not in wanted and key not in wanted:
            continue
        if entry.get("username") and entry.get("password") is not None:
            return Credentials(str(entry["username"]), str(entry["password"]))
        if entry.get("auth"):
            decoded = base64.b64decode(entry["auth"]).decode()
            username, _, password = decoded.partition(":")
            return Credentials(username, password)
    raise RegistryAuthError(
        f"the push secret has no credentials for registry {host} (it has: {sorted(auths)})"
    )


def _is_loopback(host: str) -> bool:
    """Whether ``host`` (``name[:port]`` or ``[v6]:port``) is this machine."""
    if host.startswith("["):
        name = host[1 : host.index("]")] if "]" in host else host[1:]
    elif host.count(":") == 1:
        name = host.split(":", 1)[0]
    else:
        name = host
    if name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def _split_host(host: str) -> tuple[str, int]:
    """``name[:port]`` or ``[v6][:port]`` as (name, port); HTTPS' 443 when none is given."""
    if host.startswith("["):
        name, _, rest = host[1:].partition("]")
        return name, int(rest[1:]) if rest.startswith(":") else 443
    if host.count(":") == 1:
        name, port = host.split(":", 1)
        return name, int(port)
    return host, 443


def _speaks_tls(host: str) -> bool:
    """Whether the server at ``host`` answers a TLS handshake (certificate not checked).

    Only asked of loopback registries, which may be plain HTTP (a developer's or a test's
    registry) or HTTPS; anywhere else HTTPS is the rule unless KAITO_REGISTRY_INSECURE.
    """
    name, port = _split_host(host)
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    try:
        with (
            socket.create_connection((name, port), timeout=_PING_TIMEOUT_SECONDS) as raw,
            context.wrap_socket(raw, server_hostname=name),
        ):
            return True
    except ssl.SSLError:
        return False
    except OSError as err:
        raise RegistryError(f"cannot reach registry {host}: {err}") from err


def _ca_file(ca_file: Path | None) -> Path | None:
    """The CA bundle to verify the registry with: the argument, else KAITO_REGISTRY_CA_FILE."""
    if ca_file is None and os.environ.get(ENV_CA_FILE):
        ca_file = Path(os.environ[ENV_CA_FILE])
    if ca_file is not None and not ca_file.is_file():
        raise RegistryError(f"the registry CA file {ca_file} ({ENV_CA_FILE}) does not exist")
    return ca_file


def _registry_bundle(host: str) -> Path | None:
    """The registry's own CA from the folder KAITO_REGISTRY_CA_DIR, joined to the system
    roots (requests verifies with one bundle); None when the folder has none for it."""
    directory = os.environ.get(ENV_CA_DIR)
    if not directory:
        return None
    try:
        keys = ca_keys(host)
    except ValueError:
        return None
    for key in keys:
        path = Path(directory) / key
        if path.is_file():
            return _with_system_roots(path)
    return None


def _with_system_roots(ca: Path) -> Path:
    """A PEM file of the roots requests trusts by default followed by ``ca``, written once
    per content under the temporary folder (pods have a writable /tmp)."""
    from requests.utils import DEFAULT_CA_BUNDLE_PATH

    pem = Path(DEFAULT_CA_BUNDLE_PATH).read_bytes().rstrip() + b"\n" + ca.read_bytes()
    digest = hashlib.sha256(pem).hexdigest()[:16]
    bundle = Path(tempfile.gettempdir()) / f"kaito-registry-ca-{digest}.pem"
    if not bundle.is_file():
        staging = bundle.with_suffix(f".{os.getpid()}.tmp")
        staging.write_bytes(pem)
        staging.replace(bundle)
    return bundle


def _challenge(header: str) -> tuple[str, dict[str, str]]:
    """``Bearer realm="...",service="...",scope="..."`` as ("bearer", {realm: ...})."""
    scheme, _, rest = header.strip().partition(" ")
    params = {key.lower(): quoted if quoted or not bare else bare
              for key, quoted, bare in _CHALLENGE_PARAM.findall(rest)}
    return scheme.lower(), params


class RegistryAuth(TokenAuth):  # type: ignore[misc]  # oras ships no type hints
    """Answers a registry's 401 challenge, whichever of the two kinds it is.

    ``Basic``: send the user and password. ``Bearer realm=...,service=...,scope=...`` (ACR,
    GHCR, Docker Hub, Harbor, distribution with ``auth: token``): GET the realm with the
    user and password as basic credentials (anonymously without them), keep the token per
    (realm, service, scope) and retry with it. oras' own ``TokenAuth`` keeps a single token,
    retries a 401 with that same token when a request needs another scope, and turns a
    refused password into a generic "cannot respond" error; this subclass replaces only
    ``authenticate_request`` and keeps oras' wiring (``do_request`` sends ``self.token``
    first, so requests in the scope last granted need no extra round trip).
    """

    def __init__(self, host: str, credentials: Credentials | None, client: Any) -> None:
        super().__init__()
        self.host = host
        self.credentials = credentials
        self.session = client.session
        self.prefix = client.prefix
        self._tls_verify = client._tls_verify
        self.tokens: dict[tuple[str, str, str], str] = {}
        self.token_requests = 0  # how many times a token service was asked (for tests)
        # Set once the registry asked for Basic: every later request carries it from the
        # start. A blob PUT sent without it is refused before its body is read, and over
        # TLS the server's close then surfaces as an SSL EOF instead of the 401.
        self.sends_basic = False
        if credentials is not None:
            self.set_basic_auth(credentials.username, credentials.password)

    def _who(self) -> str:
        return f"user {self.credentials.username!r}" if self.credentials else "anonymous access"

    def refused(self, status: int, where: str = "") -> RegistryAuthError:
        """The error for credentials the registry (or its token service) turned down."""
        return RegistryAuthError(
            f"registry {self.host} rejected the credentials of {self._who()} "
            f"(HTTP {status}{where}): check the user and password in the registry secret"
        )

    def authenticate_request(
        self, original: requests.Response, headers: dict[str, str] | None, refresh: bool = False
    ) -> tuple[dict[str, str], bool]:
        headers = dict(headers or {})
        sent = headers.get("Authorization", "")
        scheme, params = _challenge(original.headers.get("WWW-Authenticate", ""))
        if scheme == "basic":
            if self.credentials is None or sent.startswith("Basic "):
                return headers, False  # nothing (else) to offer: the caller sees the 401
            headers["Authorization"] = f"Basic {self._basic_auth}"
            self.sends_basic = True
            self.token = ""  # not None: oras' do_request then asks get_auth_header first
            return headers, True
        if scheme != "bearer" or "realm" not in params:
            return headers, False
        key = (params["realm"], params.get("service", ""), params.get("scope", ""))
        token = self.tokens.get(key)
        if token is None or refresh or sent == f"Bearer {token}":
            token = self._fetch_token(*key)
            self.tokens[key] = token
        self.token = token
        headers["Authorization"] = f"Bearer {token}"
        return headers, True

    def get_auth_header(self) -> dict[str, str]:
        if self.sends_basic:
            return {"Authorization": f"Basic {self._basic_auth}"}
        return {"Authorization": f"Bearer {self.token}"} if self.token else {}

    def _fetch_token(self, realm: str, service: str, scope: str) -> str:
        query: list[tuple[str, str]] = [("service", service)] if service else []
        query += [("scope", item) for item in scope.split()]
        auth = (self.credentials.username, self.credentials.password) if self.credentials else None
        self.token_requests += 1
        try:
            response = self.session.get(realm, params=query, auth=auth, verify=self._tls_verify,
                                        timeout=_PING_TIMEOUT_SECONDS)
        except requests.exceptions.SSLError as err:
            raise _untrusted(realm, err, self.host) from err
        except requests.RequestException as err:
            raise RegistryError(f"cannot reach the token service {realm} of {self.host}: {err}")
        if response.status_code in (401, 403):
            raise self.refused(response.status_code, f" from its token service {realm}")
        if response.status_code != 200:
            raise RegistryError(
                f"the token service {realm} of registry {self.host} answered "
                f"HTTP {response.status_code}"
            )
        try:
            body = response.json()
            token = body.get("token") or body.get("access_token")
        except (ValueError, AttributeError):
            token = None
        if not isinstance(token, str) or not token:
            raise RegistryError(f"the token service {realm} of {self.host} returned no token")
        return token


def _untrusted(where: str, err: Exception, host: str | None = None) -> RegistryTLSError:
    try:
        key = ca_keys(host)[0] if host else "<host>_<port>.crt"
    except ValueError:
        key = "<host>_<port>.crt"
    return RegistryTLSError(
        f"TLS verification of {where} failed ({err.__class__.__name__}: {err}): if the "
        f"registry uses a private CA, give its certificate (PEM) to the operator as key "
        f"{key} of its registry CA ConfigMap (KAITO_WORKSPACE__REGISTRY_CA_CONFIG_MAP), "
        f"or in {ENV_CA_FILE}"
    )


def _client(host: str, credentials: Credentials | None, ca_file: Path | None = None) -> Any:
    """An oras client for ``host``: HTTPS (verified by ``ca_file`` if given), or plain HTTP
    for KAITO_REGISTRY_INSECURE and for a loopback registry that does not speak TLS."""
    import oras.provider

    ca = _ca_file(ca_file)
    plain_http = {h.strip() for h in os.environ.get(ENV_PLAIN_HTTP, "").split(",") if h.strip()}
    if os.environ.get(ENV_INSECURE) == "true" or host in plain_http:
        insecure = True
    else:
        insecure = _is_loopback(host) and not _speaks_tls(host)
    bundle = ca if ca is not None else _registry_bundle(host)
    verify: bool | str = str(bundle) if bundle is not None else True
    client = oras.provider.Registry(hostname=host, insecure=insecure, tls_verify=verify)
    client.auth = RegistryAuth(host, credentials, client)
    return client


def _ping(client: Any, host: str) -> None:
    """GET ``/v2/`` through the auth flow: a refused password or an untrusted certificate
    becomes one clear error here, before any upload (oras would retry for minutes)."""
    url = f"{client.prefix}://{host}/v2/"
    try:
        response = client.do_request(url, "GET")
    except requests.exceptions.SSLError as err:
        raise _untrusted(f"registry {host}", err, host) from err
    except requests.RequestException as err:
        raise RegistryError(f"cannot reach registry {host}: {err}") from err
    except ValueError:  # oras: a challenge nobody could answer (no credentials given)
        raise client.auth.refused(401) from None
    if response.status_code in (401, 403):
        raise client.auth.refused(response.status_code)
    if response.status_code >= 400:
        raise RegistryError(f"registry {host} answered /v2/ with HTTP {response.status_code}")


def build_annotations(
    *,
    base_model: str,
    method: str,
    dataset_digest: str,
    hyperparameters: Mapping[str, Any],
    evaluation: Mapping[str, Any] | None = None,
) -> dict[str, str]:
    """The manifest annotations that say what the adapter is (all values are strings)."""
    annotations = {
        ANNOTATION_BASE_MODEL: base_model,
        ANNOTATION_METHOD: method,
        ANNOTATION_DATASET_DIGEST: dataset_digest,
        ANNOTATION_HYPERPARAMETERS: json.dumps(dict(hyperparameters), sort_keys=True),
        ANNOTATION_CREATED: time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        ANNOTATION_DESCRIPTION: f"{method} adapter for {base_model}",
    }
    if evaluation:
        annotations[ANNOTATION_EVALUATION] = json.dumps(dict(evaluation), sort_keys=True)
    return annotations


def check_push_access(
    reference: str, dockerconfigjson: str | None, ca_file: Path | None = None
) -> None:
    """The registry of ``reference`` answers and takes these credentials. The tuning job
    asks before it trains, so a wrong password costs seconds, not a training run."""
    ref = Reference.parse(reference)
    credentials = credentials_for(dockerconfigjson, ref.host) if dockerconfigjson else None
    _ping(_client(ref.host, credentials, ca_file), ref.host)


def push_adapter(
    directory: Path,
    reference: str,
    dockerconfigjson: str | None,
    annotations: Mapping[str, str],
    extra_files: Sequence[str] = (),
    ca_file: Path | None = None,
) -> str:
    """Push the adapter files of ``directory`` to ``reference``; return the digest."""
    ref = Reference.parse(reference)
    names = [*ADAPTER_FILES, *extra_files]
    missing = [name for name in names if not (directory / name).is_file()]
    if missing:
        raise RegistryError(f"{directory}: missing adapter files {missing}")
    credentials = credentials_for(dockerconfigjson, ref.host) if dockerconfigjson else None
    client = _client(ref.host, credentials, ca_file)
    _ping(client, ref.host)
    try:
        response = client.push(
            target=str(ref),
            files=[str(directory / name) for name in names],
            manifest_annotations=dict(annotations),
            disable_path_validation=True,
            quiet=True,
        )
    except (ValueError, RuntimeError, requests.RequestException) as err:
        # oras reports HTTP failures as ValueError/RuntimeError, transport ones as requests'
        raise RegistryError(f"push to {ref} failed: {err}") from err
    digest = response.headers.get("Docker-Content-Digest")
    if not digest:
        raise RegistryError(f"registry {ref.host} did not return the manifest digest")
    log.info("adapter pushed", extra={"reference": str(ref), "digest": digest})
    return str(digest)


def _sha256(path: Path) -> str:
    hasher = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            hasher.update(chunk)
    return "sha256:" + hasher.hexdigest()


@dataclass(frozen=True)
class PulledArtifact:
    files: list[Path]
    annotations: dict[str, str]
    digest: str | None  # the one pulled by, when pulled by digest


def pull_adapter(
    reference: str, destination: Path, dockerconfigjson: str | None, ca_file: Path | None = None
) -> PulledArtifact:
    """Pull ``reference`` into ``destination`` and verify every file's digest."""
    ref = Reference.parse(reference)
    credentials = credentials_for(dockerconfigjson, ref.host) if dockerconfigjson else None
    client = _client(ref.host, credentials, ca_file)
    _ping(client, ref.host)
    destination.mkdir(parents=True, exist_ok=True)
    try:
        manifest = client.get_manifest(str(ref))
        pulled = [Path(path) for path in client.pull(target=str(ref), outdir=str(destination))]
    except (ValueError, RuntimeError, requests.RequestException) as err:
        raise RegistryError(f"pull of {ref} failed: {err}") from err
    by_name = {path.name: path for path in pulled}
    for layer in manifest.get("layers", []):
        name = (layer.get("annotations") or {}).get("org.opencontainers.image.title")
        if name not in by_name or _sha256(by_name[name]) != layer["digest"]:
            raise RegistryError(f"pulled file {name!r} of {ref} does not match its digest")
    return PulledArtifact(pulled, dict(manifest.get("annotations") or {}), ref.digest)


def _read_secret(path: str | None) -> str | None:
    if path is None:
        return None
    return Path(path).read_text(encoding="utf-8")


def main(argv: list[str] | None = None) -> int:
    """``python -m runtime.oci push|pull``: the push sidecar and the adapter puller."""
    parser = argparse.ArgumentParser(prog="python -m runtime.oci")
    commands = parser.add_subparsers(dest="command", required=True)
    push = commands.add_parser("push", help="push the adapter in a folder")
    push.add_argument("--dir", required=True, type=Path)
    push.add_argument("--reference", required=True)
    push.add_argument("--dockerconfigjson", help="file with the secret's .dockerconfigjson")
    push.add_argument("--annotations", type=Path, help="JSON file of extra annotations")
    push.add_argument("--wait-for", type=Path, help="sentinel file to wait for first")
    push.add_argument("--ca-file", type=Path, help=f"PEM CA bundle (default: ${ENV_CA_FILE})")
    pull = commands.add_parser("pull", help="pull an adapter into a folder")
    pull.add_argument("--reference", required=True)
    pull.add_argument("--dir", required=True, type=Path)
    pull.add_argument("--dockerconfigjson")
    pull.add_argument("--ca-file", type=Path, help=f"PEM CA bundle (default: ${ENV_CA_FILE})")
    args = parser.parse_args(argv)
    configure_logging("INFO", "json")
    try:
        if args.command == "push":
            if args.wait_for is not None:
                while not args.wait_for.exists():
                    time.sleep(2)
            annotations = {}
            if args.annotations is not None:
                annotations = json.loads(args.annotations.read_text())
            extra = [name for name in ("training_result.json",) if (args.dir / name).is_file()]
            digest = push_adapter(
                args.dir, args.reference, _read_secret(args.dockerconfigjson), annotations, extra,
                args.ca_file,
            )
            print(Reference.parse(args.reference).with_digest(digest))
        else:
            artifact = pull_adapter(
                args.reference, args.dir, _read_secret(args.dockerconfigjson), args.ca_file
            )
            print(json.dumps({"files": [str(p) for p in artifact.files]}))
    except (RegistryError, OSError) as err:
        log.error("registry command failed", extra={
            "command": args.command, "reference": args.reference, "error": str(err)})
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
