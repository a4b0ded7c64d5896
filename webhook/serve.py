"""Runs the webhook: TLS with hot reload, certificate rotation, and the aiohttp site.

The SSL context is created once; a renewed pair is loaded into it with `load_cert_chain`,
which new handshakes pick up, so rotation needs no restart. Background loops are named
tasks owned by `serve()` and cancelled when it returns.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import logging
import os
import ssl
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
from aiohttp import web
from cryptography import x509
from kubernetes_asyncio import client, config
from kubernetes_asyncio.client.exceptions import ApiException

from presets.catalog import HfConfigSource, load_catalog
from webhook.admission import AdmissionOptions, ConfigMapReader
from webhook.certs import Bundle, next_bundle
from webhook.kube import (
    CertificateStore,
    Conflict,
    KubeConfigMapReader,
    NoConfigMaps,
    WatchedConfigMaps,
    patch_ca_bundle,
)
from webhook.metrics import WebhookMetrics
from webhook.server import build_app
from webhook.settings import WebhookSettings

log = logging.getLogger(__name__)


class TlsState:
    """The server's SSL context and what is loaded in it."""

    def __init__(self) -> None:
        self.context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.context.minimum_version = ssl.TLSVersion.TLSv1_2
        self.loaded_serial: int | None = None
        self.files_mtime: tuple[float, float] | None = None

    @property
    def is_loaded(self) -> bool:
        return self.loaded_serial is not None

    def load_files(self, cert_file: Path, key_file: Path) -> None:
        self.context.load_cert_chain(str(cert_file), str(key_file))
        self.files_mtime = (cert_file.stat().st_mtime, key_file.stat().st_mtime)
        self.loaded_serial = x509.load_pem_x509_certificate(cert_file.read_bytes()).serial_number

    async def load_bundle(self, bundle: Bundle, cert_dir: Path) -> None:
        if bundle.serving.certificate.serial_number == self.loaded_serial:
            return
        cert_file, key_file = cert_dir / "tls.crt", cert_dir / "tls.key"

        def write() -> None:
            for path, content in ((key_file, bundle.serving.key_pem),
                                  (cert_file, bundle.serving.cert_pem)):
                tmp = path.with_suffix(".tmp")
                tmp.write_bytes(content)
                os.chmod(tmp, 0o600)
                tmp.replace(path)

        await asyncio.to_thread(write)
        self.load_files(cert_file, key_file)
        log.info("serving certificate loaded", extra={"serial": self.loaded_serial})


class CertRotator:
    """Keeps a valid CA + serving pair in the Secret, the TLS context and both caBundles."""

    def __init__(self, api: client.ApiClient, settings: WebhookSettings, tls: TlsState,
                 cert_dir: Path) -> None:
        self._api = api
        self._settings = settings
        self._tls = tls
        self._cert_dir = cert_dir
        self._store = CertificateStore(api, settings.namespace, settings.secret_name)

    async def sync(self, now: datetime.datetime | None = None) -> Bundle:
        """One pass: renew if needed (a racing replica's Secret wins), load, patch."""
        s = self._settings
        for _ in range(5):
            current, version = await self._store.load()
            moment = now or datetime.datetime.now(datetime.UTC)
            fresh = next_bundle(
                current, dns_names=s.dns_names(), ip_addresses=s.ip_addresses, now=moment,
                ca_valid_days=s.ca_valid_days, cert_valid_days=s.cert_valid_days,
                renew_before=datetime.timedelta(days=s.renew_before_days),
            )
            if fresh is None and current is not None:
                bundle = current
                break
            assert fresh is not None
            try:
                await self._store.save(fresh, version)
            except Conflict:
                continue
            log.info("webhook certificates renewed", extra={"secret": s.secret_name})
            bundle = fresh
            break
        else:
            raise RuntimeError("could not store the webhook certificates (conflicts)")
        await self._tls.load_bundle(bundle, self._cert_dir)
        await patch_ca_bundle(self._api, s.mutating_configuration, s.validating_configuration,
                              bundle.trust_bundle())
        return bundle

    async def first_sync(self, max_backoff_seconds: float = 30.0) -> None:
        """Syncs until it succeeds (the API server may not be reachable yet)."""
        backoff_seconds = 0.5
        while True:
            try:
                await self.sync()
                return
            except (ApiException, aiohttp.ClientError, OSError, TimeoutError, RuntimeError) as error:
                log.warning("certificate setup failed; retrying",
                            extra={"error": str(error), "retry_in_seconds": backoff_seconds})
                await asyncio.sleep(backoff_seconds)
                backoff_seconds = min(2 * backoff_seconds, max_backoff_seconds)

    async def run(self) -> None:
        """Re-checks every check_interval_seconds; errors are logged and retried."""
        while True:
            await asyncio.sleep(self._settings.check_interval_seconds)
            try:
                await self.sync()
            except Exception:
                log.exception("certificate rotation failed; retrying later")


