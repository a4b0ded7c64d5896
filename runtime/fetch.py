"""``kaito fetch --dest DIR URL...``: download a tuning job's input URLs, safely.

The URLs come from whoever wrote the Workspace, and the download runs inside the cluster,
so the address the socket connects to is what gets checked, not the URL's spelling:
the host is resolved here, every resolved address must be global (or inside an allowed
CIDR, ``--allow-cidr`` / ``KAITO_FETCH_ALLOW_CIDRS``, for in-cluster data servers; the rule
is ``crds.addresses``, the one the admission webhook applies to the URL), and the
connection goes to that checked address (TLS still verifies the certificate for the host
name, and the Host header names it). ``http://127.1/``, ``http://2130706433/`` or a DNS
name pointing at 169.254.169.254 are all refused the same way; so is a redirect to one,
since each of the at most five redirects is checked again.

Each file streams into a temporary file in DIR that is renamed into place when complete,
under a size cap for the whole run; transient failures (connection errors, 408, 429,
5xx) are retried with exponential backoff. Exit codes: 0 done, 2 refused (bad URL, not
allowed address, too many redirects, over the size cap), 3 download failed. The reason
also goes to the container's termination message. URLs are logged without their query
string, which often holds a signature.
"""

from __future__ import annotations

import argparse
import ipaddress
import logging
import os
import posixpath
import re
import socket
import sys
import tempfile
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO
from urllib.parse import SplitResult, unquote, urljoin, urlsplit

import urllib3

from crds import addresses as address_rules
from crds.addresses import Address, Network
from crds.logs import configure_logging
from runtime.termination import TERMINATION_LOG, command_failed

log = logging.getLogger(__name__)

EXIT_REFUSED = 2
EXIT_FAILED = 3
ALLOW_CIDRS_ENV = "KAITO_FETCH_ALLOW_CIDRS"
DEFAULT_MAX_BYTES = 10 * 1024**3
MAX_REDIRECTS = 5
REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
RETRYABLE_STATUSES = frozenset({408, 429, 500, 502, 503, 504})
MAX_RETRY_AFTER_SECONDS = 60.0
CHUNK_BYTES = 1 << 20
_UNSAFE_NAME_CHARS = re.compile(r"[^A-Za-z0-9._-]")


class RefusedError(Exception):
    """The URL may not be downloaded (retrying cannot help)."""


class DownloadError(Exception):
    """The download failed; ``is_retryable`` says whether trying again may help."""

    def __init__(self, message: str, *, is_retryable: bool, retry_after_seconds: float = 0):
        super().__init__(message)
        self.is_retryable = is_retryable
        self.retry_after_seconds = retry_after_seconds


@dataclass(frozen=True)
class FetchOptions:
    """How ``fetch`` downloads."""

    allowed_networks: tuple[Network, ...] = ()
    max_bytes: int = DEFAULT_MAX_BYTES
    retries: int = 4
    backoff_seconds: float = 1.0
    timeout_seconds: float = 30.0
    ca_file: str | None = None
    """PEM bundle of CAs to trust instead of the public ones (an in-cluster server)."""


@dataclass
class _Budget:
    """Bytes the rest of the run may still write."""

    remaining: int


@dataclass
class FetchResult:
    files: list[Path] = field(default_factory=list)
    total_bytes: int = 0


def redact(url: str) -> str:
    """The URL without user info and query: what may appear in logs and messages."""
    try:
        parts = urlsplit(url)
        netloc = parts.netloc.rpartition("@")[2]
    except ValueError:
        return "<unparsable URL>"
    query = "?..." if parts.query else ""
    return f"{parts.scheme}://{netloc}{parts.path}{query}"


def parse_networks(texts: Iterable[str]) -> tuple[Network, ...]:
    """CIDRs from flags or the environment (comma or space separated)."""
    try:
        return address_rules.parse_networks(texts)
    except ValueError as err:
        raise RefusedError(str(err)) from None


