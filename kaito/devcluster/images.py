"""The project's images for the real node: built by hack/images.sh, served by a local
registry, named for pods the way a cluster would name them.

hack/images.sh builds the operator and runtime images (from the Dockerfile), the pause
image and a curl image, pushes them to a plain-HTTP registry on loopback and prints
their references. containerd pulls from there (only layers it lacks travel) and tags
each image with the name pods use: `localhost/kaito-runtime:<hash>` for ours and
`docker.io/curlimages/curl:latest` for the seed's curl command (containerd's mirror for
docker.io is the same local registry, so nothing is fetched from outside).
"""

from __future__ import annotations

import os
import subprocess
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
IMAGES_SCRIPT = REPO_ROOT / "hack" / "images.sh"


def pod_image_name(ref: str) -> str:
    """`127.0.0.1:5001/kaito-runtime:abc` -> `localhost/kaito-runtime:abc`;
    `127.0.0.1:5001/curlimages/curl:latest` -> `docker.io/curlimages/curl:latest`."""
    _, _, path = ref.partition("/")
    return ("docker.io/" if "/" in path else "localhost/") + path


def parse_refs(text: str) -> dict[str, str]:
    refs = {}
    for line in text.splitlines():
        name, sep, ref = line.strip().partition("=")
        if sep and name and ref:
            refs[name] = ref
    return refs


@dataclass(frozen=True)
class ProjectImages:
    registry: str  # host:port of the local image registry
    refs: dict[str, str]  # role (operator, runtime, pause, curl) -> registry reference
    # Whether this call started the registry (then whoever asked stops it when done).
    started_registry: bool = False

    @property
    def pods(self) -> dict[str, str]:
        """Role -> the image name pods use."""
        return {role: pod_image_name(ref) for role, ref in self.refs.items()}

    def pull_map(self) -> dict[str, str]:
        """Pod image name -> where containerd pulls it from."""
        return {pod_image_name(ref): ref for ref in self.refs.values()}


def _script(*args: str, timeout: float = 3600) -> str:
    result = subprocess.run(["bash", str(IMAGES_SCRIPT), *args], stdout=subprocess.PIPE,
                            text=True, timeout=timeout, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"hack/images.sh {' '.join(args)} failed "
                           f"(exit {result.returncode}); its messages are above")
    return result.stdout


def local_registry() -> str:
    """host:port of hack/images.sh's registry (KAITO_IMAGES_PORT, as the script reads it)."""
    return f"127.0.0.1:{os.environ.get('KAITO_IMAGES_PORT') or 5001}"


def registry_answers(host: str) -> bool:
    try:
        with urllib.request.urlopen(f"http://{host}/v2/", timeout=2):
            return True
    except urllib.error.HTTPError:
        return True  # it answered (401 with auth)
    except OSError:
        return False


def project_images() -> ProjectImages:
    """Builds what changed, starts the registry if needed, pushes, returns the refs."""
    _script("build")
    was_running = registry_answers(local_registry())
    registry = _script("serve-registry").strip().splitlines()[-1]
    _script("push", registry)
    return ProjectImages(registry=registry, refs=parse_refs(_script("refs")),
                         started_registry=not was_running)


def stop_registry() -> None:
    """Stops the registry hack/images.sh serve-registry started."""
    _script("stop-registry", timeout=60)
