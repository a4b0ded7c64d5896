"""Which network addresses a tuning job may download from: one rule for admission and pod.

Tuning input URLs come from whoever wrote the Workspace, and the download runs inside
the cluster, so a URL at the node itself, the cloud metadata service or a private range
would let a workspace author read what they should not (SSRF). The webhook checks the
URL as written (pure, no DNS); the pod's downloader (``kaito fetch``) checks again every
address the host resolves to and every redirect. Both import this module so they cannot
disagree.

Hosts are read the way the C resolver reads them: ``inet_aton`` accepts one to four
parts, each decimal, octal (leading ``0``) or hex (``0x``), the last part filling the
remaining bytes, so ``127.1``, ``0177.0.0.1``, ``0x7f000001`` and ``2130706433`` all mean
127.0.0.1. An address must be global (``ipaddress``'s ``is_global``, which covers
private, shared/CGNAT, benchmark, documentation and reserved ranges) and not multicast;
an IPv6 address that embeds an IPv4 one (mapped, NAT64, 6to4) is judged by the IPv4
address. The only way around the rule is an operator's explicit allow-list of CIDRs
(for in-cluster data servers).
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable, Sequence
from urllib.parse import urlsplit

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network

# The most each part count's last part may hold: a.b.c.d, a.b.c (16 bits), a.b (24), a.
_LAST_PART_MAX = (0xFFFFFFFF, 0xFFFFFF, 0xFFFF, 0xFF)
_C_SPACE = " \t\n\v\f\r"
_HEX_DIGITS = "0123456789abcdefABCDEF"
_OCTAL_DIGITS = "01234567"
_DECIMAL_DIGITS = "0123456789"
_NAT64_PREFIX = ipaddress.IPv6Network("64:ff9b::/96")
_MAPPED_PREFIX = ipaddress.IPv6Network("::ffff:0:0/96")
_SHARED_SPACE = ipaddress.IPv4Network("100.64.0.0/10")
# Names that mean this machine or the metadata service without asking DNS; each stands
# for the address it reaches, so an allow-list covering that address admits it too.
_LOOPBACK = ipaddress.IPv4Address("127.0.0.1")
_METADATA = ipaddress.IPv4Address("169.254.169.254")
_LOCAL_NAMES: dict[str, Address] = {
    "localhost": _LOOPBACK,
    "localhost.localdomain": _LOOPBACK,
    "ip6-localhost": ipaddress.IPv6Address("::1"),
    "ip6-loopback": ipaddress.IPv6Address("::1"),
    "metadata.google.internal": _METADATA,
    "metadata.azure.internal": _METADATA,
    "instance-data": _METADATA,
    "instance-data.ec2.internal": _METADATA,
}


def _c_strtoul(text: str, start: int) -> tuple[int, int]:
    """``strtoul(text + start, &end, 0)`` for text starting with a digit: (value, end)."""
    if text.startswith(("0x", "0X"), start):
        end = start + 2
        while end < len(text) and text[end] in _HEX_DIGITS:
            end += 1
        if end == start + 2:  # "0x" without hex digits: strtoul reads only the "0"
            return 0, start + 1
        return int(text[start + 2 : end], 16), end
    digits, base = (_OCTAL_DIGITS, 8) if text[start] == "0" else (_DECIMAL_DIGITS, 10)
    end = start
    while end < len(text) and text[end] in digits:
        end += 1
    return int(text[start:end], base), end


def inet_aton(text: str) -> ipaddress.IPv4Address | None:
    """The IPv4 address glibc's ``inet_aton`` reads from ``text``, or None if it reads none.

    Mirrors glibc exactly, including that parsing stops at the first white space (what
    follows it is ignored), so the property test can compare with ``socket.inet_aton``.
    """
    parts: list[int] = []
    position = 0
    while True:
        if position >= len(text) or text[position] not in _DECIMAL_DIGITS:
            return None
        value, position = _c_strtoul(text, position)
        if value > 0xFFFFFFFF:
            return None
        if position < len(text) and text[position] == ".":
            if len(parts) > 2 or value > 0xFF:
                return None
            parts.append(value)
            position += 1
            continue
        break
    if position < len(text) and text[position] not in _C_SPACE:
        return None
    if value > _LAST_PART_MAX[len(parts)]:
        return None
    number = value
    for index, part in enumerate(parts):
        number |= part << (24 - 8 * index)
    return ipaddress.IPv4Address(number)


def parse_host(host: str) -> Address | None:
    """The address a URL's host names literally (any IPv6 or inet_aton spelling; a
    name for this machine or the metadata service), or None for a DNS name."""
    name = host.strip()
    if name.startswith("[") and name.endswith("]"):
        name = name[1:-1]
    if not name.isascii():
        # What the resolver is handed (Python encodes names with IDNA, which folds
        # full-width digits and ideographic full stops: "１２７。０。０。１" is 127.0.0.1).
        try:
            name = name.encode("idna").decode("ascii")
        except UnicodeError:
            return None
    name = name.rstrip(".").lower()
    if name in _LOCAL_NAMES:
        return _LOCAL_NAMES[name]
    if name.endswith(".localhost"):
        return _LOOPBACK
    if ":" in name:
        try:
            return ipaddress.IPv6Address(name.split("%", 1)[0])
        except ValueError:
            return None
    return inet_aton(name)


def parse_networks(texts: Iterable[str]) -> tuple[Network, ...]:
    """CIDRs from flags, settings or the environment (comma or space separated);
    ValueError names the one that is not a network."""
    networks: list[Network] = []
    for text in texts:
        for item in re.split(r"[,\s]+", text.strip()):
            if not item:
                continue
            try:
                networks.append(ipaddress.ip_network(item, strict=False))
            except ValueError as err:
                raise ValueError(f"allowed CIDR {item!r} is not a network: {err}") from None
    return tuple(networks)


def embedded_ipv4(address: Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 one carries traffic to (mapped, NAT64, 6to4), if any."""
    if isinstance(address, ipaddress.IPv4Address):
        return None
    if address in _MAPPED_PREFIX or address in _NAT64_PREFIX:
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    return address.sixtofour


