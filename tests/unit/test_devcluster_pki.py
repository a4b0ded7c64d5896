"""The local control plane's certificates chain to its CA and carry the right names."""

from __future__ import annotations

import ipaddress
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from kaito.devcluster.pki import CertificateAuthority, write_service_account_keys

pytestmark = pytest.mark.unit


def test_serving_certificate_is_signed_by_the_ca_and_names_loopback(tmp_path: Path) -> None:
    ca = CertificateAuthority(tmp_path)
    pair = ca.issue("apiserver", "kube-apiserver", dns_names=("localhost",),
                    ip_addresses=("127.0.0.1",), is_server=True)
    cert = x509.load_pem_x509_certificate(pair.cert_path.read_bytes())
    ca_cert = x509.load_pem_x509_certificate(ca.cert_path.read_bytes())
    public_key = ca_cert.public_key()
    assert isinstance(public_key, ec.EllipticCurvePublicKey)
    cert.verify_directly_issued_by(ca_cert)
    names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert ipaddress.ip_address("127.0.0.1") in names.get_values_for_type(x509.IPAddress)
    assert (pair.key_path.stat().st_mode & 0o777) == 0o600


def test_admin_certificate_is_in_system_masters(tmp_path: Path) -> None:
    ca = CertificateAuthority(tmp_path)
    pair = ca.issue("admin", "admin", organization="system:masters")
    cert = x509.load_pem_x509_certificate(pair.cert_path.read_bytes())
    organizations = cert.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)
    assert [o.value for o in organizations] == ["system:masters"]


def test_service_account_keys_are_written_private(tmp_path: Path) -> None:
    pair = write_service_account_keys(tmp_path)
    assert b"PUBLIC KEY" in pair.cert_path.read_bytes()
    assert (pair.key_path.stat().st_mode & 0o777) == 0o600
