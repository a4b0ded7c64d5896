"""What a user's cluster would reach besides itself, started on the bridge address:
an OCI registry with htpasswd auth (Debian's docker-registry; plain HTTP, or HTTPS with
a certificate the caller's CA signed) for tuning output and adapter pulls, and a plain
HTTP server holding training data. Both listen only on the
bridge (pods reach it, nothing outside does) and run detached, so a `kaito demo`
process can exit and leave them to `kaito dev down`.
"""

from __future__ import annotations

import base64
import json
import shutil
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import yaml

from kaito.devcluster.pki import KeyPair
from kaito.devcluster.process import free_port

REGISTRY_USER = "tuner"


class ServiceError(RuntimeError):
    pass


def dockerconfigjson(host: str, user: str, password: str) -> str:
    """The ``.dockerconfigjson`` text docker/kubectl would write for these credentials
    (the value of a kubernetes.io/dockerconfigjson Secret)."""
    auth = base64.b64encode(f"{user}:{password}".encode()).decode()
    return json.dumps({"auths": {host: {"username": user, "password": password, "auth": auth}}})


def _spawn(argv: list[str], log_path: Path) -> subprocess.Popen[bytes]:
    with log_path.open("ab") as log:
        return subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)


def wait_http(url: str, process: subprocess.Popen[bytes], *, expect: int,
              timeout_seconds: float = 30, context: ssl.SSLContext | None = None) -> None:
    deadline = time.monotonic() + timeout_seconds
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise ServiceError(f"{process.args!r} exited with {process.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=2, context=context) as response:
                if response.status == expect:
                    return
        except urllib.error.HTTPError as error:
            if error.code == expect:
                return
        except OSError:
            pass
        time.sleep(0.2)
    raise ServiceError(f"{url} did not answer {expect} in {timeout_seconds:.0f} s")


def start_registry(root: Path, password: str, address: str, user: str = REGISTRY_USER, *,
                   tls: KeyPair | None = None, ca_file: Path | None = None,
                   ) -> tuple[subprocess.Popen[bytes], str]:
    """docker-registry on ``address``:<free port> with bcrypt htpasswd auth; HTTPS with
    ``tls`` (checked with ``ca_file``, the CA that signed it). Returns the process and
    its host:port."""
    binary, htpasswd = shutil.which("docker-registry"), shutil.which("htpasswd")
    if binary is None or htpasswd is None:
        raise ServiceError("needs Debian packages docker-registry and apache2-utils "
                           "(hack/apt-deps.sh installs them)")
    root.mkdir(parents=True, exist_ok=True)
    entry = subprocess.run([htpasswd, "-Bbn", user, password], check=True,
                           capture_output=True, text=True).stdout.strip()
    (root / "htpasswd").write_text(entry + "\n")
    host = f"{address}:{free_port()}"
    config = {
        "version": 0.1,
        "log": {"level": "warn"},
        "storage": {"filesystem": {"rootdirectory": str(root / "data")}},
        "http": {"addr": host, **({"tls": {"certificate": str(tls.cert_path),
                                            "key": str(tls.key_path)}} if tls else {})},
        "auth": {"htpasswd": {"realm": "kaito", "path": str(root / "htpasswd")}},
    }
    (root / "config.yml").write_text(yaml.safe_dump(config))
    process = _spawn([binary, "serve", str(root / "config.yml")], root / "registry.log")
    if tls is None:
        wait_http(f"http://{host}/v2/", process, expect=401)
    else:
        context = ssl.create_default_context(cafile=str(ca_file) if ca_file else None)
        wait_http(f"https://{host}/v2/", process, expect=401, context=context)
    return process, host


def start_data_server(root: Path, address: str) -> tuple[subprocess.Popen[bytes], str]:
    """``python -m http.server`` for ``root`` on ``address``; returns it and its URL."""
    root.mkdir(parents=True, exist_ok=True)
    port = free_port()
    process = _spawn([sys.executable, "-m", "http.server", "--bind", address,
                      "--directory", str(root), str(port)], root.parent / "data-server.log")
    url = f"http://{address}:{port}"
    wait_http(url + "/", process, expect=200)
    return process, url
