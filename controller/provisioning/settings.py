"""The provisioner's own settings group (env prefix `KAITO_PROVISIONER__`).

The process also reads the shared `ControllerSettings` (kube, server, leader election,
informers); this tree holds what only the provisioner needs: which backend, the
lifecycle time-outs and, for AKS, where the cluster lives. Nested fields use `__`, e.g.
`KAITO_PROVISIONER__AZURE__SUBSCRIPTION_ID`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class AzureSettings(BaseModel):
    """The AKS cluster whose agent pools the provisioner manages."""

    subscription_id: str = ""
    resource_group: str = ""
    cluster_name: str = ""
    # None = the public cloud's Resource Manager; tests point it at a local ARM server.
    base_url: str | None = None
    ca_file: Path | None = None  # extra CA to trust for base_url (tests only)
    # A bearer token kept fresh in a file by someone else (development, tests); unset =
    # workload identity (AZURE_FEDERATED_TOKEN_FILE) or environment credentials.
    token_file: Path | None = None
    polling_interval_seconds: float = Field(default=10.0, gt=0)
    # One reconcile waits this long on an LRO; a longer one is picked up by a later pass.
    max_operation_wait_seconds: float = Field(default=60.0, gt=0)
    os_sku: Literal["Ubuntu", "AzureLinux"] = "Ubuntu"
    os_disk_size_gb: int | None = Field(default=None, ge=30, le=2048)

    @property
    def is_complete(self) -> bool:
        return bool(self.subscription_id and self.resource_group and self.cluster_name)


class ProvisionerSettings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="KAITO_PROVISIONER__", env_nested_delimiter="__", extra="ignore"
    )

    backend: Literal["local", "aks", "pool"] = "aks"
    use_machines: bool = False  # also fulfil legacy karpenter.sh/v1alpha5 Machines
    launch_timeout_seconds: float = Field(default=900.0, gt=0)
    registration_timeout_seconds: float = Field(default=900.0, gt=0)
    # How often a claim waiting on the cloud or on its node is looked at again.
    recheck_seconds: float = Field(default=5.0, gt=0)
    # An instance type refused for quota or capacity is not asked for again this long.
    unavailable_offering_seconds: float = Field(default=180.0, ge=0)
    azure: AzureSettings = AzureSettings()

    @model_validator(mode="after")
    def _aks_needs_a_cluster(self) -> ProvisionerSettings:
        if self.backend == "aks" and not self.azure.is_complete:
            raise ValueError("the aks backend needs azure.subscription_id, "
                             "azure.resource_group and azure.cluster_name")
        return self