def _kind(address: Address) -> str | None:
    """What makes ``address`` not public, or None when it is a public unicast address."""
    if address.is_unspecified:
        return "unspecified"
    if address.is_loopback:
        return "loopback"
    if address.is_link_local:
        return "link-local, where the cloud metadata service is"
    if address.is_multicast:
        return "multicast"
    if isinstance(address, ipaddress.IPv4Address) and address in _SHARED_SPACE:
        return "shared address space (CGNAT)"
    if isinstance(address, ipaddress.IPv6Address) and address.is_site_local:
        return "site-local"
    if address.is_private:
        return "private"
    if address.is_reserved or not address.is_global:
        return "reserved"
    return None


def _is_allowed(address: Address, allowed: Sequence[Network]) -> bool:
    return any(address.version == net.version and address in net for net in allowed)


def address_problem(address: Address, allowed: Sequence[Network] = ()) -> str | None:
    """Why connecting to ``address`` is refused, or None when it is allowed."""
    inner = embedded_ipv4(address)
    if _is_allowed(address, allowed) or (inner is not None and _is_allowed(inner, allowed)):
        return None
    judged: Address = inner if inner is not None else address
    kind = _kind(judged)
    if kind is None:
        return None
    via = f" (via {address})" if inner is not None else ""
    return f"address {judged}{via} is not a public address ({kind})"


def url_problem(url: str, allowed: Sequence[Network] = (), *, hint: str = "") -> str | None:
    """Why a tuning job may not download this URL, or None when it may (no DNS look-up:
    the downloader checks the addresses a name resolves to). ``hint`` follows a refused
    address: how the operator can allow it."""
    try:
        parts = urlsplit(url.strip())
        parts.port  # noqa: B018 - raises ValueError for a bad port
    except ValueError:
        return "is not a valid URL"
    if parts.scheme not in ("http", "https"):
        return "must be an http or https URL"
    host = parts.hostname or ""
    if not host.rstrip("."):
        return "has no host"
    if any(char in _C_SPACE for char in host):
        return "has white space in its host"
    if not host.isascii():
        try:
            host.encode("idna")
        except UnicodeError:
            return "has a host that is not a valid internationalized name"
    address = parse_host(host)
    if address is None:
        return None
    problem = address_problem(address, allowed)
    if problem is None:
        return None
    return f"host {host!r}: {problem}" + (f"; {hint}" if hint else "")