def address_problem(address: Address, allowed: Sequence[Network]) -> str | None:
    """Why connecting to ``address`` is refused (the admission webhook's rule,
    ``crds.addresses``), or None when it is allowed."""
    problem = address_rules.address_problem(address, allowed)
    return None if problem is None else f"{problem}; allow it with --allow-cidr"


def _split(url: str) -> SplitResult:
    try:
        parts = urlsplit(url.strip())
        parts.port  # noqa: B018 - raises ValueError for a bad port
    except ValueError as err:
        raise RefusedError(f"not a valid URL: {err}") from None
    if parts.scheme not in ("http", "https"):
        raise RefusedError("only http and https URLs can be fetched")
    if not parts.hostname:
        raise RefusedError("the URL has no host")
    if parts.username is not None or parts.password is not None:
        raise RefusedError("credentials in the URL are not supported; use a signed URL")
    return parts


def resolve_checked(host: str, port: int, allowed: Sequence[Network]) -> list[Address]:
    """Every address ``host`` resolves to, if each is allowed; else RefusedError.

    The resolver decides what ``127.1`` or ``0177.0.0.1`` mean, the same way the
    connection would, so no spelling slips past the check; the host as written is
    also read the webhook's way, in case this resolver reads it differently."""
    literal = address_rules.parse_host(host)
    if literal is not None:
        problem = address_problem(literal, allowed)
        if problem is not None:
            raise RefusedError(f"host {host}: {problem}")
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as err:
        raise DownloadError(f"cannot resolve {host}: {err.strerror}", is_retryable=True) from None
    except UnicodeError:
        raise RefusedError(f"host {host!r} is not a valid name") from None
    addresses: list[Address] = []
    for info in infos:
        text = str(info[4][0]).split("%", 1)[0]
        address = ipaddress.ip_address(text)
        problem = address_problem(address, allowed)
        if problem is not None:
            raise RefusedError(f"host {host} resolves to {address}: {problem}")
        if address not in addresses:
            addresses.append(address)
    if not addresses:
        raise DownloadError(f"cannot resolve {host}: no addresses", is_retryable=True)
    return addresses


def _host_header(parts: SplitResult) -> str:
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    default_port = 443 if parts.scheme == "https" else 80
    if parts.port is not None and parts.port != default_port:
        host = f"{host}:{parts.port}"
    return host


def _pool(
    parts: SplitResult, address: Address, options: FetchOptions
) -> urllib3.HTTPConnectionPool:
    """A pool connecting to the checked ``address`` while speaking to the URL's host."""
    port = parts.port or (443 if parts.scheme == "https" else 80)
    timeout = options.timeout_seconds
    timeouts = urllib3.Timeout(connect=min(timeout, 15.0), read=timeout)
    if parts.scheme == "http":
        return urllib3.HTTPConnectionPool(str(address), port, timeout=timeouts, retries=False)
    hostname = parts.hostname or ""
    return urllib3.HTTPSConnectionPool(
        str(address),
        port,
        timeout=timeouts,
        retries=False,
        cert_reqs="CERT_REQUIRED",
        ca_certs=options.ca_file or _ca_bundle(),
        server_hostname=hostname,  # SNI
        assert_hostname=hostname,  # the certificate must name the host, not the address
    )


def _ca_bundle() -> str | None:
    try:
        import certifi
    except ImportError:
        return None  # the system's trust store
    return str(certifi.where())


def _retry_after(response: urllib3.BaseHTTPResponse) -> float:
    value = response.headers.get("Retry-After", "")
    try:
        return min(max(float(value), 0.0), MAX_RETRY_AFTER_SECONDS)
    except ValueError:
        return 0.0


