"""Checks on tuning input URLs: http(s) only, and never at the node's own network.

The tuning pod downloads these URLs from inside the cluster, so a URL at localhost, a
link-local address (the cloud metadata service at 169.254.169.254) or a private range
would let a workspace author read things they should not. The check is on the URL as
written (no DNS look-up, so the rule is pure and cannot block); the download side must
still refuse redirects to such addresses.
"""

from __future__ import annotations

import ipaddress
from urllib.parse import urlsplit

_LOCAL_NAMES = ("localhost", "localhost.localdomain", "metadata.google.internal",
                "metadata.azure.internal", "instance-data")


def _as_ip(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        pass
    # Forms like 2130706433 or 0x7f.1 that resolvers still accept as IPv4.
    try:
        if host.isdigit():
            return ipaddress.IPv4Address(int(host))
        if host.lower().startswith("0x") and all(c in "0123456789abcdefx." for c in host.lower()):
            return ipaddress.IPv4Address(int(host.replace(".", ""), 16))
    except (ValueError, ipaddress.AddressValueError):
        return None
    return None


def url_problem(url: str) -> str | None:
    """Why this URL may not be downloaded by a tuning job, or None when it may."""
    try:
        parts = urlsplit(url.strip())
        port = parts.port
    except ValueError:
        return "is not a valid URL"
    del port  # parsed only to reject bad ports
    if parts.scheme not in ("http", "https"):
        return "must be an http or https URL"
    host = (parts.hostname or "").rstrip(".").lower()
    if not host:
        return "has no host"
    if host in _LOCAL_NAMES or host.endswith(".localhost"):
        return "must not point at localhost"
    ip = _as_ip(host)
    if ip is None:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    if ip.is_loopback or ip.is_unspecified:
        return "must not point at a loopback address"
    if ip.is_link_local:
        return "must not point at a link-local address (cloud metadata)"
    if ip.is_private or ip.is_reserved or ip.is_multicast:
        return "must not point at a private address"
    return None
