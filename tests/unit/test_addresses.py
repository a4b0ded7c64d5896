"""crds.addresses reads a host the way the C resolver does, and refuses non-public ones.

The property tests generate address spellings (one to four parts, each decimal, octal or
hex, with the odd stray character) and compare ``inet_aton`` with ``socket.inet_aton``,
which calls the C library's.
"""

from __future__ import annotations

import ipaddress
import socket

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from crds.addresses import address_problem, inet_aton, parse_host, url_problem

pytestmark = pytest.mark.unit


def _c_inet_aton(text: str) -> ipaddress.IPv4Address | None:
    try:
        return ipaddress.IPv4Address(socket.inet_aton(text))
    except OSError:
        return None


@st.composite
def _part(draw: st.DrawFn) -> str:
    value = draw(st.one_of(st.integers(0, 0xFF), st.integers(0, 0xFFFF),
                           st.integers(0, 0xFFFFFFFF), st.integers(0, 2**40)))
    style = draw(st.sampled_from(["dec", "oct", "hex", "HEX", "zeros"]))
    if style == "dec":
        return str(value)
    if style == "oct":
        return "0" + format(value, "o")
    if style == "zeros":
        return "0" * draw(st.integers(1, 4)) + str(value)  # octal if it has 8 or 9 in it
    prefix = draw(st.sampled_from(["0x", "0X"]))
    digits = format(value, "x" if style == "hex" else "X")
    return prefix + "0" * draw(st.integers(0, 3)) + digits


@st.composite
def _spelling(draw: st.DrawFn) -> str:
    parts = draw(st.lists(_part(), min_size=1, max_size=5))
    text = ".".join(parts)
    mutation = draw(st.sampled_from(["none", "none", "insert", "trailing", "space", "empty"]))
    if mutation == "insert":
        index = draw(st.integers(0, len(text)))
        char = draw(st.sampled_from(list(".0189afxgX- +\t")))
        text = text[:index] + char + text[index:]
    elif mutation == "trailing":
        text += draw(st.sampled_from([".", "x", "0x", "..", "9"]))
    elif mutation == "space":
        text += draw(st.sampled_from([" ", "\t", "\n", " junk", "\v.1"]))
    elif mutation == "empty":
        text = text.replace(".", "..", 1)
    return text


@settings(max_examples=1000, deadline=None)
@given(_spelling())
@example("127.1")
@example("0177.0.0.1")
@example("10.1")
@example("0x7f.1")
@example("2130706433")
@example("0x")
@example("08")
@example("1.2.3.4.5")
@example("1.0x1000000")
@example("1.2.65535")
@example("1.2.65536")
@example("4294967296")
@example("00000000000000000000000000000177.1")
def test_spellings_read_as_the_c_resolver_reads_them(text: str) -> None:
    assert inet_aton(text) == _c_inet_aton(text)


@settings(max_examples=1000, deadline=None)
@given(st.text(alphabet="0123456789abcdefxX. \t", max_size=24))
def test_any_short_text_reads_as_the_c_resolver_reads_it(text: str) -> None:
    assert inet_aton(text) == _c_inet_aton(text)


@given(_spelling())
def test_every_spelling_of_a_non_public_address_is_refused_in_a_url(text: str) -> None:
    address = _c_inet_aton(text)
    if address is None or any(char.isspace() for char in text) or text.endswith("."):
        return
    problem = url_problem(f"http://{text}/data.parquet")
    assert (problem is None) == (address.is_global and not address.is_multicast)


@pytest.mark.parametrize("host", ["127.1", "0177.0.0.1", "10.1", "100.64.0.1", "0x7f.1",
                                  "2130706433", "0", "169.254.169.254", "198.51.100.1",
                                  "[::ffff:127.0.0.1]", "[::1]", "[fe80::1%25eth0]",
                                  "[2002:a9fe:a9fe::1]", "localhost",
                                  "\uff11\uff12\uff17.\uff10.\uff10.\uff11",  # full width
                                  "127\u30020\u30020\u30021"])  # ideographic full stops
def test_the_issue_spellings_are_refused(host: str) -> None:
    assert url_problem(f"http://{host}/d") is not None


def test_a_unicode_spelling_is_read_as_the_resolver_is_handed_it() -> None:
    host = "\uff11\uff12\uff17.\uff10.\uff10.\uff11"
    (info, *_) = socket.getaddrinfo(host, 80, type=socket.SOCK_STREAM)
    assert info[4][0] == "127.0.0.1"  # what kaito fetch would connect to
    assert parse_host(host) == ipaddress.IPv4Address("127.0.0.1")
    assert url_problem("http://b\u00fccher.example/d") is None


def test_parse_host_leaves_dns_names_to_the_resolver() -> None:
    assert parse_host("huggingface.co") is None
    assert parse_host("1.2.3.4.nip.io") is None
    assert parse_host("8.8.8.8.") == ipaddress.IPv4Address("8.8.8.8")


def test_the_allow_list_matches_the_embedded_address_too() -> None:
    mapped = ipaddress.ip_address("::ffff:10.0.0.1")
    assert address_problem(mapped) is not None
    assert address_problem(mapped, [ipaddress.ip_network("10.0.0.0/8")]) is None
    assert address_problem(ipaddress.ip_address("2606:4700::1111")) is None
