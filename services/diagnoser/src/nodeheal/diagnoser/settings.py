"""Configuration of the diagnoser service (env prefix `NODEHEAL_DIAGNOSER_`, nested with `__`, e.g.
`NODEHEAL_DIAGNOSER_NODE_DOWN_HOLD_S=30`, `NODEHEAL_DIAGNOSER_NATS__URL=nats://nats:4222`)."""

from __future__ import annotations

from datetime import timedelta

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from nodeheal.diagnoser.correlation import CorrelationConfig
from nodeheal.diagnoser.reasoning import DiagnoserConfig
from nodeheal.diagnoser.rules import DecisionConfig
from nodeheal.diagnoser.trend import TrendConfig
from nodeheal.runtime.service import ServiceSettings

SERVICE = "diagnoser"


class DiagnoserSettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="NODEHEAL_DIAGNOSER_", env_nested_delimiter="__", extra="ignore")

    durable: str = Field(default="diagnoser", description="durable consumer name on ANOMALIES, CLOUD and AUDIT")
    batch_size: int = Field(default=256, ge=10, le=10_000, description="messages per fetch")
    fetch_timeout_s: float = Field(default=1.0, gt=0)
    ack_wait_s: float = Field(default=30.0, gt=0)
    max_deliver: int = Field(default=10, ge=1)
    nak_delay_s: float = Field(default=2.0, ge=0, description="redelivery delay after a transient failure")
    tick_s: float = Field(default=0.5, gt=0, description="how often held node_down decisions are revisited")
    rules_file: str | None = Field(default=None, description="a knowledge-base rules file instead of the shipped one")

    node_down_hold_s: float = Field(
        default=60.0,
        ge=0,
        le=240,
        description="a lone dark node's verdict waits this long for its rack / zone peers (and a rack whose dark"
        " nodes arrive less than this apart is still going dark); at most 240 s, inside the 5-minute know-why budget",
    )
    crash_report_wait_s: float = Field(
        default=10.0,
        ge=0,
        le=120,
        description="an unexpected reboot nothing explains yet waits this long for the node's crash report before"
        " it is said to be unexplained_reboot (the report and the first probe after the reboot travel different"
        " streams)",
    )
    planned_grace_s: float = Field(
        default=900.0,
        ge=0,
        description="an orderly shutdown or reboot the node logged (not ours: kured, an admin, an update manager)"
        " explains its downtime and stopped services this long after its last such line; a node back within it has"
        " nothing to repair, one still dark after it is judged as any dark node",
    )
    domain_quiet_s: float = Field(
        default=15.0, gt=0, description="a rack / zone is still going dark while dark nodes arrive closer than this"
    )
    domain_hold_max_s: float = Field(
        default=240.0, gt=0, description="the longest a node_down verdict waits for its rack / zone to stop going dark"
    )
    singleton_ttl_s: float = Field(
        default=30.0,
        ge=1,
        description="one diagnoser process per cluster at a time (its state is in memory): a process waits for the "
        "one holding key singleton.<cluster> of the diagnoser bucket to stop, or to leave it unrenewed this long",
    )
    rebuild_lookback_s: float = Field(
        default=86_400.0, gt=0, description="on start, ANOMALIES / AUDIT / DIAGNOSES are read back this far"
    )
    rebuild_cloud_lookback_s: float = Field(
        default=30 * 86_400.0,
        gt=0,
        description="on start, CLOUD is read back this far: all it keeps (a host event is announced once, up to "
        "weeks ahead: AWS about two weeks)",
    )
    kernel_lookback_s: float = Field(default=1800.0, gt=0)
    crash_window_s: float = Field(
        default=7 * 86_400.0, gt=0, description="different crash signatures within → hardware"
    )
    burst_window_s: float = Field(default=120.0, gt=0, description="peers down within this window form a burst")
    rack_min_down: int = Field(default=3, ge=2)
    rack_min_fraction: float = Field(default=0.5, gt=0, le=1)
    zone_min_down: int = Field(default=6, ge=2)
    zone_min_fraction: float = Field(default=0.3, gt=0, le=1)
    kernel_fleet_hosts: int = Field(default=3, ge=2, description="same crash bucket on this many hosts → kernel")
    cloud_imminent_s: float = Field(default=1800.0, ge=0, description="a host event closer than this replaces reboots")
    repeat_limit: int = Field(default=3, ge=1, description="reboots/redeploys in 24 h before hardware escalates")

    correlation_interval_s: float = Field(default=5.0, gt=0)
    correlation_window_s: float = Field(default=86_400.0, gt=0)
    correlation_alpha: float = Field(default=1e-3, gt=0, lt=1)
    correlation_min_ratio: float = Field(default=3.0, ge=1)
    correlation_min_nodes: int = Field(default=3, ge=1)
    spike_fraction: float = Field(default=0.3, gt=0, le=1)
    spike_min_nodes: int = Field(default=3, ge=1)
    trend_bin_s: float = Field(default=3600.0, gt=0, description="sudden-rise test: size of one count bin")
    trend_history_bins: int = Field(default=168, ge=1, description="sudden-rise test: bins of history compared")
    trend_alpha: float = Field(default=1e-3, gt=0, lt=1)
    trend_min_events: int = Field(default=5, ge=1)
    trend_min_ratio: float = Field(default=3.0, ge=1)
    finding_clear_after_s: float = Field(
        default=600.0, ge=0, description="a finding clears only after its test failed for this long (hysteresis)"
    )

    def diagnoser_config(self) -> DiagnoserConfig:
        return DiagnoserConfig(
            decision=DecisionConfig(
                kernel_lookback=timedelta(seconds=self.kernel_lookback_s),
                crash_window=timedelta(seconds=self.crash_window_s),
                burst_window=timedelta(seconds=self.burst_window_s),
                rack_min_down=self.rack_min_down,
                rack_min_fraction=self.rack_min_fraction,
                zone_min_down=self.zone_min_down,
                zone_min_fraction=self.zone_min_fraction,
                kernel_fleet_hosts=self.kernel_fleet_hosts,
                cloud_imminent=timedelta(seconds=self.cloud_imminent_s),
                repeat_limit=self.repeat_limit,
                planned_grace=timedelta(seconds=self.planned_grace_s),
            ),
            correlation=CorrelationConfig(
                alpha=self.correlation_alpha,
                min_ratio=self.correlation_min_ratio,
                min_nodes=self.correlation_min_nodes,
                spike_fraction=self.spike_fraction,
                spike_min_nodes=self.spike_min_nodes,
            ),
            node_down_hold=timedelta(seconds=self.node_down_hold_s),
            crash_report_wait=timedelta(seconds=self.crash_report_wait_s),
            domain_quiet=timedelta(seconds=self.domain_quiet_s),
            domain_hold_max=timedelta(seconds=self.domain_hold_max_s),
            correlation_window=timedelta(seconds=self.correlation_window_s),
            trend=TrendConfig(
                bin_s=self.trend_bin_s,
                history_bins=self.trend_history_bins,
                alpha=self.trend_alpha,
                min_events=self.trend_min_events,
                min_ratio=self.trend_min_ratio,
            ),
            finding_clear_after=timedelta(seconds=self.finding_clear_after_s),
        )
