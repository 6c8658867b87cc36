"""`Anomaly`: the detector's statement that something is wrong with a node (firing) or no longer is
(resolved). An anomaly fires once and resolves once; both carry the same `anomaly_key`."""

from __future__ import annotations

from typing import Any, Final, Literal

from pydantic import Field

from nodeheal.schemas.base import Frozen, Message, UtcDatetime

ANOMALY_SCHEMA: Final = "nodeheal.anomaly/v1"

AnomalyKind = Literal[
    "node_down",
    "node_hang",
    "node_not_ready",
    "unexpected_reboot",
    "high_load",
    "disk_full",
    "inode_exhaustion",
    "readonly_fs",
    "fd_exhaustion",
    "service_down",
    "kernel_fault",
    "cloud_maintenance",
    "flapping",
]
AnomalyStatus = Literal["firing", "resolved"]
AnomalySeverity = Literal["critical", "major", "minor", "info"]


class Evidence(Frozen):
    """One observation that supports a statement: what, the value, where it came from."""

    kind: str = Field(description="e.g. probe, cloud_event, kernel_log, threshold, peer, history")
    summary: str
    value: float | str | bool | None = None
    threshold: float | None = None
    ref: str | None = Field(default=None, description="id of the message it came from")
    observed_at: UtcDatetime | None = None
    details: dict[str, Any] = Field(default_factory=dict)


class Anomaly(Message):
    schema_: Literal["nodeheal.anomaly/v1"] = Field(default=ANOMALY_SCHEMA, alias="schema")
    anomaly_key: str = Field(description="stable per (node, kind, subject); firing and resolved share it")
    kind: AnomalyKind
    status: AnomalyStatus
    severity: AnomalySeverity
    subject: str | None = Field(
        default=None, description="the service, mount, kernel-log class or cloud event concerned"
    )
    fault_onset: UtcDatetime = Field(description="first bad observation")
    detected_at: UtcDatetime
    resolved_at: UtcDatetime | None = None
    expected: bool = Field(default=False, description="downtime explained by a cloud event or our own remediation")
    evidence: tuple[Evidence, ...] = ()
    probe_ids: tuple[str, ...] = ()
    replay: bool = Field(default=False, description="produced by a replay sandbox; never acted upon")
