"""Registry CA bundles: how the operator's ConfigMap names them and where pods find them.

A cluster whose registries use a private CA gives the operator one ConfigMap (in its own
namespace, named by ``KAITO_WORKSPACE__REGISTRY_CA_CONFIG_MAP``) holding one PEM bundle
per registry. ConfigMap keys cannot hold ':', so the key is the registry's host with the
port after an underscore: ``registry.example.com.crt`` for port 443 (or no port),
``10.0.0.5_5000.crt`` for ``10.0.0.5:5000``. IPv6 literal hosts cannot be named. The
controller copies the ConfigMap into a workspace's namespace and mounts it in every
container that pushes or pulls an artifact at ``MOUNT_DIR``, with ``ENV_CA_DIR`` naming
the folder; the runtime then trusts, for a registry, exactly its bundle (plus the
system roots). Shared here so the controller and the runtime agree on the names.
"""

from __future__ import annotations

import re

ENV_CA_DIR = "KAITO_REGISTRY_CA_DIR"
MOUNT_DIR = "/etc/kaito/registry-ca"
SUFFIX = ".crt"
DEFAULT_PORT = 443
_KEY = re.compile(r"^(?P<host>[A-Za-z0-9](?:[A-Za-z0-9.-]*[A-Za-z0-9])?)"
                  r"(?:_(?P<port>[0-9]{1,5}))?\.crt$")


def _split(host: str) -> tuple[str, int]:
    if host.count(":") > 1 or host.startswith("["):
        raise ValueError(f"registry {host!r}: IPv6 hosts cannot be named by a ConfigMap key")
    name, _, port = host.partition(":")
    if not name:
        raise ValueError(f"registry {host!r} has no host name")
    return name.lower(), int(port) if port else DEFAULT_PORT


def ca_keys(host: str) -> tuple[str, ...]:
    """The ConfigMap keys that hold the CA of registry ``host`` (``name[:port]``), in the
    order they are looked for: ``name_port.crt``, then for port 443 ``name.crt``."""
    name, port = _split(host)
    keys = [f"{name}_{port}{SUFFIX}"]
    if port == DEFAULT_PORT:
        keys.append(f"{name}{SUFFIX}")
    return tuple(keys)


def registry_of_key(key: str) -> str | None:
    """``10.0.0.5_5000.crt`` -> ``10.0.0.5:5000``; None for a key not in the scheme."""
    match = _KEY.match(key)
    if match is None:
        return None
    port = match.group("port")
    if port is not None and not 0 < int(port) < 65536:
        return None
    host = match.group("host").lower()
    return f"{host}:{port}" if port and int(port) != DEFAULT_PORT else host