def _connect(
    parts: SplitResult, addresses: Sequence[Address], options: FetchOptions
) -> tuple[urllib3.HTTPConnectionPool, urllib3.BaseHTTPResponse]:
    """GET the URL from the first checked address that answers."""
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    headers = {
        "Host": _host_header(parts),
        "User-Agent": "kaito-fetch",
        "Accept-Encoding": "identity",
    }
    last_error = ""
    for address in addresses:
        pool = _pool(parts, address, options)
        try:
            response = pool.urlopen(
                "GET", target, headers=headers, redirect=False, retries=False,
                preload_content=False, assert_same_host=False,
            )
        except urllib3.exceptions.SSLError as err:
            pool.close()
            raise DownloadError(f"TLS failed: {err}", is_retryable=False) from None
        except urllib3.exceptions.HTTPError as err:
            pool.close()
            last_error = f"{address}: {err}"
            continue
        return pool, response
    raise DownloadError(f"cannot connect: {last_error}", is_retryable=True)


def _write_body(
    response: urllib3.BaseHTTPResponse, handle: IO[bytes], budget: _Budget
) -> int:
    length = response.headers.get("Content-Length")
    if length is not None and length.isdigit() and int(length) > budget.remaining:
        raise RefusedError(
            f"the file is {length} bytes, more than the {budget.remaining} bytes left "
            "under --max-bytes"
        )
    written = 0
    try:
        for chunk in response.stream(CHUNK_BYTES, decode_content=True):
            written += len(chunk)
            if written > budget.remaining:
                raise RefusedError(f"the download exceeds --max-bytes ({budget.remaining} left)")
            handle.write(chunk)
    except urllib3.exceptions.HTTPError as err:
        raise DownloadError(f"the download broke off: {err}", is_retryable=True) from None
    return written


def _download_once(
    url: str, handle: IO[bytes], options: FetchOptions, budget: _Budget
) -> int:
    """One attempt: follow checked redirects, then stream the body into ``handle``."""
    current = url
    for _ in range(MAX_REDIRECTS + 1):
        parts = _split(current)
        port = parts.port or (443 if parts.scheme == "https" else 80)
        addresses = resolve_checked(parts.hostname or "", port, options.allowed_networks)
        pool, response = _connect(parts, addresses, options)
        try:
            status = response.status
            if status in REDIRECT_STATUSES:
                location = response.headers.get("Location")
                if not location:
                    raise DownloadError(f"HTTP {status} without a Location", is_retryable=False)
                current = urljoin(current, location)
                log.info("following redirect", extra={"url": redact(current), "status": status})
                continue
            if status in RETRYABLE_STATUSES:
                raise DownloadError(f"HTTP {status}", is_retryable=True,
                                    retry_after_seconds=_retry_after(response))
            if not 200 <= status < 300:
                raise DownloadError(f"HTTP {status}", is_retryable=False)
            handle.seek(0)
            handle.truncate()
            return _write_body(response, handle, budget)
        finally:
            # Not drained: the rest of an oversized body is not worth reading.
            response.close()
            pool.close()
    raise RefusedError(f"more than {MAX_REDIRECTS} redirects")


def download(url: str, handle: IO[bytes], options: FetchOptions, budget: _Budget) -> int:
    """Download ``url`` into ``handle`` with retries; return the bytes written."""
    for attempt in range(options.retries + 1):
        try:
            return _download_once(url, handle, options, budget)
        except DownloadError as err:
            if not err.is_retryable or attempt == options.retries:
                raise
            delay = max(options.backoff_seconds * 2**attempt, err.retry_after_seconds)
            log.warning("download failed, retrying", extra={
                "url": redact(url), "attempt": attempt + 1, "error": str(err),
                "delay_seconds": delay,
            })
            time.sleep(delay)
    raise AssertionError("unreachable")


def file_name(url: str, used: set[str]) -> str:
    """A safe file name from the URL's path, unique among ``used`` (which it joins)."""
    raw = posixpath.basename(unquote(urlsplit(url).path))
    name = _UNSAFE_NAME_CHARS.sub("_", raw).lstrip(".-")[:200] or "data"
    stem, dot, suffix = name.partition(".")
    candidate, counter = name, 1
    while candidate in used:
        candidate = f"{stem}-{counter}{dot}{suffix}"
        counter += 1
    used.add(candidate)
    return candidate


