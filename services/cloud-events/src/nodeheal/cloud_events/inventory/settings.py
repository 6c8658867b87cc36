"""Configuration of the inventory watcher (env prefix `NODEHEAL_INVENTORY_`, nested with `__`)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from nodeheal.cloud_events.inventory.mapping import LabelConfig
from nodeheal.runtime.service import ServiceSettings

_DEFAULT = LabelConfig()


class InventorySettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="NODEHEAL_INVENTORY_", env_nested_delimiter="__", extra="ignore")

    kube_mode: Literal["auto", "in-cluster", "kubeconfig", "url"] = Field(
        default="auto", description="auto: in-cluster when KUBERNETES_SERVICE_HOST is set, else kubeconfig"
    )
    kubeconfig: str | None = Field(default=None, description="path; default ~/.kube/config or $KUBECONFIG")
    kube_context: str | None = None
    api_url: str | None = Field(default=None, description="explicit API server URL (kube_mode=url)")
    api_token: str | None = Field(default=None, description="bearer token for kube_mode=url")
    api_verify_tls: bool = True
    watch_timeout_s: int = Field(default=300, ge=1, description="server-side timeout of one watch request")
    read_timeout_s: float = Field(default=330.0, gt=0, description="client read timeout; above watch_timeout_s")
    retry_backoff_s: float = Field(default=2.0, gt=0, description="wait after a failed list or watch")
    rack_labels: list[str] = Field(default_factory=lambda: list(_DEFAULT.rack))
    node_pool_labels: list[str] = Field(default_factory=lambda: list(_DEFAULT.node_pool))
    cpu_model_labels: list[str] = Field(default_factory=lambda: list(_DEFAULT.cpu_model))
    keep_labels: list[str] = Field(
        default_factory=lambda: list(_DEFAULT.keep), description="labels copied into records (exact, or 'prefix/')"
    )

    def label_config(self) -> LabelConfig:
        return LabelConfig(
            rack=tuple(self.rack_labels),
            node_pool=tuple(self.node_pool_labels),
            cpu_model=tuple(self.cpu_model_labels),
            keep=tuple(self.keep_labels),
        )
