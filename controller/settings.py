"""The controller process's settings: one pydantic-settings tree, env prefix `KAITO_`.

Grouped by concern; nested fields use `__`, e.g. `KAITO_LEADER_ELECTION__ENABLED=false`
or `KAITO_SERVER__PORT=9090`. Command-line flags override the environment.
"""

from __future__ import annotations

import os
import socket
import uuid
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, Field, IPvAnyNetwork, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict


def default_identity() -> str:
    """hostname_uuid, as controller-runtime builds its leader-election identity."""
    return f"{socket.gethostname()}_{uuid.uuid4().hex[:12]}"


class KubeSettings(BaseModel):
    kubeconfig: Path | None = None
    context: str | None = None
    request_timeout_seconds: float = Field(default=30.0, gt=0)
    max_throttle_retries: int = Field(default=5, ge=0)

    @property
    def is_in_cluster(self) -> bool:
        return self.kubeconfig is None and "KUBERNETES_SERVICE_HOST" in os.environ


class ServerSettings(BaseModel):
    """One port serves /healthz, /readyz and /metrics."""

    bind_host: str = "0.0.0.0"
    port: int = Field(default=8080, ge=0, le=65535)


class LeaderElectionSettings(BaseModel):
    enabled: bool = True
    namespace: str = "kaito-system"
    lease_name: str = "kaito-controller-leader"
    identity: str = Field(default_factory=default_identity)
    lease_duration_seconds: int = Field(default=15, gt=0)
    renew_deadline_seconds: int = Field(default=10, gt=0)
    retry_period_seconds: float = Field(default=2.0, gt=0)

    @model_validator(mode="after")
    def _check_timings(self) -> LeaderElectionSettings:
        if self.lease_duration_seconds <= self.renew_deadline_seconds:
            raise ValueError("lease_duration_seconds must exceed renew_deadline_seconds")
        if self.renew_deadline_seconds <= 1.2 * self.retry_period_seconds:
            raise ValueError("renew_deadline_seconds must exceed 1.2 x retry_period_seconds")
        return self


class InformerSettings(BaseModel):
    watch_timeout_seconds: float = Field(default=300.0, gt=0)
    read_timeout_seconds: float = Field(default=70.0, gt=0)
    inactivity_timeout_seconds: float = Field(default=70.0, gt=0)


class WorkspaceControllerSettings(BaseModel):
    """The Workspace controller: which images its pods run and how it gets nodes."""

    runtime_image: str = "kaito-runtime:0.1.0"
    image_pull_policy: Literal["IfNotPresent", "Always", "Never"] = "IfNotPresent"
    node_provisioning: bool = True  # create NodeClaims; off = bring-your-own nodes only
    use_machines: bool = False  # legacy karpenter.sh/v1alpha5 Machines instead of NodeClaims
    progress_interval_seconds: float = Field(default=15.0, gt=0)
    tuning_backoff_limit: int = Field(default=2, ge=0, le=10)
    # In-cluster data servers `kaito fetch` may download from (comma-separated CIDRs in
    # KAITO_WORKSPACE__FETCH_ALLOW_CIDRS); empty: public addresses only.
    fetch_allow_cidrs: Annotated[tuple[IPvAnyNetwork, ...], NoDecode] = ()
    # Registries (host:port) reached over plain HTTP, e.g. a test registry in the cluster.
    plain_http_registries: Annotated[tuple[str, ...], NoDecode] = ()
    # Where the default tuning configs (lora-/qlora-params-template) live: the operator's
    # namespace (config/manager sets it from the pod's namespace).
    operator_namespace: str = "kaito-system"
    # Directories of Hugging Face config.json files for best-effort presets (comma
    # separated); the same as the webhook's KAITO_WEBHOOK_HF_CONFIG_DIRS.
    hf_config_dirs: Annotated[tuple[Path, ...], NoDecode] = ()
    # A Hugging Face Hub endpoint such config.json files are read from otherwise (unset: none).
    hf_endpoint: str | None = None
    # A NodeClaim the provisioner refused (quota, unknown instance type) is retried after
    # this wait, doubling with each refusal up to the cap.
    claim_retry_base_seconds: float = Field(default=10.0, gt=0)
    claim_retry_max_seconds: float = Field(default=600.0, gt=0)

    @model_validator(mode="after")
    def _retry_cap_covers_base(self) -> WorkspaceControllerSettings:
        if self.claim_retry_max_seconds < self.claim_retry_base_seconds:
            raise ValueError("claim_retry_max_seconds must be at least claim_retry_base_seconds")
        return self
    # A ConfigMap in operator_namespace of PEM bundles, one per private-CA registry (keys
    # `<host>.crt` for port 443, `<host>_<port>.crt` otherwise: crds/registry_ca.py); the
    # pods that push or pull adapters trust it for that registry. Unset: system roots only.
    registry_ca_config_map: str | None = None

    @field_validator("fetch_allow_cidrs", "plain_http_registries", "hf_config_dirs",
                     mode="before")
    @classmethod
    def _split_commas(cls, value: object) -> object:
        if isinstance(value, str):
            return tuple(part.strip() for part in value.split(",") if part.strip())
        return value


class ControllerSettings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="KAITO_", env_nested_delimiter="__", extra="ignore"
    )

    kube: KubeSettings = KubeSettings()
    server: ServerSettings = ServerSettings()
    leader_election: LeaderElectionSettings = Field(
        default_factory=lambda: LeaderElectionSettings()
    )
    informer: InformerSettings = InformerSettings()
    workspace: WorkspaceControllerSettings = WorkspaceControllerSettings()
    workers: int = Field(default=4, ge=1, le=256)
    watch_namespace: str | None = None
    graceful_shutdown_seconds: float = Field(default=30.0, ge=0)
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    log_format: Literal["json", "text"] = "json"
