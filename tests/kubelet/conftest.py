"""The real-node tier: the operator installed from config/ runs in real pods, and so do
the tuning Jobs and serving Deployments it makes.

One session cluster (kaito/devcluster/realnode.py): the control plane on the bridge,
containerd + kubelet + kube-proxy, the project's images built by hack/images.sh; beside
it, on the bridge address, what a user's cluster would reach: an OCI registry with
htpasswd auth (Debian's docker-registry) and an HTTP server holding the training data.
The operator is allowed to reach exactly those two (its settings), nothing else.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from kaito.devcluster import find_binaries
from kaito.devcluster.images import ProjectImages, project_images
from kaito.devcluster.install import install_operator
from kaito.devcluster.process import free_port
from kaito.devcluster.realnode import BRIDGE_ADDRESS, RealCluster

REGISTRY_USER = "tuner"
NODE_LABELS = {"apps": "kaito-real"}


@dataclass
class RealEnv:
    real: RealCluster
    images: ProjectImages
    registry: str  # host:port on the bridge, htpasswd auth, plain HTTP
    registry_password: str
    data_dir: Path
    data_url: str  # http://10.244.0.1:PORT (serves data_dir)

    def kubectl(self, *args: str, input: str | None = None, check: bool = True,
                timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return self.real.cluster.kubectl(*args, input=input, check=check, timeout=timeout)

    def apply(self, documents: list[dict[str, object]], namespace: str) -> None:
        self.kubectl("apply", "-n", namespace, "-f", "-", input=yaml.safe_dump_all(documents))


def _start_registry(root: Path, password: str) -> tuple[subprocess.Popen[bytes], str]:
    binary, htpasswd = shutil.which("docker-registry"), shutil.which("htpasswd")
    if binary is None or htpasswd is None:
        pytest.fail("needs Debian packages docker-registry and apache2-utils (htpasswd)")
    entry = subprocess.run([htpasswd, "-Bbn", REGISTRY_USER, password], check=True,
                           capture_output=True, text=True).stdout.strip()
    (root / "htpasswd").write_text(entry + "\n")
    host = f"{BRIDGE_ADDRESS}:{free_port()}"
    config = {
        "version": 0.1,
        "log": {"level": "warn"},
        "storage": {"filesystem": {"rootdirectory": str(root / "data")}},
        "http": {"addr": host},
        "auth": {"htpasswd": {"realm": "kaito-test", "path": str(root / "htpasswd")}},
    }
    (root / "config.yml").write_text(yaml.safe_dump(config))
    log = (root / "registry.log").open("wb")
    process = subprocess.Popen([binary, "serve", str(root / "config.yml")], stdout=log,
                               stderr=subprocess.STDOUT)
    log.close()
    _wait_http(f"http://{host}/v2/", process, expect=401)
    return process, host


def _start_data_server(root: Path) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    log = (root.parent / "data-server.log").open("wb")
    process = subprocess.Popen(
        [sys.executable, "-m", "http.server", "--bind", BRIDGE_ADDRESS, "--directory",
         str(root), str(port)], stdout=log, stderr=subprocess.STDOUT)
    log.close()
    url = f"http://{BRIDGE_ADDRESS}:{port}"
    _wait_http(url + "/", process, expect=200)
    return process, url


def _wait_http(url: str, process: subprocess.Popen[bytes], *, expect: int) -> None:
    import urllib.error
    import urllib.request

    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{process.args!r} exited with {process.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == expect:
                    return
        except urllib.error.HTTPError as error:
            if error.code == expect:
                return
        except OSError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"{url} did not answer {expect} in 30 s")


@pytest.fixture(scope="session")
def real_env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RealEnv]:
    if os.geteuid() != 0:
        pytest.fail("the real-node tier runs containerd, a kubelet and iptables: needs root")
    images = project_images()
    workdir = tmp_path_factory.mktemp("real")
    real = RealCluster(
        workdir / "cluster", find_binaries(), sandbox_image=images.pods["pause"],
        images=images.pull_map(), image_registry=images.registry,
        extra_labels=NODE_LABELS)
    helpers: list[subprocess.Popen[bytes]] = []
    real.start()
    try:
        password = os.urandom(9).hex()
        (workdir / "registry").mkdir()
        registry_process, registry = _start_registry(workdir / "registry", password)
        helpers.append(registry_process)
        data_dir = workdir / "data"
        data_dir.mkdir()
        data_process, data_url = _start_data_server(data_dir)
        helpers.append(data_process)
        env = RealEnv(real, images, registry, password, data_dir, data_url)
        install_operator(
            real.cluster, workdir / "operator", images=images,
            fetch_allow_cidrs=(f"{BRIDGE_ADDRESS}/32",), plain_http_registries=(registry,))
        yield env
    finally:
        for process in helpers:
            process.terminate()
            process.wait(timeout=30)
        real.stop()
