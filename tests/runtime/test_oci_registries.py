"""Adapter artifacts against registries as they are met in production, not only htpasswd.

Two Debian ``docker-registry`` set-ups the test builds itself: one with ``auth: token``
(the flow of ACR, GHCR, Docker Hub, Harbor) whose realm is a token service started here on
loopback, issuing ES256 JWTs signed by a key whose certificate the registry trusts
(``rootcertbundle``); and one serving HTTPS with a certificate from a CA generated here.
"""

from __future__ import annotations

import base64
import datetime
import json
import secrets
import shutil
import ssl
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from ipaddress import IPv4Address
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import jwt
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from crds.registry_ca import ENV_CA_DIR, ca_keys
from runtime import adapter_pull
from runtime.oci import (
    ENV_CA_FILE,
    RegistryAuthError,
    RegistryError,
    RegistryTLSError,
    build_annotations,
    pull_adapter,
    push_adapter,
)
from tests.runtime.conftest import dockerconfigjson_for

pytestmark = pytest.mark.runtime

SERVICE = "kaito-test-registry"
ISSUER = "kaito-test-token-issuer"


# ---------------------------------------------------------------- certificates


def _certificate(
    subject: str, key: ec.EllipticCurvePrivateKey, issuer: tuple[x509.Name, ec.EllipticCurvePrivateKey]
    | None = None, *, is_ca: bool = False, ip: str | None = None,
) -> x509.Certificate:
    now = datetime.datetime.now(datetime.UTC)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)])
    issuer_name, signer = issuer if issuer is not None else (name, key)
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(issuer_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=is_ca, path_length=None), critical=True)
    )
    if ip is not None:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(IPv4Address(ip))]), critical=False
        )
    return builder.sign(signer, hashes.SHA256())


def _pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


# ---------------------------------------------------------------- the token service


@dataclass
class TokenService:
    """What a registry's realm does: basic credentials in, a signed JWT for the scope out."""

    user: str
    password: str
    key: ec.EllipticCurvePrivateKey
    cert: x509.Certificate
    requests: list[tuple[str, tuple[str, ...], bool]] = field(default_factory=list)
    url: str = ""

    def issue(self, authorization: str, query: dict[str, list[str]]) -> tuple[int, bytes]:
        expected = base64.b64encode(f"{self.user}:{self.password}".encode()).decode()
        accepted = authorization == f"Basic {expected}"
        scopes = tuple(query.get("scope", []))
        self.requests.append((query.get("service", [""])[0], scopes, accepted))
        if not accepted:
            return 401, b'{"details": "invalid username or password"}'
        access = []
        for scope in scopes:
            kind, name, actions = scope.split(":")
            access.append({"type": kind, "name": name, "actions": actions.split(",")})
        now = int(time.time())
        claims = {
            "iss": ISSUER, "sub": self.user, "aud": SERVICE, "exp": now + 300, "nbf": now - 10,
            "iat": now, "jti": secrets.token_hex(8), "access": access,
        }
        der = self.cert.public_bytes(serialization.Encoding.DER)
        token = jwt.encode(claims, self.key, algorithm="ES256",
                           headers={"x5c": [base64.b64encode(der).decode()]})
        return 200, json.dumps({"token": token, "expires_in": 300}).encode()


def _serve(service: TokenService) -> ThreadingHTTPServer:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            parts = urlsplit(self.path)
            status, body = service.issue(
                self.headers.get("Authorization", ""), parse_qs(parts.query)
            )
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            pass  # quiet: pytest shows failures, not every token request

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, name="token-service", daemon=True).start()
    return server


# ---------------------------------------------------------------- registries


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass(frozen=True)
class Registry:
    host: str
    user: str
    password: str
    dockerconfigjson: str
    ca_file: Path | None = None
    log: Path | None = None  # the registry's access log