def fetch(urls: Sequence[str], dest: Path, options: FetchOptions) -> FetchResult:
    """Download every URL into ``dest``; raise RefusedError or DownloadError on the
    first that fails (files already complete stay)."""
    for url in urls:  # refuse a bad URL before downloading anything
        try:
            _split(url)
        except RefusedError as err:
            raise RefusedError(f"{redact(url)}: {err}") from None
    dest.mkdir(parents=True, exist_ok=True)
    budget = _Budget(options.max_bytes)
    used: set[str] = set()
    result = FetchResult()
    for url in urls:
        name = file_name(url, used)
        with tempfile.NamedTemporaryFile(dir=dest, prefix=".kaito-fetch-", suffix=".part",
                                         delete=False) as handle:
            temporary = Path(handle.name)
            try:
                size = download(url, handle, options, budget)
                handle.flush()
                os.fsync(handle.fileno())
            except RefusedError as err:
                handle.close()
                temporary.unlink(missing_ok=True)
                raise RefusedError(f"{redact(url)}: {err}") from None
            except DownloadError as err:
                handle.close()
                temporary.unlink(missing_ok=True)
                raise DownloadError(f"{redact(url)}: {err}", is_retryable=False) from None
            except BaseException:
                handle.close()
                temporary.unlink(missing_ok=True)
                raise
        target = dest / name
        os.replace(temporary, target)
        budget.remaining -= size
        result.files.append(target)
        result.total_bytes += size
        log.info("file fetched", extra={"url": redact(url), "file": str(target), "bytes": size})
    return result


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="kaito fetch", description="Download http(s) URLs into a folder, safely."
    )
    parser.add_argument("--dest", required=True, type=Path, help="folder to write into")
    parser.add_argument("--max-bytes", type=int, default=DEFAULT_MAX_BYTES,
                        help="most bytes to write in all (default 10 GiB)")
    parser.add_argument("--allow-cidr", action="append", default=[], metavar="CIDR",
                        help=f"also allow this non-public network (repeatable; also "
                             f"${ALLOW_CIDRS_ENV}, comma separated)")
    parser.add_argument("--retries", type=int, default=4, help="retries of a transient failure")
    parser.add_argument("--backoff-seconds", type=float, default=1.0,
                        help="first retry delay; doubles each time")
    parser.add_argument("--timeout-seconds", type=float, default=30.0,
                        help="connect and read timeout")
    parser.add_argument("--ca-file", help="PEM file of CAs to trust instead of the public ones")
    parser.add_argument("--termination-log", default=TERMINATION_LOG, help=argparse.SUPPRESS)
    parser.add_argument("urls", nargs="+", metavar="URL")
    return parser


def _fail(code: int, message: str, termination_log: str) -> int:
    return command_failed(log, "kaito fetch", message, code, termination_log=termination_log)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    configure_logging("INFO", "json")
    try:
        allowed = parse_networks([*args.allow_cidr, os.environ.get(ALLOW_CIDRS_ENV, "")])
        if args.max_bytes <= 0 or args.retries < 0:
            raise RefusedError("--max-bytes must be positive and --retries not negative")
        options = FetchOptions(
            allowed_networks=allowed,
            max_bytes=args.max_bytes,
            retries=args.retries,
            backoff_seconds=args.backoff_seconds,
            timeout_seconds=args.timeout_seconds,
            ca_file=args.ca_file,
        )
        result = fetch(args.urls, args.dest, options)
    except RefusedError as err:
        return _fail(EXIT_REFUSED, f"refused: {err}", args.termination_log)
    except DownloadError as err:
        return _fail(EXIT_FAILED, f"download failed: {err}", args.termination_log)
    except OSError as err:
        return _fail(EXIT_FAILED, f"cannot write into {args.dest}: {err}", args.termination_log)
    for path in result.files:
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
