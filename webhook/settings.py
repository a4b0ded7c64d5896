"""Webhook settings: environment variables prefixed KAITO_WEBHOOK_, overridable by flags."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from crds.addresses import Network, parse_networks


class WebhookSettings(BaseSettings):
    """Where to listen, where the certificates come from, which configurations to patch."""

    model_config = SettingsConfigDict(env_prefix="KAITO_WEBHOOK_", extra="forbid")

    host: str = "0.0.0.0"
    port: int = Field(default=9443, ge=1, le=65535)
    namespace: str = "kaito-system"
    """Namespace of the certificate Secret and of the webhook Service."""
    service_name: str = "kaito-webhook"
    """The Service in front of the webhook; its DNS names go into the certificate."""
    secret_name: str = "kaito-webhook-cert"
    mutating_configuration: str = "kaito-mutating-webhook-configuration"
    validating_configuration: str = "kaito-validating-webhook-configuration"
    cert_mode: Literal["self-signed", "files"] = "self-signed"
    """self-signed: make a CA and serving cert, keep them in the Secret, patch caBundle.
    files: serve cert_file/key_file (e.g. from cert-manager), reloading them when they change."""
    cert_file: Path | None = None
    key_file: Path | None = None
    cert_dir: Path | None = None
    """Where the self-signed pair is written for the TLS context (a temporary dir if unset)."""
    extra_dns_names: list[str] = Field(default_factory=list)
    ip_addresses: list[str] = Field(default_factory=list)
    """IP SANs for the serving certificate (e.g. 127.0.0.1 when registered by URL)."""
    ca_valid_days: int = Field(default=3650, gt=0)
    cert_valid_days: int = Field(default=365, gt=0)
    renew_before_days: float = Field(default=30, ge=0)
    check_interval_seconds: float = Field(default=3600, gt=0)
    """How often the certificates (or cert files) are checked for renewal."""
    kubeconfig: Path | None = None
    """A kubeconfig file; in-cluster config when unset."""
    configmap_timeout_seconds: float = Field(default=5, gt=0)
    fetch_allow_cidrs: Annotated[tuple[Network, ...], NoDecode] = ()
    """Non-public networks tuning input URLs may point at (in-cluster data servers), comma
    separated; empty: public addresses only. Keep it equal to the controller's list, which
    the tuning pod's downloader enforces again on the address it connects to."""
    node_provisioning: bool = True
    """False: bring-your-own nodes (upstream's disableNodeAutoProvisioning). Instance types
    the SKU table does not know (and placeholders) are admitted, resource.partition is
    allowed, and GPU fit is checked by the controller against the nodes' GPU labels. Keep
    it equal to the controller's KAITO_WORKSPACE__NODE_PROVISIONING."""
    hf_config_dirs: Annotated[tuple[Path, ...], NoDecode] = ()
    """Directories holding Hugging Face config.json files (plain <org>/<model>/ or the HF
    cache layout), comma separated: a preset named by a Hugging Face id that is not in the
    catalog gets a memory estimate from its config there; without one it is admitted
    best-effort with a warning."""
    hf_endpoint: str | None = None
    """A Hugging Face Hub endpoint (https://huggingface.co, or a mirror) the config.json of
    such a model is read from when no directory holds it (3 s timeout, cached); unset: no
    network at admission. config/manager sets it."""
    log_level: str = "INFO"
    log_format: Literal["json", "text"] = "json"

    @field_validator("fetch_allow_cidrs", mode="before")
    @classmethod
    def _split_cidrs(cls, value: Any) -> Any:
        if isinstance(value, str):
            return parse_networks([value])
        if isinstance(value, list | tuple) and all(isinstance(item, str) for item in value):
            return parse_networks(value)
        return value

    @field_validator("hf_config_dirs", mode="before")
    @classmethod
    def _split_dirs(cls, value: Any) -> Any:
        if isinstance(value, str):
            return tuple(Path(item) for item in value.split(",") if item.strip())
        return value

    def dns_names(self) -> list[str]:
        svc, ns = self.service_name, self.namespace
        return [f"{svc}.{ns}.svc", f"{svc}.{ns}.svc.cluster.local", f"{svc}.{ns}", svc,
                *self.extra_dns_names]
