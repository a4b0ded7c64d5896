"""The webhook's own PKI: a self-made CA and a serving certificate signed by it (pure).

The kube-apiserver trusts the CA through the `caBundle` of the webhook configurations, so
the serving certificate can be renewed (same CA) without touching them; the CA itself is
renewed, and the bundle re-patched, only when it nears expiry. Keys are ECDSA P-256.
"""

from __future__ import annotations

import datetime
import ipaddress
from dataclasses import dataclass

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

SECRET_CA_CERT = "ca.crt"
SECRET_CA_KEY = "ca.key"
SECRET_TLS_CERT = "tls.crt"
SECRET_TLS_KEY = "tls.key"
SECRET_PREVIOUS_CA_CERT = "ca-previous.crt"


@dataclass(frozen=True)
class KeyPair:
    """A PEM certificate and its PEM private key."""

    cert_pem: bytes
    key_pem: bytes

    @property
    def certificate(self) -> x509.Certificate:
        return x509.load_pem_x509_certificate(self.cert_pem)


@dataclass(frozen=True)
class Bundle:
    """The CA and the serving pair, as stored in the Secret."""

    ca: KeyPair
    serving: KeyPair
    previous_ca_cert_pem: bytes = b""
    """The CA this one replaced: kept in caBundle so that replicas still serving a
    certificate from it are trusted until they pick up the new pair."""

    def trust_bundle(self) -> bytes:
        """What goes into the webhook configurations' caBundle."""
        return self.ca.cert_pem + self.previous_ca_cert_pem

    def to_secret_data(self) -> dict[str, bytes]:
        data = {
            SECRET_CA_CERT: self.ca.cert_pem,
            SECRET_CA_KEY: self.ca.key_pem,
            SECRET_TLS_CERT: self.serving.cert_pem,
            SECRET_TLS_KEY: self.serving.key_pem,
        }
        if self.previous_ca_cert_pem:
            data[SECRET_PREVIOUS_CA_CERT] = self.previous_ca_cert_pem
        return data

    @classmethod
    def from_secret_data(cls, data: dict[str, bytes]) -> Bundle | None:
        try:
            return cls(
                ca=KeyPair(data[SECRET_CA_CERT], data[SECRET_CA_KEY]),
                serving=KeyPair(data[SECRET_TLS_CERT], data[SECRET_TLS_KEY]),
                previous_ca_cert_pem=data.get(SECRET_PREVIOUS_CA_CERT, b""),
            )
        except KeyError:
            return None


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def make_ca(common_name: str, now: datetime.datetime, valid_days: int) -> KeyPair:
    """A self-signed CA certificate."""
    key = _key()
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=valid_days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                          content_commitment=False, key_encipherment=False,
                          data_encipherment=False, key_agreement=False, encipher_only=False,
                          decipher_only=False),
            critical=True,
        )
        .sign(key, hashes.SHA256())
    )
    return KeyPair(cert.public_bytes(serialization.Encoding.PEM), _pem(key))


def make_serving_cert(
    ca: KeyPair,
    dns_names: list[str],
    ip_addresses: list[str],
    now: datetime.datetime,
    valid_days: int,
) -> KeyPair:
    """A serving certificate for these names, signed by the CA."""
    ca_key = serialization.load_pem_private_key(ca.key_pem, password=None)
    if not isinstance(ca_key, ec.EllipticCurvePrivateKey):
        raise TypeError("the CA key is not an ECDSA key")
    key = _key()
    sans: list[x509.GeneralName] = [x509.DNSName(n) for n in dns_names]
    sans += [x509.IPAddress(ipaddress.ip_address(ip)) for ip in ip_addresses]
    common_name = dns_names[0] if dns_names else (ip_addresses[0] if ip_addresses else "webhook")
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
        .issuer_name(ca.certificate.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(min(now + datetime.timedelta(days=valid_days),
                             ca.certificate.not_valid_after_utc))
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    return KeyPair(cert.public_bytes(serialization.Encoding.PEM), _pem(key))


def _expires_soon(cert: x509.Certificate, now: datetime.datetime,
                  renew_before: datetime.timedelta) -> bool:
    return cert.not_valid_after_utc - renew_before <= now or cert.not_valid_before_utc > now


def ca_is_usable(ca: KeyPair, now: datetime.datetime, renew_before: datetime.timedelta) -> bool:
    """Whether the CA parses, matches its key and is not about to expire."""
    try:
        cert = ca.certificate
        key = serialization.load_pem_private_key(ca.key_pem, password=None)
    except ValueError:
        return False
    return (key.public_key() == cert.public_key()
            and not _expires_soon(cert, now, renew_before))


def serving_is_usable(bundle: Bundle, dns_names: list[str], ip_addresses: list[str],
                      now: datetime.datetime, renew_before: datetime.timedelta) -> bool:
    """Whether the serving pair is signed by the CA, covers the names and is not expiring."""
    try:
        cert = bundle.serving.certificate
        key = serialization.load_pem_private_key(bundle.serving.key_pem, password=None)
        ca_cert = bundle.ca.certificate
        ca_public = ca_cert.public_key()
        if not isinstance(ca_public, ec.EllipticCurvePublicKey):
            return False
        ca_public.verify(cert.signature, cert.tbs_certificate_bytes,
                         ec.ECDSA(cert.signature_hash_algorithm or hashes.SHA256()))
        sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except (ValueError, InvalidSignature, x509.ExtensionNotFound):
        return False
    have_dns = set(sans.get_values_for_type(x509.DNSName))
    have_ips = {str(ip) for ip in sans.get_values_for_type(x509.IPAddress)}
    wanted_ips = {str(ipaddress.ip_address(ip)) for ip in ip_addresses}
    return (key.public_key() == cert.public_key()
            and set(dns_names) <= have_dns and wanted_ips <= have_ips
            and not _expires_soon(cert, now, renew_before))


def next_bundle(
    current: Bundle | None,
    *,
    dns_names: list[str],
    ip_addresses: list[str],
    now: datetime.datetime,
    ca_valid_days: int,
    cert_valid_days: int,
    renew_before: datetime.timedelta,
) -> Bundle | None:
    """The bundle to store next, or None when the current one is still good."""
    if (current is not None
            and serving_is_usable(current, dns_names, ip_addresses, now, renew_before)
            and ca_is_usable(current.ca, now, renew_before)):
        return None
    if current is not None and ca_is_usable(current.ca, now, renew_before):
        ca, previous = current.ca, current.previous_ca_cert_pem
    else:
        ca = make_ca("kaito-webhook-ca", now, ca_valid_days)
        previous = _still_valid_pem(current.ca, now) if current is not None else b""
    return Bundle(ca, make_serving_cert(ca, dns_names, ip_addresses, now, cert_valid_days),
                  previous)


def _still_valid_pem(pair: KeyPair, now: datetime.datetime) -> bytes:
    try:
        cert = pair.certificate
    except ValueError:
        return b""
    return pair.cert_pem if cert.not_valid_after_utc > now else b""