async def watch_cert_files(tls: TlsState, cert_file: Path, key_file: Path,
                           interval_seconds: float) -> None:
    """Reloads the cert files (e.g. renewed by cert-manager) when they change."""
    while True:
        await asyncio.sleep(interval_seconds)
        try:
            mtimes = (cert_file.stat().st_mtime, key_file.stat().st_mtime)
            if mtimes != tls.files_mtime:
                tls.load_files(cert_file, key_file)
                log.info("certificate files reloaded", extra={"serial": tls.loaded_serial})
        except (OSError, ssl.SSLError, ValueError):
            log.exception("reloading certificate files failed; keeping the loaded pair")


@contextlib.asynccontextmanager
async def _api_client(settings: WebhookSettings) -> AsyncIterator[client.ApiClient | None]:
    configuration = client.Configuration()
    try:
        if settings.kubeconfig is not None:
            await config.load_kube_config(config_file=str(settings.kubeconfig),
                                          client_configuration=configuration)
        else:
            config.load_incluster_config(client_configuration=configuration)  # type: ignore[no-untyped-call]
    except config.ConfigException:
        if settings.cert_mode == "self-signed":
            raise
        log.warning("no Kubernetes API access: tuning ConfigMaps cannot be read")
        yield None
        return
    async with client.ApiClient(configuration) as api:
        yield api


async def serve(settings: WebhookSettings, stop: asyncio.Event) -> None:
    """Serves until `stop` is set."""
    tls = TlsState()
    async with contextlib.AsyncExitStack() as stack:
        api = await stack.enter_async_context(_api_client(settings))
        background: list[asyncio.Task[None]] = []
        reader: ConfigMapReader = NoConfigMaps()
        if api is not None:
            watched = WatchedConfigMaps(
                api, settings.namespace,
                KubeConfigMapReader(api, settings.configmap_timeout_seconds))
            background.append(asyncio.create_task(watched.run(), name="webhook-templates"))
            reader = watched
        if settings.cert_mode == "files":
            if settings.cert_file is None or settings.key_file is None:
                raise ValueError("cert mode 'files' needs --cert-file and --key-file")
            tls.load_files(settings.cert_file, settings.key_file)
            background.append(asyncio.create_task(
                watch_cert_files(tls, settings.cert_file, settings.key_file,
                                 min(settings.check_interval_seconds, 10.0)),
                name="webhook-cert-files"))
        else:
            assert api is not None
            cert_dir = settings.cert_dir or Path(
                stack.enter_context(tempfile.TemporaryDirectory(prefix="kaito-webhook-")))
            cert_dir.mkdir(parents=True, exist_ok=True)
            rotator = CertRotator(api, settings, tls, cert_dir)
            await rotator.first_sync()
            background.append(asyncio.create_task(rotator.run(), name="webhook-cert-rotation"))
        options = AdmissionOptions(
            allowed_networks=settings.fetch_allow_cidrs, operator_namespace=settings.namespace,
            node_provisioning=settings.node_provisioning,
            hf_configs=HfConfigSource(settings.hf_config_dirs, settings.hf_endpoint))
        app = build_app(load_catalog(), reader, metrics=WebhookMetrics(),
                        ready=lambda: tls.is_loaded, options=options)
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=5)
        await runner.setup()
        try:
            site = web.TCPSite(runner, settings.host, settings.port, ssl_context=tls.context)
            await site.start()
            log.info("webhook serving", extra={"host": settings.host, "port": settings.port})
            await stop.wait()
        finally:
            for task in background:
                task.cancel()
            await asyncio.gather(*background, return_exceptions=True)
            await runner.cleanup()
