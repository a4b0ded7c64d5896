"""The tuned adapter as an OCI artifact: push with the imagePushSecret, pull for serving.

Credentials come from a ``kubernetes.io/dockerconfigjson`` secret's text. The ``oras``
client talks basic auth (``auth_backend="basic"``), which every registry that takes a
docker login accepts; a loopback registry is spoken to over plain HTTP. Before any upload
a ping of ``/v2/`` with the credentials turns a wrong password or an unreachable registry
into one clear error instead of oras' generic one (or its minutes of retries). The
manifest carries annotations saying what the artifact is: base model, method, dataset
digest, hyper-parameters and evaluation. A pull checks every file against its digest.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import ipaddress
import json
import logging
import os
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import requests

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


class RegistryError(Exception):
    """Pushing or pulling the artifact failed; the message says why and where."""


class RegistryAuthError(RegistryError):
    """The registry rejected the credentials (or none were given for it)."""


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


def _client(host: str, credentials: Credentials | None) -> Any:
    import oras.provider

    insecure = _is_loopback(host) or os.environ.get("KAITO_REGISTRY_INSECURE") == "true"
    client = oras.provider.Registry(hostname=host, insecure=insecure, auth_backend="basic")
    if credentials is not None:
        client.auth.set_basic_auth(credentials.username, credentials.password)
    return client


def _ping(client: Any, host: str, credentials: Credentials | None) -> None:
    headers = client.auth.get_auth_header() if credentials is not None else {}
    url = f"{client.prefix}://{host}/v2/"
    try:
        response = client.session.get(url, headers=headers, timeout=_PING_TIMEOUT_SECONDS)
    except requests.RequestException as err:
        raise RegistryError(f"cannot reach registry {host}: {err}") from err
    if response.status_code in (401, 403):
        who = f"user {credentials.username!r}" if credentials else "anonymous access"
        raise RegistryAuthError(
            f"registry {host} rejected the credentials of {who} from the push secret "
            f"(HTTP {response.status_code}): check the password in the imagePushSecret"
        )
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


def push_adapter(
    directory: Path,
    reference: str,
    dockerconfigjson: str | None,
    annotations: Mapping[str, str],
    extra_files: Sequence[str] = (),
) -> str:
    """Push the adapter files of ``directory`` to ``reference``; return the digest."""
    ref = Reference.parse(reference)
    names = [*ADAPTER_FILES, *extra_files]
    missing = [name for name in names if not (directory / name).is_file()]
    if missing:
        raise RegistryError(f"{directory}: missing adapter files {missing}")
    credentials = credentials_for(dockerconfigjson, ref.host) if dockerconfigjson else None
    client = _client(ref.host, credentials)
    _ping(client, ref.host, credentials)
    try:
        response = client.push(
            target=str(ref),
            files=[str(directory / name) for name in names],
            manifest_annotations=dict(annotations),
            disable_path_validation=True,
            quiet=True,
        )
    except ValueError as err:  # oras reports HTTP failures as ValueError
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


def pull_adapter(reference: str, destination: Path, dockerconfigjson: str | None) -> PulledArtifact:
    """Pull ``reference`` into ``destination`` and verify every file's digest."""
    ref = Reference.parse(reference)
    credentials = credentials_for(dockerconfigjson, ref.host) if dockerconfigjson else None
    client = _client(ref.host, credentials)
    _ping(client, ref.host, credentials)
    destination.mkdir(parents=True, exist_ok=True)
    try:
        manifest = client.get_manifest(str(ref))
        pulled = [Path(path) for path in client.pull(target=str(ref), outdir=str(destination))]
    except ValueError as err:
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
    pull = commands.add_parser("pull", help="pull an adapter into a folder")
    pull.add_argument("--reference", required=True)
    pull.add_argument("--dir", required=True, type=Path)
    pull.add_argument("--dockerconfigjson")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
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
                args.dir, args.reference, _read_secret(args.dockerconfigjson), annotations, extra
            )
            print(Reference.parse(args.reference).with_digest(digest))
        else:
            artifact = pull_adapter(args.reference, args.dir, _read_secret(args.dockerconfigjson))
            print(json.dumps({"files": [str(p) for p in artifact.files]}))
    except (RegistryError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
