"""Configuration of the ingest service: one typed home, env prefix `NODEHEAL_INGEST_`.

Nested values use `__`: `NODEHEAL_INGEST_ALIBABA__ENABLED=true`, `NODEHEAL_INGEST_AUTH_TOKEN=...`.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field, SecretStr, model_validator
from pydantic_settings import SettingsConfigDict

from nodeheal.runtime.service import ServiceSettings
from nodeheal.runtime.settings import NatsSettings
from nodeheal.schemas.subjects import escape_token

PUSH_SOURCES = ("alibaba-cms", "alibaba-eventbridge", "aws-eventbridge", "alibaba-api", "aws-api", "auto")


class AlibabaPollerSettings(BaseModel):
    enabled: bool = False
    endpoint: str = Field(default="ecs.aliyuncs.com", description="ECS OpenAPI endpoint (host[:port])")
    protocol: str = Field(default="https", pattern="^(https?)$", description="http only for local endpoints")
    region_ids: list[str] = Field(default_factory=lambda: ["cn-hangzhou"])
    access_key_id: SecretStr | None = None
    access_key_secret: SecretStr | None = None
    interval_s: float = Field(default=60.0, gt=0)
    page_size: int = Field(default=100, ge=1, le=100)
    timeout_s: float = Field(default=10.0, gt=0)
    throttle_retries: int = Field(
        default=3, ge=0, description="a page the API's flow control refuses (Throttling*) is asked again this often"
    )
    throttle_backoff_s: float = Field(
        default=1.0, gt=0, description="the first wait before asking a throttled page again (doubled each time)"
    )


class MetadataPollerSettings(BaseModel):
    """A poller that runs on the node and speaks for it (`node`); `instance_id` is read from the
    metadata server when empty."""

    enabled: bool = False
    endpoint: str = "http://169.254.169.254"
    node: str | None = Field(default=None, description="Kubernetes node name this poller speaks for")
    instance_id: str | None = None
    interval_s: float = Field(default=2.0, gt=0)
    timeout_s: float = Field(default=3.0, gt=0)


class AzurePollerSettings(MetadataPollerSettings):
    api_version: str = "2020-07-01"
    vm_name: str | None = Field(default=None, description="VM name in Resources (default: instance_id, then node)")


class GcePollerSettings(MetadataPollerSettings):
    endpoint: str = "http://metadata.google.internal"


class IngestSettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="NODEHEAL_INGEST_", env_nested_delimiter="__", extra="ignore")

    service_name: str = Field(default="cloud-events-ingest", description="DLQ subject token and NATS client name")
    auth_token: SecretStr | None = Field(default=None, description="shared bearer token (Authorization: Bearer …)")
    hmac_secret: SecretStr | None = Field(default=None, description="HMAC-SHA256 key for the signature header")
    hmac_header: str = "X-Nodeheal-Signature"
    allow_query_token: bool = Field(default=False, description="also accept ?token= (CloudMonitor webhooks)")
    allow_unauthenticated: bool = Field(default=False, description="development only")
    max_body_bytes: int = Field(default=256 * 1024, ge=1024)
    http_sources: list[str] = Field(default_factory=lambda: list(PUSH_SOURCES))
    inventory_cache_ttl_s: float = Field(default=30.0, ge=0)
    ledger_max_entities: int = Field(default=200_000, ge=100)
    unmapped_recheck_s: float = Field(
        default=60.0,
        ge=0,
        description="how often events published under an instance id the inventory did not know are looked up "
        "again and sent to their node once it does (0: only when the event is reported again)",
    )
    ledger_seed_lookback_s: float = Field(
        default=30 * 86_400.0,
        ge=0,
        description="CLOUD history read at start: all it keeps, so an event announced weeks ahead is still open "
        "in the ledger (reconciled, never published again)",
    )
    scope: Literal["auto", "fleet", "node"] = Field(
        default="auto",
        description="fleet: the central ingest (seeds its ledger from all of CLOUD, sweeps the events published "
        "under an instance id); node: a node-local pod (seeds only the subjects of the node(s) its metadata "
        "pollers speak for, no sweep); auto: node when a metadata poller (AWS, Azure, GCE) is on and Alibaba's is not",
    )
    inbox_per_node: bool = Field(
        default=False,
        description="append the escaped cluster and node tokens to nats.inbox_prefix (node scope, one node), so "
        "replies arrive on `<inbox_prefix>.<cluster>.<node>.…`, the only inbox the per-node `ingest-node` "
        "credential may read (deploy/nats/natsauth.py)",
    )
    alibaba: AlibabaPollerSettings = Field(default_factory=AlibabaPollerSettings)
    azure: AzurePollerSettings = Field(default_factory=AzurePollerSettings)
    aws: MetadataPollerSettings = Field(default_factory=MetadataPollerSettings)
    gce: GcePollerSettings = Field(default_factory=GcePollerSettings)

    @model_validator(mode="after")
    def _sources_known(self) -> IngestSettings:
        unknown = [s for s in self.http_sources if s not in PUSH_SOURCES]
        if unknown:
            msg = f"http_sources {unknown} unknown; choose from {', '.join(PUSH_SOURCES)}"
            raise ValueError(msg)
        if self.scope == "node" and not self.local_nodes():
            msg = "scope node needs a metadata poller (AWS, Azure or GCE) enabled with the NODE it speaks for"
            raise ValueError(msg)
        if self.inbox_per_node and len(self.local_nodes()) != 1:
            msg = "inbox_per_node needs exactly one metadata poller's NODE: the inbox is that node's"
            raise ValueError(msg)
        if self.scope == "node" and self.alibaba.enabled:
            msg = "the Alibaba poller reconciles the fleet's open events: it runs in the fleet scope, not node"
            raise ValueError(msg)
        return self

    def nats_settings(self) -> NatsSettings:
        """The NATS settings this process connects with: `nats`, its inbox below its node's with `inbox_per_node`."""
        if not self.inbox_per_node:
            return self.nats
        (node,) = self.local_nodes()
        inbox = f"{self.nats.inbox_prefix}.{escape_token(self.cluster)}.{escape_token(node)}"
        return self.nats.model_copy(update={"inbox_prefix": inbox})

    def local_nodes(self) -> list[str]:
        """The nodes the enabled metadata pollers speak for."""
        return sorted({p.node for p in (self.aws, self.azure, self.gce) if p.enabled and p.node})

    def node_scoped(self) -> bool:
        """A node-local pod (a DaemonSet's): its ledger holds only its node's events and it does not sweep the
        fleet's unmapped events (`scope`)."""
        if self.scope == "auto":
            return bool(self.local_nodes()) and not self.alibaba.enabled
        return self.scope == "node"

    def auth_problem(self) -> str | None:
        """Why the HTTP side must not start, or None."""
        if self.auth_token is None and self.hmac_secret is None and not self.allow_unauthenticated:
            return (
                "no authentication configured for the HTTP endpoints: set NODEHEAL_INGEST_AUTH_TOKEN and/or "
                "NODEHEAL_INGEST_HMAC_SECRET (or NODEHEAL_INGEST_ALLOW_UNAUTHENTICATED=true for development)"
            )
        return None
