"""A rotated service-account token is re-read before the informer reconnects.

The informer runs as a real ServiceAccount (TokenRequest tokens, RBAC). The account is
deleted and recreated, which invalidates the first token; the new token is written to
the token file, the watch is dropped, and the informer must come back with the new
token and keep its cache current.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from pathlib import Path
from typing import Any

import pytest
from kubernetes_asyncio import client as k8s_client
from kubernetes_asyncio import config as k8s_config

from controller.informer import Informer
from controller.kube import CONFIGMAPS, KubeClient, ResourceType, Unauthorized
from kaito.devcluster import LocalCluster
from tests.envtest.test_controller_converge import source, wait_until_async

pytestmark = pytest.mark.envtest

SERVICE_ACCOUNTS = ResourceType("", "v1", "serviceaccounts", "ServiceAccount")


def rbac(namespace: str) -> list[dict[str, Any]]:
    return [
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
         "metadata": {"name": "watcher", "namespace": namespace},
         "rules": [{"apiGroups": [""], "resources": ["configmaps"],
                    "verbs": ["get", "list", "watch"]}]},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
         "metadata": {"name": "watcher", "namespace": namespace},
         "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "watcher"},
         "subjects": [{"kind": "ServiceAccount", "name": "watcher", "namespace": namespace}]},
    ]


async def issue_token(admin: KubeClient, namespace: str) -> str:
    path = SERVICE_ACCOUNTS.path(namespace, "watcher") + "/token"
    body = {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest",
            "spec": {"expirationSeconds": 3600}}
    answer = await admin.request("POST", path, body=body)
    return str(answer["status"]["token"])


async def service_account_client(control_plane: LocalCluster, token_file: Path) -> KubeClient:
    cfg = k8s_client.Configuration()
    await k8s_config.load_kube_config(config_file=str(control_plane.kubeconfig),
                                      client_configuration=cfg)
    cfg.cert_file = None  # authenticate with the token only, not the admin certificate
    cfg.key_file = None
    return KubeClient(k8s_client.ApiClient(configuration=cfg), token_file=token_file)


async def test_rotated_token_is_used_after_reconnect(
    control_plane: LocalCluster, namespace: str, tmp_path: Path
) -> None:
    control_plane.kubectl("apply", "-f", "-", input=json.dumps({"apiVersion": "v1",
                          "kind": "List", "items": rbac(namespace)}))
    async with await KubeClient.from_kubeconfig(control_plane.kubeconfig) as admin:
        account = {"apiVersion": "v1", "kind": "ServiceAccount",
                   "metadata": {"name": "watcher", "namespace": namespace}}
        await admin.create(SERVICE_ACCOUNTS, account)
        token_file = tmp_path / "token"
        old_token = await issue_token(admin, namespace)
        token_file.write_text(old_token)
        await admin.create(CONFIGMAPS, source("first", namespace))

        async with await service_account_client(control_plane, token_file) as client:
            informer = Informer(client, CONFIGMAPS, namespace=namespace,
                                backoff_initial_seconds=0.1, backoff_max_seconds=1.0)
            task = asyncio.create_task(informer.run())
            try:
                await asyncio.wait_for(informer.wait_synced(), 30)
                assert f"{namespace}/first" in informer.cache

                # Recreating the account invalidates every token bound to the old one.
                await admin.delete(SERVICE_ACCOUNTS, "watcher", namespace)
                await admin.create(SERVICE_ACCOUNTS, account)
                stale_file = tmp_path / "stale-token"
                stale_file.write_text(old_token)
                async with await service_account_client(control_plane, stale_file) as stale:

                    async def old_token_rejected() -> bool:
                        try:
                            await stale.list(CONFIGMAPS, namespace)
                        except Unauthorized:
                            return True
                        return False

                    await wait_until_async(old_token_rejected, timeout=20,
                                           what="the old token to be rejected")
                token_file.write_text(await issue_token(admin, namespace))  # the rotation
                informer.restart_watch()
                await admin.create(CONFIGMAPS, source("second", namespace))
                await wait_until_async(
                    lambda: asyncio.sleep(0, f"{namespace}/second" in informer.cache),
                    timeout=30, what="an event seen with the rotated token")
                assert not task.done()
            finally:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