def _run_registry(root: Path, host: str, sections: list[str],
                  context: ssl.SSLContext | None) -> subprocess.Popen[bytes]:
    binary = shutil.which("docker-registry")
    if binary is None:
        pytest.fail("needs the Debian package docker-registry")
    (root / "storage").mkdir()
    (root / "config.yml").write_text("\n".join([
        "version: 0.1",
        "log:",
        "  level: warn",
        "storage:",
        "  filesystem:",
        f"    rootdirectory: {root / 'storage'}",
        *sections,
        "",
    ]))
    log_file = open(root / "registry.log", "wb")  # noqa: SIM115 - lives as long as the process
    process = subprocess.Popen([binary, "serve", str(root / "config.yml")],
                               stdout=log_file, stderr=subprocess.STDOUT)
    log_file.close()
    scheme = "https" if context is not None else "http"
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if process.poll() is not None:
            log = (root / "registry.log").read_text()
            pytest.fail(f"docker-registry exited ({process.returncode}): {log}")
        try:
            urllib.request.urlopen(f"{scheme}://{host}/v2/", timeout=1, context=context)
            break
        except urllib.error.HTTPError as err:
            if err.code == 401:
                break
        except OSError:
            pass
        time.sleep(0.1)
    else:
        process.kill()
        pytest.fail(f"docker-registry did not answer on {host}")
    return process


def _stop(process: subprocess.Popen[bytes]) -> None:
    process.terminate()
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


@pytest.fixture(scope="module")
def token_service() -> Iterator[TokenService]:
    key = ec.generate_private_key(ec.SECP256R1())
    service = TokenService("kaito", secrets.token_urlsafe(12), key,
                           _certificate("kaito test token signer", key))
    server = _serve(service)
    service.url = f"http://127.0.0.1:{server.server_address[1]}/token"
    try:
        yield service
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture(scope="module")
def token_registry(
    tmp_path_factory: pytest.TempPathFactory, token_service: TokenService
) -> Iterator[Registry]:
    root = tmp_path_factory.mktemp("token-registry")
    (root / "token-signer.pem").write_bytes(_pem(token_service.cert))
    host = f"127.0.0.1:{_free_port()}"
    process = _run_registry(root, host, [
        "http:",
        f"  addr: {host}",
        "auth:",
        "  token:",
        f"    realm: {token_service.url}",
        f"    service: {SERVICE}",
        f"    issuer: {ISSUER}",
        f"    rootcertbundle: {root / 'token-signer.pem'}",
    ], None)
    try:
        yield Registry(host, token_service.user, token_service.password,
                       dockerconfigjson_for(host, token_service.user, token_service.password))
    finally:
        _stop(process)


@pytest.fixture(scope="module")
def tls_registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    """HTTPS with a certificate for 127.0.0.1 from a CA made here; htpasswd behind it."""
    root = tmp_path_factory.mktemp("tls-registry")
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_cert = _certificate("kaito test registry CA", ca_key, is_ca=True)
    server_key = ec.generate_private_key(ec.SECP256R1())
    server_cert = _certificate("127.0.0.1", server_key, (ca_cert.subject, ca_key), ip="127.0.0.1")
    (root / "ca.pem").write_bytes(_pem(ca_cert))
    (root / "server.pem").write_bytes(_pem(server_cert))
    (root / "server.key").write_bytes(_key_pem(server_key))
    user, password = "kaito", secrets.token_urlsafe(12)
    htpasswd = shutil.which("htpasswd")
    if htpasswd is None:
        pytest.fail("needs the Debian package apache2-utils (htpasswd)")
    entry = subprocess.run([htpasswd, "-Bbn", user, password], check=True,
                           capture_output=True, text=True).stdout.strip()
    (root / "htpasswd").write_text(entry + "\n")
    host = f"127.0.0.1:{_free_port()}"
    context = ssl.create_default_context(cafile=str(root / "ca.pem"))
    process = _run_registry(root, host, [
        "http:",
        f"  addr: {host}",
        "  tls:",
        f"    certificate: {root / 'server.pem'}",
        f"    key: {root / 'server.key'}",
        "auth:",
        "  htpasswd:",
        "    realm: kaito-test",
        f"    path: {root / 'htpasswd'}",
    ], context)
    try:
        yield Registry(host, user, password, dockerconfigjson_for(host, user, password),
                       root / "ca.pem", root / "registry.log")
    finally:
        _stop(process)


