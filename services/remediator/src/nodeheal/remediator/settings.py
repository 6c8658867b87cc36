"""Configuration of the remediator: one typed home, read from `NODEHEAL_REMEDIATOR_*` env vars.

Every policy knob is documented in docs/remediator.md with its default.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field
from pydantic_settings import SettingsConfigDict

from nodeheal.runtime.service import ServiceSettings
from nodeheal.schemas.health import HealthThresholds


class Budget(BaseModel):
    """Most nodes of one failure domain under capacity-reducing action at once: a count and/or a share.
    Both apply when both are set (the smaller wins); `None` switches that half off."""

    max_count: int | None = Field(default=None, ge=0)
    max_pct: float | None = Field(default=None, ge=0, le=100)


class PolicySettings(BaseModel):
    dry_run: bool = Field(default=False, description="audit everything, change nothing")
    max_diagnosis_age_s: float = Field(
        default=300.0,
        gt=0,
        description="older diagnoses are refused, unless their episode's ladder already began"
        " (a record other than skipped)",
    )
    min_confidence: float = Field(default=0.5, ge=0, le=1, description="less confident diagnoses are refused")
    cluster_budget: Budget = Field(default_factory=lambda: Budget(max_count=20, max_pct=5.0))
    zone_budget: Budget = Field(default_factory=lambda: Budget(max_count=10, max_pct=10.0))
    rack_budget: Budget = Field(default_factory=lambda: Budget(max_count=2, max_pct=25.0))
    pool_budget: Budget = Field(default_factory=lambda: Budget(max_count=5, max_pct=10.0))
    disruptive_per_minute: int = Field(default=10, ge=0, description="cluster-wide starts of disruptive actions")
    storm_threshold_pct: float = Field(default=30.0, gt=0, le=100, description="unhealthy share that is a storm")
    storm_min_unhealthy: int = Field(default=3, ge=1, description="a storm needs at least this many sick nodes")
    storm_resume_pct: float = Field(default=10.0, ge=0, le=100, description="storm ends below this share")
    unhealthy_window_s: float = Field(default=900.0, gt=0, description="how long a diagnosis marks a node sick")
    node_repair_budget: int = Field(default=6, ge=0, description="repair actions per node per window")
    node_repair_window_s: float = Field(default=86_400.0, gt=0)
    flap_reboots: int = Field(default=3, ge=1, description="this many reboots in the window → quarantine")
    flap_window_s: float = Field(default=86_400.0, gt=0)
    approval_required: tuple[str, ...] = Field(
        default=("redeploy",), description="action classes that wait for `nodeheal approve ACTION_ID`"
    )
    approval_timeout_s: float = Field(default=3600.0, gt=0, description="then escalate")
    host_reboot_guard_s: float = Field(
        default=1800.0, ge=0, description="no reboot of our own when the cloud reboots the host within this"
    )
    cloud_event_wait_s: float = Field(default=1800.0, gt=0, description="how long to wait for a cloud event")
    slot_hold_s: float = Field(
        default=3600.0,
        gt=0,
        description="a budget slot of a crashed holder expires after this; a live ladder renews its slot every third",
    )
    cloud_drain_lead_s: float = Field(
        default=900.0, ge=0, description="cordon and drain this long before a host event's not_before, not earlier"
    )
    cloud_accept_margin_s: float = Field(
        default=120.0, ge=0, description="no early acceptance this close to not_before: the event runs by itself"
    )
    accept_cloud_events_early: bool = Field(
        default=True, description="once drained, run a host event early with its own API (a redeploy needs approval)"
    )
    rotate_exhausted: bool = Field(
        default=True,
        description="a node that spent its repair budget (or is quarantined for flapping) is retired "
        "(cordon, drain, retire, then replace behind approval) instead of only escalated",
    )
    reverify_grace_s: float = Field(
        default=600.0,
        gt=0,
        description="an episode verified healthy that is still diagnosed this long after: escalate, never act again",
    )


class KubeSettings(BaseModel):
    enabled: bool = True
    api_url: str | None = Field(default=None, description="API server URL; unset → in-cluster or kubeconfig")
    kubeconfig: str | None = None
    verify_tls: bool = True
    token: str | None = None
    event_namespace: str = "default"
    taint_key: str = "nodeheal.io/remediation"
    retired_key: str = Field(
        default="nodeheal.io/retired", description="label and NoSchedule taint key of a retired node (value: why)"
    )
    agent_namespace: str = Field(default="nodeheal", description="where the node agent's DaemonSet runs")
    agent_selector: str = Field(
        default="app.kubernetes.io/name=nodeheal,app.kubernetes.io/component=agent",
        description="label selector of the node agent's pods (restart_agent deletes the one on the node)",
    )
    drain_timeout_s: float = Field(default=300.0, gt=0, description="then the next rung; never force deletion")
    eviction_backoff_initial_s: float = Field(default=1.0, gt=0)
    eviction_backoff_max_s: float = Field(default=15.0, gt=0)
    eviction_grace_period_s: int | None = None
    request_timeout_s: float = Field(default=10.0, gt=0)


class CloudSettings(BaseModel):
    provider: Literal["auto", "alibaba", "azure", "none"] = "auto"
    alibaba_endpoint: str | None = Field(default=None, description="e.g. ecs.cn-hangzhou.aliyuncs.com or a local URL")
    alibaba_region: str = "cn-hangzhou"
    alibaba_access_key_id: str | None = None
    alibaba_access_key_secret: str | None = None
    alibaba_protocol: Literal["https", "http"] = "https"
    alibaba_force_stop: bool = False
    alibaba_launch_templates: dict[str, str] = Field(
        default_factory=dict,
        description="node pool → launch template a replaced instance is recreated from: 'lt-id' or 'lt-id:version'",
    )
    azure_imds_url: str = Field(
        default="",
        description="where to POST an Azure StartRequests (early acceptance) for the node's VM; empty: off, the "
        "event runs at its NotBefore. IMDS answers only on the VM itself (169.254.169.254 from the remediator's "
        "pod is its own VM's, and the NetworkPolicy gives it no route there): set it only to something that "
        "relays to the node's VM (none is shipped)",
    )
    request_timeout_s: float = Field(default=15.0, gt=0)


class RemediatorSettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="NODEHEAL_REMEDIATOR_", env_nested_delimiter="__", extra="ignore")

    durable: str = "remediator"
    batch_size: int = Field(default=32, ge=2)
    max_concurrent: int = Field(default=64, ge=1, description="ladders in flight per replica")
    stream_readers: int = Field(
        default=64,
        ge=4,
        description="most short-lived stream readers (ephemeral consumers) open at once per replica: "
        "3/4 for probe reads (verification, boot id), 1/4 for audit history; each is deleted after use",
    )
    ack_wait_s: float = Field(default=30.0, gt=0)
    max_deliver: int = Field(default=50, ge=1)
    retry_delay_s: float = Field(default=15.0, gt=0, description="nack delay when blocked, paused or leased")
    node_command_timeout_s: float = Field(default=60.0, gt=0)
    verify_timeout_s: float = Field(
        default=300.0,
        gt=0,
        description="how long a fix is verified; a step whose rung gives it longer (the diagnoser's timeout_s: a"
        " reboot 900 s, a redeploy 1800 s) is verified for that, up to verify_timeout_max_s",
    )
    verify_timeout_max_s: float | None = Field(
        default=None, gt=0, description="the longest verification whatever a rung asks (none: no cap)"
    )
    verify_poll_s: float = Field(default=2.0, gt=0)
    control_poll_s: float = Field(default=2.0, gt=0)
    lease_ttl_s: float | None = Field(default=None, description="default: the bucket's TTL")
    maintenance_interval_s: float = Field(default=5.0, gt=0, description="how often host events are looked at")
    health: HealthThresholds = Field(
        default_factory=HealthThresholds, description="verified = healthy by these (the detector's clear thresholds)"
    )
    http_port: int = Field(default=8084, ge=0, le=65535)
    policy: PolicySettings = Field(default_factory=PolicySettings)
    kube: KubeSettings = Field(default_factory=KubeSettings)
    cloud: CloudSettings = Field(default_factory=CloudSettings)
