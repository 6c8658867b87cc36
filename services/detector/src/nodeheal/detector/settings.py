"""Configuration of the detector service (env prefix `NODEHEAL_DETECTOR_`, nested with `__`, e.g.
`NODEHEAL_DETECTOR_RULES__DISK_FULL_PCT=97`, `NODEHEAL_DETECTOR_NATS__URL=nats://nats:4222`)."""

from __future__ import annotations

from pydantic import Field, model_validator
from pydantic_settings import SettingsConfigDict

from nodeheal.detector.rules import RuleConfig
from nodeheal.runtime.service import ServiceSettings
from nodeheal.schemas.subjects import PROBE_KIND, PROBER_KIND, wildcard

SERVICE = "detector"


class DetectorSettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="NODEHEAL_DETECTOR_", env_nested_delimiter="__", extra="ignore")

    rules: RuleConfig = Field(default_factory=RuleConfig)
    durable: str = Field(default="detector", description="durable name prefix of the detector's consumers")
    batch_size: int = Field(default=1000, ge=10, le=10_000, description="probes per pull request")
    fetch_expires_s: float = Field(default=5.0, gt=0)
    ack_wait_s: float = Field(default=60.0, gt=0)
    max_ack_pending: int = Field(default=20_000, ge=100)
    tick_s: float = Field(default=0.5, gt=0, description="how often the timer sweep runs when probes are idle")
    tick_limit: int = Field(
        default=1000, ge=1, description="nodes one timer sweep looks at before the event loop runs again"
    )
    publish_window: int = Field(
        default=500, ge=1, description="anomalies published (and PubAck'ed) together before the event loop runs again"
    )
    stall_s: float = Field(
        default=60.0,
        gt=0,
        description="/healthz fails when the probe loop made no progress for this long (stuck, not merely behind)",
    )
    replicas: int = Field(default=1, ge=1, description="how many detector replicas split the partitions")
    replica: int = Field(default=0, ge=0, description="this replica's index, 0 .. replicas-1 (StatefulSet ordinal)")
    restore_lookback_s: float = Field(
        default=86_400.0, ge=0, description="how far back ANOMALIES is replayed at start to restore what was firing"
    )
    seed_from_last_probes: bool = Field(default=True, description="learn the fleet from PROBES' last probe per node")

    @model_validator(mode="after")
    def _replica_in_range(self) -> DetectorSettings:
        if self.replica >= self.replicas:
            msg = f"replica={self.replica} is out of range for replicas={self.replicas}: use 0 .. {self.replicas - 1}"
            raise ValueError(msg)
        if self.partitions and self.partitions < self.replicas:
            msg = f"partitions={self.partitions} < replicas={self.replicas}: some replicas would own nothing"
            raise ValueError(msg)
        return self

    @property
    def partitions(self) -> int:
        """How many partitions PROBES is provisioned with (`nats.probe_partitions`, the same setting
        `nodeheal streams apply --probe-partitions` uses); 0 = unpartitioned."""
        return self.nats.probe_partitions

    @property
    def owned_partitions(self) -> list[int]:
        return [p for p in range(self.partitions) if p % self.replicas == self.replica]

    def probe_filters(self) -> list[str]:
        bases = [wildcard(kind, prefix=self.nats.prefix) for kind in (PROBE_KIND, PROBER_KIND)]
        if not self.partitions:
            return bases
        return [f"{base}.{p}" for p in self.owned_partitions for base in bases]

    @property
    def probe_durable(self) -> str:
        if not self.partitions:
            return self.durable
        return f"{self.durable}-{self.replica}-of-{self.replicas}"

    @property
    def side_durable(self) -> str:
        """Consumer of CLOUD and AUDIT: every replica reads all of them (low volume) and keeps its own nodes."""
        if not self.partitions:
            return self.durable
        return f"{self.durable}-{self.replica}-of-{self.replicas}"
