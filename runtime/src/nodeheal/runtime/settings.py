"""Settings every service shares (each service nests these in its own pydantic-settings class)."""

from __future__ import annotations

from pydantic import BaseModel, Field

from nodeheal.schemas.streams import DEFAULT_STORE_BYTES, MIN_STORE_BYTES, Topology, topology
from nodeheal.schemas.subjects import DEFAULT_PREFIX


class NatsSettings(BaseModel):
    url: str = Field(default="nats://127.0.0.1:4222", description="NATS server URL(s), comma separated")
    prefix: str = Field(default=DEFAULT_PREFIX, description="subject prefix")
    stream_prefix: str = Field(default="", description="prefix of stream names (for side-by-side installs)")
    bucket_prefix: str = Field(default="nodeheal", description="prefix of key-value bucket names")
    creds_file: str | None = Field(default=None, description="NATS credentials file (.creds)")
    user: str | None = None
    password: str | None = None
    tls_ca_file: str | None = Field(default=None, description="CA bundle (PEM) to verify the server's TLS certificate")
    inbox_prefix: str = Field(
        default="_INBOX",
        pattern=r"^[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*$",
        description="prefix of reply inboxes; under per-service permissions each user may only subscribe to its own"
        " (deploy/nats/natsauth.py gives each role `_INBOX.<role>`)",
    )
    publish_timeout_s: float = Field(default=5.0, gt=0)
    start_patience_s: float = Field(
        default=120.0,
        ge=0,
        description="how long a service's start waits for a JetStream that is briefly unavailable (503, no"
        " responders, timeouts) before it fails and /healthz with it",
    )
    probe_partitions: int = Field(
        default=0, ge=0, le=1024, description="0: PROBES unpartitioned; N: stored subjects get a partition token"
    )

    store_bytes: int = Field(
        default=DEFAULT_STORE_BYTES,
        ge=MIN_STORE_BYTES,
        description="bytes the streams and buckets may hold together (per replica); each gets its share as its cap",
    )

    def topology(self) -> Topology:
        return topology(
            store_bytes=self.store_bytes,
            prefix=self.prefix,
            stream_prefix=self.stream_prefix,
            bucket_prefix=self.bucket_prefix,
            probe_partitions=self.probe_partitions,
        )

    @property
    def servers(self) -> list[str]:
        return [s.strip() for s in self.url.split(",") if s.strip()]
