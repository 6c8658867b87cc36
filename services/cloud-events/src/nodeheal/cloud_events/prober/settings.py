"""Configuration of the active prober (env prefix `NODEHEAL_PROBER_`, nested with `__`)."""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from nodeheal.runtime.service import ServiceSettings


class ProberSettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="NODEHEAL_PROBER_", env_nested_delimiter="__", extra="ignore")

    interval_s: float = Field(default=10.0, gt=0, description="seconds between rounds")
    tcp_ports: list[int] = Field(default_factory=lambda: [10250], description="TCP ports connected to")
    ssh_port: int | None = Field(
        default=None, description="the port whose banner must start with SSH- (add it to tcp_ports; opt-in)"
    )
    healthz_url: str | None = Field(
        default="https://{address}:10250/healthz",
        description="the kubelet's answer; {address} is the node's address; on https 401/403 count as answering",
    )
    timeout_s: float = Field(default=2.0, gt=0, description="per check")
    concurrency: int = Field(default=2000, ge=1, description="nodes checked at the same time")
    shard_count: int = Field(default=1, ge=1, description="prober replicas splitting the inventory")
    shard_index: int | None = Field(
        default=None, ge=0, description="this replica's index; default: the ordinal of `instance` (pod name)"
    )
    max_pending_publishes: int = Field(default=4000, ge=1)
    batch_max_results: int = Field(
        default=500,
        ge=1,
        le=2000,
        description="nodes per ProberResults message (one message per partition of PROBES; NATS__PROBE_PARTITIONS"
        " must be the stream's)",
    )
    batch_flush_s: float = Field(
        default=1.0, gt=0, description="while a round runs, what was checked is sent at least this often"
    )

    def resolved_shard_index(self) -> int:
        from nodeheal.cloud_events.prober.sharding import ordinal_from_instance

        if self.shard_index is not None:
            index = self.shard_index
        else:
            index = ordinal_from_instance(self.instance) or 0 if self.shard_count > 1 else 0
        if index >= self.shard_count:
            msg = (
                f"prober shard index {index} is not below the shard count {self.shard_count}; set "
                "NODEHEAL_PROBER_SHARD_COUNT to the number of prober replicas"
            )
            raise ValueError(msg)
        return index
