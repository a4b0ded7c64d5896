"""``kaito fetch``: downloads tuning data from a local HTTP server, and refuses what a
workspace author must not reach (loopback in any spelling, redirects to metadata
addresses) unless the allow-list names it.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from runtime import fetch
from tests.log_lines import error_record

PAYLOAD = b"prompt,completion\nhi,hello\n" * 100
FAST = ["--backoff-seconds", "0.01", "--timeout-seconds", "5"]


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def log_message(self, format: str, *args: object) -> None:
        pass

    def _send(self, status: int, body: bytes = b"", headers: dict[str, str] | None = None,
              *, length: bool = True) -> None:
        self.send_response(status)
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        if length:
            self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        path = self.path.split("?", 1)[0]
        self.server.requests.append(self.path)
        self.server.hosts.append(self.headers.get("Host", ""))
        if path in ("/data/train.csv", "/other/train.csv"):
            self._send(200, PAYLOAD)
        elif path == "/missing":
            self._send(404, b"not found")
        elif path == "/flaky":
            self.server.flaky_calls += 1
            if self.server.flaky_calls <= 2:
                self._send(503, b"busy")
            else:
                self._send(200, PAYLOAD)
        elif path == "/to-metadata":
            self._send(302, headers={"Location": "http://169.254.169.254/latest/meta-data"})
        elif path == "/to-loopback-spelling":
            port = self.server.server_address[1]
            self._send(302, headers={"Location": f"http://2130706433:{port}/data/train.csv"})
        elif path == "/to-other-loopback":
            port = self.server.server_address[1]
            self._send(302, headers={"Location": f"http://2130706434:{port}/data/train.csv"})
        elif path == "/to-data":
            self._send(302, headers={"Location": "/data/train.csv"})
        elif path == "/loop":
            self._send(302, headers={"Location": "/loop"})
        elif path == "/big":
            self._send(200, b"x" * 5000)
        elif path == "/big-chunked":  # no Content-Length: the cap must hold while streaming
            self.send_response(200)
            self.send_header("Connection", "close")
            self.end_headers()
            for _ in range(10):
                self.wfile.write(b"y" * 1000)
            self.close_connection = True
        else:
            self._send(500, b"unexpected path")


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.requests: list[str] = []
        self.hosts: list[str] = []
        self.flaky_calls = 0


@pytest.fixture
def server() -> Iterator[_Server]:
    httpd = _Server()
    thread = threading.Thread(target=httpd.serve_forever, args=(0.05,), name="fetch-test-server", daemon=True)
    thread.start()
    try:
        yield httpd
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=5)


def url(server: _Server, path: str) -> str:
    return f"http://127.0.0.1:{server.server_address[1]}{path}"


def run(tmp_path: Path, *args: str, allow: bool = True) -> tuple[int, Path, Path]:
    dest = tmp_path / "data"
    log = tmp_path / "termination-log"
    allow_args = ["--allow-cidr", "127.0.0.0/8"] if allow else []
    code = fetch.main(["--dest", str(dest), "--termination-log", str(log), *FAST, *allow_args,
                       *args])
    return code, dest, log


def files_in(dest: Path) -> list[str]:
    return sorted(p.name for p in dest.iterdir()) if dest.exists() else []


@pytest.fixture(autouse=True)
def _no_env_allow_list(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(fetch.ALLOW_CIDRS_ENV, raising=False)


def test_downloads_each_url_under_a_unique_safe_name(server: _Server, tmp_path: Path) -> None:
    code, dest, log = run(
        tmp_path,
        url(server, "/data/train.csv?sig=secret"),
        url(server, "/other/train.csv"),
        url(server, "/to-data"),
    )
    assert code == 0
    assert files_in(dest) == ["to-data", "train-1.csv", "train.csv"]
    assert (dest / "train.csv").read_bytes() == PAYLOAD
    assert (dest / "to-data").read_bytes() == PAYLOAD  # the redirect was followed
    assert not log.exists()
    # The connection went to the checked address; the Host header names the URL's host.
    assert server.hosts[0] == f"127.0.0.1:{server.server_address[1]}"


def test_allow_list_from_the_environment(
    server: _Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(fetch.ALLOW_CIDRS_ENV, "10.0.0.0/8, 127.0.0.1/32")
    code, dest, _ = run(tmp_path, url(server, "/data/train.csv"), allow=False)
    assert code == 0
    assert files_in(dest) == ["train.csv"]


def test_loopback_is_refused_without_the_allow_list(
    server: _Server, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, dest, log = run(tmp_path, url(server, "/data/train.csv?sig=secret"), allow=False)
    assert code == fetch.EXIT_REFUSED
    assert server.requests == []  # never connected
    assert files_in(dest) == []
    stderr = capsys.readouterr().err
    error = error_record(stderr)
    assert error["msg"] == "command failed" and error["command"] == "kaito fetch"
    assert error["exit_code"] == fetch.EXIT_REFUSED
    assert error["error"].startswith("refused: ")
    assert "127.0.0.1" in error["error"] and "secret" not in stderr
    assert "not a public address" in log.read_text()


@pytest.mark.parametrize("host", ["127.1", "0177.0.0.1", "2130706433", "0x7f.0.0.1",
                                  "localhost", "[::1]", "[::ffff:127.0.0.1]", "0.0.0.0"])
def test_other_spellings_of_this_machine_are_refused(
    server: _Server, tmp_path: Path, host: str
) -> None:
    port = server.server_address[1]
    code, _, log = run(tmp_path, f"http://{host}:{port}/data/train.csv", allow=False)
    assert code == fetch.EXIT_REFUSED
    assert server.requests == []
    assert "refused" in log.read_text()


@pytest.mark.parametrize("address", ["10.1.2.3", "169.254.169.254", "192.168.0.1",
                                     "100.64.0.1", "fd00::1", "fe80::1"])
def test_non_global_addresses_are_refused(address: str) -> None:
    import ipaddress

    assert fetch.address_problem(ipaddress.ip_address(address), []) is not None
    assert fetch.address_problem(ipaddress.ip_address("8.8.8.8"), []) is None
    allowed = fetch.parse_networks(["10.0.0.0/8,fd00::/8"])
    assert (fetch.address_problem(ipaddress.ip_address(address), allowed) is None) == (
        address in ("10.1.2.3", "fd00::1"))


def test_an_allowed_spelling_connects_to_the_resolved_address(
    server: _Server, tmp_path: Path
) -> None:
    port = server.server_address[1]
    code, dest, _ = run(tmp_path, f"http://127.1:{port}/data/train.csv")
    assert code == 0
    assert files_in(dest) == ["train.csv"]
    assert server.hosts == [f"127.1:{port}"]


def test_a_redirect_to_the_metadata_address_is_refused(server: _Server, tmp_path: Path) -> None:
    code, dest, log = run(tmp_path, url(server, "/to-metadata"))
    assert code == fetch.EXIT_REFUSED
    assert server.requests == ["/to-metadata"]
    assert "169.254.169.254" in log.read_text()
    assert files_in(dest) == []


def test_a_redirect_is_checked_on_the_address_it_resolves_to(
    server: _Server, tmp_path: Path
) -> None:
    # The redirect names 2130706433 (127.0.0.1) or 2130706434 (127.0.0.2): only the
    # first is inside the allow-list 127.0.0.1/32.
    dest, log = tmp_path / "data", tmp_path / "log"
    argv = ["--dest", str(dest), "--termination-log", str(log), *FAST,
            "--allow-cidr", "127.0.0.1/32"]
    assert fetch.main([*argv, url(server, "/to-loopback-spelling")]) == 0
    assert (dest / "to-loopback-spelling").read_bytes() == PAYLOAD
    assert fetch.main([*argv, url(server, "/to-other-loopback")]) == fetch.EXIT_REFUSED
    assert "127.0.0.2" in log.read_text()
    assert server.requests == ["/to-loopback-spelling", "/data/train.csv", "/to-other-loopback"]


def test_a_redirect_loop_stops_after_five(server: _Server, tmp_path: Path) -> None:
    code, dest, log = run(tmp_path, url(server, "/loop"))
    assert code == fetch.EXIT_REFUSED
    assert len(server.requests) == fetch.MAX_REDIRECTS + 1
    assert "redirects" in log.read_text()
    assert files_in(dest) == []


@pytest.mark.parametrize("path", ["/big", "/big-chunked"])
def test_the_size_cap_leaves_no_file_behind(server: _Server, tmp_path: Path, path: str) -> None:
    code, dest, log = run(tmp_path, "--max-bytes", "1000", url(server, path))
    assert code == fetch.EXIT_REFUSED
    assert "--max-bytes" in log.read_text()
    assert files_in(dest) == []  # not even the hidden partial file


def test_the_size_cap_counts_every_file(server: _Server, tmp_path: Path) -> None:
    cap = str(len(PAYLOAD) + 10)
    code, dest, _ = run(tmp_path, "--max-bytes", cap, url(server, "/data/train.csv"),
                        url(server, "/other/train.csv"))
    assert code == fetch.EXIT_REFUSED
    assert files_in(dest) == ["train.csv"]


def test_a_404_fails_without_retrying(
    server: _Server, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, dest, log = run(tmp_path, url(server, "/missing"))
    assert code == fetch.EXIT_FAILED
    assert server.requests == ["/missing"]
    assert "HTTP 404" in log.read_text()
    assert "HTTP 404" in error_record(capsys.readouterr().err)["error"]
    assert files_in(dest) == []


def test_a_503_is_retried_with_backoff_until_it_succeeds(
    server: _Server, tmp_path: Path
) -> None:
    code, dest, _ = run(tmp_path, url(server, "/flaky"))
    assert code == 0
    assert server.flaky_calls == 3
    assert (dest / "flaky").read_bytes() == PAYLOAD


def test_retries_run_out(server: _Server, tmp_path: Path) -> None:
    code, _, log = run(tmp_path, "--retries", "1", url(server, "/flaky"))
    assert code == fetch.EXIT_FAILED
    assert server.flaky_calls == 2
    assert "HTTP 503" in log.read_text()


@pytest.mark.parametrize("bad", ["ftp://example.com/x", "file:///etc/passwd", "http://",
                                 "https://user:pw@example.com/x", "http://example.com:99999/"])
def test_bad_urls_are_refused_before_any_download(
    server: _Server, tmp_path: Path, bad: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code, dest, _ = run(tmp_path, url(server, "/data/train.csv"), bad)
    assert code == fetch.EXIT_REFUSED
    assert server.requests == []
    assert files_in(dest) == []
    stderr = capsys.readouterr().err
    assert error_record(stderr)["error"].startswith("refused: ")
    assert "pw" not in stderr


def test_file_names_are_safe() -> None:
    used: set[str] = set()
    assert fetch.file_name("https://x.org/a/..%2F..%2Fetc%2Fpasswd", used) == "passwd"
    assert fetch.file_name("https://x.org/", used) == "data"
    assert fetch.file_name("https://x.org/.hidden", used) == "hidden"
    assert fetch.file_name("https://x.org/d/train%20set.parquet?x=1", used) == "train_set.parquet"
    assert fetch.file_name("https://y.org/train set.parquet", used) == "train_set-1.parquet"


def test_the_kaito_command_dispatches_to_fetch(server: _Server, tmp_path: Path) -> None:
    from kaito.cli import main

    dest = tmp_path / "out"
    code = main(["fetch", "--dest", str(dest), "--allow-cidr", "127.0.0.1/32",
                 "--termination-log", str(tmp_path / "log"), url(server, "/data/train.csv")])
    assert code == 0
    assert files_in(dest) == ["train.csv"]


@pytest.fixture
def tls_server(tmp_path: Path) -> Iterator[tuple[_Server, Path]]:
    """The same server over TLS with a certificate for data.kaito.test from a local CA."""
    import ssl

    from kaito.devcluster.pki import CertificateAuthority

    pki = tmp_path / "pki"
    pki.mkdir()
    authority = CertificateAuthority(pki)
    pair = authority.issue("server", "data.kaito.test", dns_names=("data.kaito.test",),
                           is_server=True)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(pair.cert_path, pair.key_path)
    httpd = _Server()
    httpd.socket = context.wrap_socket(httpd.socket, server_side=True)
    thread = threading.Thread(target=httpd.serve_forever, args=(0.05,), name="fetch-tls-server",
                              daemon=True)
    thread.start()
    try:
        yield httpd, authority.cert_path
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=5)


def _resolve_test_names(monkeypatch: pytest.MonkeyPatch) -> None:
    """data.kaito.test and other.kaito.test resolve to 127.0.0.1 (no DNS needed)."""
    import socket

    real = socket.getaddrinfo

    def fake(host: str, port: int, *args: object, **kwargs: object) -> object:
        if host.endswith(".kaito.test"):
            return real("127.0.0.1", port, *args, **kwargs)  # type: ignore[arg-type]
        return real(host, port, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(socket, "getaddrinfo", fake)


def test_https_connects_to_the_checked_address_and_verifies_the_host_name(
    tls_server: tuple[_Server, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    httpd, ca_file = tls_server
    _resolve_test_names(monkeypatch)
    port = httpd.server_address[1]
    code, dest, _ = run(tmp_path, "--ca-file", str(ca_file),
                        f"https://data.kaito.test:{port}/data/train.csv")
    assert code == 0
    assert (dest / "train.csv").read_bytes() == PAYLOAD
    assert httpd.hosts == [f"data.kaito.test:{port}"]
    # The certificate names data.kaito.test only: the same address under another name fails.
    code, _, log = run(tmp_path, "--retries", "0", "--ca-file", str(ca_file),
                       f"https://other.kaito.test:{port}/data/train.csv")
    assert code == fetch.EXIT_FAILED
    assert "TLS" in log.read_text()
    # A name resolving to loopback is refused without the allow-list, before any TLS.
    code, _, log = run(tmp_path, "--ca-file", str(ca_file),
                       f"https://data.kaito.test:{port}/data/train.csv", allow=False)
    assert code == fetch.EXIT_REFUSED
    assert "data.kaito.test resolves to 127.0.0.1" in log.read_text()


def test_pull_adapter_refuses_a_reference_without_a_registry(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from kaito.cli import main

    assert main(["pull-adapter", "--reference", "adapter-only", "--dest", str(tmp_path)]) == 2
    error = error_record(capsys.readouterr().err)
    assert (error["msg"], error["command"]) == ("command failed", "kaito pull-adapter")
    assert "no registry host" in error["error"]


def test_pull_adapter_merges_the_auths_of_every_secret(tmp_path: Path) -> None:
    import json

    from runtime.adapter_pull import merged_dockerconfig

    first, second = tmp_path / "a.json", tmp_path / "b.json"
    first.write_text(json.dumps({"auths": {"a.io": {"auth": "eDp5"}}}))
    second.write_text(json.dumps({"auths": {"a.io": {"auth": "other"}, "b.io": {"auth": "eg=="}}}))
    merged = json.loads(merged_dockerconfig([first, second]) or "{}")
    assert merged == {"auths": {"a.io": {"auth": "eDp5"}, "b.io": {"auth": "eg=="}}}
    assert merged_dockerconfig([]) is None
    (tmp_path / "bad.json").write_text("[]")
    with pytest.raises(ValueError, match="not a .dockerconfigjson"):
        merged_dockerconfig([tmp_path / "bad.json"])


def test_fetch_model_failure_is_a_record_and_the_termination_message(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from runtime import fetch_model

    termination_log = tmp_path / "termination-log"
    monkeypatch.setenv("KAITO_TERMINATION_LOG", str(termination_log))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # no network here: the download cannot work
    code = fetch_model.main(["--repo", "example/not-cached-here", "--dest", str(tmp_path / "m")])
    assert code == fetch_model.EXIT_FAILED
    error = error_record(capsys.readouterr().err)
    assert (error["msg"], error["command"]) == ("command failed", "kaito fetch-model")
    assert error["repo"] == "example/not-cached-here" and error["exit_code"] == code
    assert error["error"].startswith("download of example/not-cached-here failed: ")
    assert termination_log.read_text() == f"kaito fetch-model: {error['error']}\n"