@pytest.fixture
def adapter_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "adapter"
    folder.mkdir()
    (folder / "adapter_model.safetensors").write_bytes(secrets.token_bytes(4096))
    (folder / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": 8}))
    return folder


def _annotations() -> dict[str, str]:
    return build_annotations(base_model="phi-4", method="lora",
                             dataset_digest="sha256:" + "cd" * 32, hyperparameters={"r": 8})


def _same_files(pulled: list[Path], source: Path) -> bool:
    return sorted(p.name for p in pulled) == ["adapter_config.json", "adapter_model.safetensors"] \
        and all(p.read_bytes() == (source / p.name).read_bytes() for p in pulled)


# ---------------------------------------------------------------- token auth


def _same_actions(scope: str) -> str:
    resource, _, actions = scope.rpartition(":")
    return f"{resource}:{','.join(sorted(actions.split(',')))}"


def test_token_registry_push_then_pull(
    adapter_dir: Path, token_registry: Registry, token_service: TokenService, tmp_path: Path
) -> None:
    token_service.requests.clear()
    reference = f"{token_registry.host}/team/adapter:1"
    digest = push_adapter(adapter_dir, reference, token_registry.dockerconfigjson, _annotations())
    pushed = list(token_service.requests)
    # the push got its tokens from the realm with the secret's basic credentials,
    # for the registry's service, one per scope: none asked twice (they are kept)
    assert pushed and all(accepted for _, _, accepted in pushed)
    assert {service for service, _, _ in pushed} == {SERVICE}
    # docker-registry lists a scope's actions in either order (a Go map): compare sets
    asked = [tuple(_same_actions(scope) for scope in scopes) for _, scopes, _ in pushed]
    assert ("repository:team/adapter:pull,push",) in asked
    assert len(pushed) == len({scopes for _, scopes, _ in pushed})

    pulled = pull_adapter(f"{token_registry.host}/team/adapter@{digest}", tmp_path / "out",
                          token_registry.dockerconfigjson)
    assert _same_files(pulled.files, adapter_dir)
    assert pulled.annotations["sh.kaito.adapter.base-model"] == "phi-4"
    assert ("repository:team/adapter:pull",) in [s for _, s, _ in token_service.requests]


def test_token_registry_refuses_a_wrong_password_clearly(
    adapter_dir: Path, token_registry: Registry, token_service: TokenService
) -> None:
    wrong = dockerconfigjson_for(token_registry.host, token_registry.user, "not-the-password")
    started = time.monotonic()
    with pytest.raises(RegistryAuthError) as failure:
        push_adapter(adapter_dir, f"{token_registry.host}/team/adapter:2", wrong, _annotations())
    assert time.monotonic() - started < 10  # at once, not after oras' retries
    message = str(failure.value)
    assert f"registry {token_registry.host} rejected the credentials of user 'kaito'" in message
    assert f"HTTP 401 from its token service {token_service.url}" in message
    assert "not-the-password" not in message and token_registry.password not in message
    assert token_service.requests[-1][2] is False  # the realm was asked, and said no


def test_anonymous_pull_from_a_token_registry_is_refused_clearly(
    token_registry: Registry, tmp_path: Path
) -> None:
    with pytest.raises(RegistryAuthError) as failure:
        pull_adapter(f"{token_registry.host}/team/adapter:1", tmp_path, None)
    # the realm was asked for an anonymous token (what public images get) and said no
    assert "rejected the credentials of anonymous access" in str(failure.value)
    assert "from its token service" in str(failure.value)


# ---------------------------------------------------------------- TLS with a private CA


def test_tls_registry_with_a_private_ca(
    adapter_dir: Path, tls_registry: Registry, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert tls_registry.ca_file is not None
    reference = f"{tls_registry.host}/team/adapter:tls"
    digest = push_adapter(adapter_dir, reference, tls_registry.dockerconfigjson, _annotations(),
                          ca_file=tls_registry.ca_file)
    # without the CA: a clear error naming the setting, not a plain-HTTP fallback
    monkeypatch.delenv(ENV_CA_FILE, raising=False)
    with pytest.raises(RegistryError) as failure:
        pull_adapter(reference, tmp_path / "no-ca", tls_registry.dockerconfigjson)
    message = str(failure.value)
    assert f"TLS verification of registry {tls_registry.host} failed" in message
    assert ENV_CA_FILE in message
    # the serving init container (kaito pull-adapter) finds the CA through the environment
    secret = tmp_path / "pull-secret.json"
    secret.write_text(tls_registry.dockerconfigjson)
    monkeypatch.setenv(ENV_CA_FILE, str(tls_registry.ca_file))
    code = adapter_pull.main([
        "--reference", f"{tls_registry.host}/team/adapter@{digest}",
        "--dest", str(tmp_path / "served"), "--secret", str(secret),
    ])
    assert code == 0
    assert _same_files(sorted((tmp_path / "served").iterdir()), adapter_dir)


def test_a_missing_ca_file_is_named(adapter_dir: Path, tls_registry: Registry,
                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ENV_CA_FILE, "/nonexistent/ca.pem")
    with pytest.raises(RegistryError, match=f"CA file /nonexistent/ca.pem .{ENV_CA_FILE}."):
        push_adapter(adapter_dir, f"{tls_registry.host}/team/adapter:x",
                     tls_registry.dockerconfigjson, _annotations())


def test_a_registry_ca_folder_trusts_a_registry_with_its_own_bundle(
    adapter_dir: Path, tls_registry: Registry, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """KAITO_REGISTRY_CA_DIR: the operator's registry CA ConfigMap as mounted in the pods,
    one bundle per registry (crds/registry_ca.py names the keys)."""
    assert tls_registry.ca_file is not None
    monkeypatch.delenv(ENV_CA_FILE, raising=False)
    folder = tmp_path / "registry-ca"
    folder.mkdir()
    monkeypatch.setenv(ENV_CA_DIR, str(folder))
    reference = f"{tls_registry.host}/team/adapter:ca-dir"
    # The right CA under another registry's key is not trusted for this one.
    (folder / "10.0.0.5_5000.crt").write_bytes(tls_registry.ca_file.read_bytes())
    with pytest.raises(RegistryTLSError) as failure:
        push_adapter(adapter_dir, reference, tls_registry.dockerconfigjson, _annotations())
    key = ca_keys(tls_registry.host)[0]
    assert key in str(failure.value) and "CERTIFICATE_VERIFY_FAILED" in str(failure.value)
    (folder / key).write_bytes(tls_registry.ca_file.read_bytes())
    digest = push_adapter(adapter_dir, reference, tls_registry.dockerconfigjson, _annotations())
    secret = tmp_path / "pull-secret.json"
    secret.write_text(tls_registry.dockerconfigjson)
    assert adapter_pull.main(["--reference", f"{tls_registry.host}/team/adapter@{digest}",
                              "--dest", str(tmp_path / "served"), "--secret", str(secret)]) == 0
    assert _same_files(sorted((tmp_path / "served").iterdir()), adapter_dir)


def test_a_basic_auth_push_asks_once_then_sends_the_credentials_up_front(
    tmp_path: Path, tls_registry: Registry
) -> None:
    """A blob PUT sent without credentials is refused before its body is read; over TLS
    the server's close then reads as an SSL EOF, not a 401 (a 10 MB adapter failed so in
    a pod). After the ping's one challenge every request carries the credentials."""
    assert tls_registry.ca_file is not None and tls_registry.log is not None
    folder = tmp_path / "large"
    folder.mkdir()
    (folder / "adapter_model.safetensors").write_bytes(secrets.token_bytes(12 << 20))
    (folder / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": 8}))
    before = tls_registry.log.read_text().count('" 401 ')
    push_adapter(folder, f"{tls_registry.host}/team/large:1", tls_registry.dockerconfigjson,
                 _annotations(), ca_file=tls_registry.ca_file)
    assert tls_registry.log.read_text().count('" 401 ') - before == 1  # the ping's
