"""The webhook's PKI (renewal decisions) and TLS reload without restart."""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import socket
import ssl
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec

from tests.log_lines import error_record
from webhook.certs import (
    SECRET_TLS_KEY,
    Bundle,
    KeyPair,
    make_ca,
    make_serving_cert,
    next_bundle,
    serving_is_usable,
)
from webhook.serve import serve
from webhook.settings import WebhookSettings

pytestmark = pytest.mark.unit

NOW = datetime.datetime(2026, 1, 1, tzinfo=datetime.UTC)
DNS = ["kaito-webhook.kaito-system.svc"]
IPS = ["127.0.0.1"]
RENEW = datetime.timedelta(days=30)


def _bundle(now: datetime.datetime = NOW, current: Bundle | None = None,
            dns: list[str] | None = None) -> Bundle | None:
    return next_bundle(current, dns_names=dns or DNS, ip_addresses=IPS, now=now,
                       ca_valid_days=3650, cert_valid_days=365, renew_before=RENEW)


def test_first_bundle_is_a_ca_and_a_serving_cert_it_signed() -> None:
    bundle = _bundle()
    assert bundle is not None
    ca, cert = bundle.ca.certificate, bundle.serving.certificate
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    public = ca.public_key()
    assert isinstance(public, ec.EllipticCurvePublicKey)
    public.verify(cert.signature, cert.tbs_certificate_bytes, ec.ECDSA(hashes.SHA256()))
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sans.get_values_for_type(x509.DNSName) == DNS
    assert sans.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("127.0.0.1")]
    assert Bundle.from_secret_data(bundle.to_secret_data()) == bundle


def test_fresh_bundle_is_kept() -> None:
    bundle = _bundle()
    assert bundle is not None
    assert _bundle(NOW + datetime.timedelta(days=300), bundle) is None


def test_serving_cert_is_renewed_before_expiry_with_the_same_ca() -> None:
    bundle = _bundle()
    assert bundle is not None
    renewed = _bundle(NOW + datetime.timedelta(days=340), bundle)
    assert renewed is not None
    assert renewed.ca == bundle.ca  # caBundle stays valid
    assert renewed.serving.certificate.serial_number != bundle.serving.certificate.serial_number


def test_ca_is_replaced_before_it_expires() -> None:
    bundle = _bundle()
    assert bundle is not None
    renewed = _bundle(NOW + datetime.timedelta(days=3640), bundle)
    assert renewed is not None and renewed.ca != bundle.ca
    # Replicas still serving from the old CA stay trusted until they reload.
    assert renewed.trust_bundle() == renewed.ca.cert_pem + bundle.ca.cert_pem
    assert Bundle.from_secret_data(renewed.to_secret_data()) == renewed
    assert _bundle(NOW + datetime.timedelta(days=3700), renewed) is None


def test_new_names_or_broken_data_force_a_new_pair() -> None:
    bundle = _bundle()
    assert bundle is not None
    assert _bundle(NOW, bundle, dns=[*DNS, "other.svc"]) is not None
    data = bundle.to_secret_data()
    data[SECRET_TLS_KEY] = b"garbage"
    broken = Bundle.from_secret_data(data)
    assert broken is not None and not serving_is_usable(broken, DNS, IPS, NOW, RENEW)
    assert _bundle(NOW, broken) is not None
    assert Bundle.from_secret_data({}) is None


def test_serving_cert_from_another_ca_is_not_usable() -> None:
    bundle = _bundle()
    assert bundle is not None
    other_ca = make_ca("other", NOW, 10)
    foreign = Bundle(bundle.ca, make_serving_cert(other_ca, DNS, IPS, NOW, 10))
    assert not serving_is_usable(foreign, DNS, IPS, NOW, RENEW)


def _write(pair: KeyPair, folder: Path) -> tuple[Path, Path]:
    cert, key = folder / "tls.crt", folder / "tls.key"
    key.write_bytes(pair.key_pem)
    cert.write_bytes(pair.cert_pem)
    return cert, key


def _served_serial(port: int) -> int:
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw, \
            context.wrap_socket(raw) as tls:
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    return x509.load_der_x509_certificate(der).serial_number


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


async def test_files_mode_reloads_renewed_files_without_restart(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    now = datetime.datetime.now(datetime.UTC)
    ca = make_ca("test-ca", now, 10)
    first = make_serving_cert(ca, [], IPS, now, 10)
    cert_file, key_file = _write(first, tmp_path)
    port = _free_port()
    settings = WebhookSettings(cert_mode="files", cert_file=cert_file, key_file=key_file,
                               host="127.0.0.1", port=port, check_interval_seconds=0.1)
    stop = asyncio.Event()
    server = asyncio.create_task(serve(settings, stop), name="webhook-under-test")
    try:
        for _ in range(100):
            if server.done():
                server.result()
            try:
                serial = await asyncio.to_thread(_served_serial, port)
                break
            except OSError:
                await asyncio.sleep(0.05)
        assert serial == first.certificate.serial_number
        second = make_serving_cert(ca, [], IPS, now, 10)
        await asyncio.sleep(0.05)  # a different mtime
        _write(second, tmp_path)
        for _ in range(100):
            serial = await asyncio.to_thread(_served_serial, port)
            if serial == second.certificate.serial_number:
                break
            await asyncio.sleep(0.05)
        assert serial == second.certificate.serial_number
        assert not server.done()
    finally:
        stop.set()
        await server


async def test_files_mode_needs_both_files() -> None:
    settings = WebhookSettings(cert_mode="files", port=_free_port())
    with pytest.raises(ValueError, match="needs --cert-file and --key-file"):
        await serve(settings, asyncio.Event())


def test_settings_from_env_and_flags(monkeypatch: pytest.MonkeyPatch,
                                     capsys: pytest.CaptureFixture[str]) -> None:
    from webhook.__main__ import _settings, main

    monkeypatch.setenv("KAITO_WEBHOOK_PORT", "8443")
    monkeypatch.setenv("KAITO_WEBHOOK_NAMESPACE", "ops")
    settings = _settings(["--ip-address", "127.0.0.1", "--ip-address", "10.0.0.1"])
    assert (settings.port, settings.namespace) == (8443, "ops")
    assert settings.ip_addresses == ["127.0.0.1", "10.0.0.1"]
    assert "kaito-webhook.ops.svc" in settings.dns_names()
    assert _settings(["--port", "9999"]).port == 9999
    assert main(["--port", "70000"]) == 2
    error = error_record(capsys.readouterr().err)
    assert error["msg"] == "invalid settings" and "port" in error["error"]
