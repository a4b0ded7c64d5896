"""The real-node tier: the operator installed from config/ runs in real pods, and so do
the tuning Jobs and serving Deployments it makes.

One session cluster (kaito/devcluster/realnode.py): the control plane on the bridge,
containerd + kubelet + kube-proxy, the project's images built by hack/images.sh; beside
it, on the bridge address, what a user's cluster would reach: an OCI registry with
htpasswd auth (Debian's docker-registry) serving HTTPS with a certificate from a private
CA the session makes, and an HTTP server holding the training data. The operator is
allowed to reach exactly those two (its settings) and trusts that CA for that registry
only (its registry CA ConfigMap); a second HTTPS registry, of a CA nobody gave it, is
there to be refused.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from crds.registry_ca import ca_keys
from kaito.devcluster import find_binaries
from kaito.devcluster.images import ProjectImages, project_images
from kaito.devcluster.install import OPERATOR_NAMESPACE, install_operator
from kaito.devcluster.pki import CertificateAuthority
from kaito.devcluster.realnode import BRIDGE_ADDRESS, RealCluster
from kaito.devcluster.services import start_data_server, start_registry

NODE_LABELS = {"apps": "kaito-real"}
REGISTRY_CA_CONFIG_MAP = "kaito-registry-ca"  # config/manager's setting


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """The host-restore tests start and stop real nodes of their own: they run before any
    test that starts the session's node (one real node per machine), whatever the files'
    names sort as."""
    first = next((i for i, item in enumerate(items) if _is_kubelet(item)), None)
    if first is None:
        return
    restore = [item for item in items if Path(str(item.fspath)).name == "test_host_restore.py"]
    rest = [item for item in items if item not in restore]
    items[:] = rest[:first] + restore + rest[first:]


def _is_kubelet(item: pytest.Item) -> bool:
    return Path(str(item.fspath)).parent.name == "kubelet"


@dataclass
class RealEnv:
    real: RealCluster
    images: ProjectImages
    registry: str  # host:port on the bridge, htpasswd auth, HTTPS of registry_ca
    registry_password: str
    registry_ca: Path  # the PEM of the CA that signed the registry's certificate
    untrusted_registry: str  # host:port, HTTPS of a CA the operator was not given
    data_dir: Path
    data_url: str  # http://10.244.0.1:PORT (serves data_dir)

    def kubectl(self, *args: str, input: str | None = None, check: bool = True,
                timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return self.real.cluster.kubectl(*args, input=input, check=check, timeout=timeout)

    def apply(self, documents: list[dict[str, object]], namespace: str) -> None:
        self.kubectl("apply", "-n", namespace, "-f", "-", input=yaml.safe_dump_all(documents))


@pytest.fixture(scope="session")
def real_env() -> Iterator[RealEnv]:
    if os.geteuid() != 0:
        pytest.fail("the real-node tier runs containerd, a kubelet and iptables: needs root")
    # A SIGTERM (a CI time-out) runs the teardown below like Ctrl-C would: the node's
    # host changes are undone rather than left behind.
    previous = signal.signal(signal.SIGTERM, _interrupt)
    images = project_images()
    workdir = private_workdir("real")
    real = RealCluster(
        workdir / "cluster", find_binaries(), owner_pid=os.getpid(),
        sandbox_image=images.pods["pause"],
        images=images.pull_map(), image_registry=images.registry,
        extra_labels=NODE_LABELS,
        # Two GPUs: a tuned workspace keeps serving while the next one starts.
        gpu_count=2, instance_type="Standard_NC12s_v3")
    helpers: list[subprocess.Popen[bytes]] = []
    real.start()
    try:
        password = os.urandom(9).hex()
        cas = {name: CertificateAuthority(_folder(workdir / name))
               for name in ("registry-ca", "untrusted-ca")}
        registries = {}
        for name, ca in (("registry", cas["registry-ca"]),
                         ("untrusted-registry", cas["untrusted-ca"])):
            serving = ca.issue(name, BRIDGE_ADDRESS, ip_addresses=(BRIDGE_ADDRESS,),
                               is_server=True)
            process, registries[name] = start_registry(
                workdir / name, password, BRIDGE_ADDRESS, tls=serving, ca_file=ca.cert_path)
            helpers.append(process)
        registry = registries["registry"]
        data_dir = workdir / "data"
        data_process, data_url = start_data_server(data_dir, BRIDGE_ADDRESS)
        helpers.append(data_process)
        env = RealEnv(real, images, registry, password, cas["registry-ca"].cert_path,
                      registries["untrusted-registry"], data_dir, data_url)
        install_operator(
            real.cluster.kubectl, workdir / "operator", images=images,
            fetch_allow_cidrs=(f"{BRIDGE_ADDRESS}/32",),
            # Progress read often enough to be seen during a short test run.
            extra_controller_env={"KAITO_WORKSPACE__PROGRESS_INTERVAL_SECONDS": "2"})
        # The registry's CA, under the name config/manager gives the operator's setting.
        env.apply([{"apiVersion": "v1", "kind": "ConfigMap",
                    "metadata": {"name": REGISTRY_CA_CONFIG_MAP},
                    "data": {ca_keys(registry)[0]: env.registry_ca.read_text()}}],
                  OPERATOR_NAMESPACE)
        yield env
    finally:
        for process in helpers:
            process.terminate()
            process.wait(timeout=30)
        real.stop()
        signal.signal(signal.SIGTERM, previous)
        shutil.rmtree(workdir, ignore_errors=True)


def private_workdir(name: str) -> Path:
    """A folder for a real node outside pytest's temporary root: a later pytest run of
    the same user (another tier, run meanwhile) prunes old numbered folders there, which
    would take the node's state away under it."""
    return Path(tempfile.mkdtemp(prefix=f"kaito-kubelet-{name}-", dir="/var/tmp"))


def _folder(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")
