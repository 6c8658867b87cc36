"""What the diagnoser remembers: per-node context (anomalies, kernel findings, crash signatures, cloud
events, remediation history, the last diagnosis) and the fleet view (inventory, who is down, crash
buckets per host, fleet findings). Plain data, bounded, rebuilt from the streams on restart. No I/O.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from nodeheal.diagnoser.kb import Finding
from nodeheal.schemas.anomaly import Anomaly
from nodeheal.schemas.audit import RemediationRecord
from nodeheal.schemas.cloud import CloudSystemEvent
from nodeheal.schemas.diagnosis import CrashSignature
from nodeheal.schemas.finding import FleetFinding
from nodeheal.schemas.inventory import NodeInventory

MAX_ANOMALIES = 200
MAX_KERNEL = 1000
MAX_HISTORY = 200
PHASE_ORDER = {
    "pending_approval": 0,
    "scheduled": 1,
    "in_progress": 2,
    "unknown": 0,
    "completed": 3,
    "avoided": 3,
    "canceled": 3,
    "failed": 3,
}


def node_key(cluster: str, node: str) -> str:
    return f"{cluster}/{node}"


@dataclass(frozen=True, slots=True)
class KernelEvidence:
    observed_at: datetime
    finding: Finding
    signature: CrashSignature | None
    anomaly_id: str


@dataclass(frozen=True, slots=True)
class Published:
    diagnosis_id: str
    cause: str
    category: str
    anomaly_ids: tuple[str, ...]
    resolved: bool
    fingerprint: str


@dataclass
class NodeContext:
    cluster: str
    node: str
    firing: dict[str, Anomaly] = field(default_factory=dict)  # anomaly_key → latest firing anomaly
    anomalies: deque[Anomaly] = field(default_factory=lambda: deque(maxlen=MAX_ANOMALIES))
    kernel: deque[KernelEvidence] = field(default_factory=lambda: deque(maxlen=MAX_KERNEL))
    crashes: deque[tuple[datetime, CrashSignature]] = field(default_factory=lambda: deque(maxlen=MAX_HISTORY))
    cloud: dict[str, CloudSystemEvent] = field(default_factory=dict)  # provider_event_id → latest transition
    remediation: deque[RemediationRecord] = field(default_factory=lambda: deque(maxlen=MAX_HISTORY))
    episode_ids: list[str] = field(default_factory=list)  # anomaly ids of the current episode
    published: Published | None = None
    pending_since: datetime | None = None  # a node_down being held to see its peers

    @property
    def key(self) -> str:
        return node_key(self.cluster, self.node)

    def add_anomaly(self, anomaly: Anomaly) -> bool:
        """Remember an anomaly; False when it was already seen (redelivery)."""
        if any(a.id == anomaly.id for a in self.anomalies):
            return False
        self.anomalies.append(anomaly)
        if anomaly.status == "firing":
            self.firing[anomaly.anomaly_key] = anomaly
            if anomaly.id not in self.episode_ids:
                self.episode_ids.append(anomaly.id)
        else:
            current = self.firing.get(anomaly.anomaly_key)
            if current is not None and current.fault_onset <= anomaly.fault_onset:
                del self.firing[anomaly.anomaly_key]
        return True

    def add_cloud_event(self, event: CloudSystemEvent) -> None:
        """Keep the latest transition per provider event; a terminal phase is never overwritten by a
        late non-terminal one."""
        current = self.cloud.get(event.provider_event_id)
        if current is not None and PHASE_ORDER.get(current.phase, 0) > PHASE_ORDER.get(event.phase, 0):
            return
        self.cloud[event.provider_event_id] = event

    def prune(self, *, now: datetime, keep: timedelta) -> None:
        horizon = now - keep
        while self.kernel and self.kernel[0].observed_at < horizon:
            self.kernel.popleft()
        while self.crashes and self.crashes[0][0] < horizon:
            self.crashes.popleft()
        for event_id, event in list(self.cloud.items()):
            seen = event.finished_at or event.observed_at
            if event.is_terminal and seen < horizon:
                del self.cloud[event_id]


@dataclass
class FleetState:
    nodes: dict[str, NodeContext] = field(default_factory=dict)
    inventory: dict[str, NodeInventory] = field(default_factory=dict)
    down_since: dict[str, datetime] = field(default_factory=dict)  # node key → when it went down
    bucket_hosts: dict[str, dict[str, datetime]] = field(default_factory=dict)  # bucket → node key → last seen
    fault_events: dict[str, tuple[str, str, datetime]] = field(default_factory=dict)  # episode id → (node, scope, t)
    findings: dict[tuple[str, str, str, str], FleetFinding] = field(default_factory=dict)  # active findings
    # a finding whose test stopped passing: since when (cleared after DiagnoserConfig.finding_clear_after)
    crash_episodes: dict[str, datetime] = field(default_factory=dict)  # episode id → crash onset (fleet KPIs)
    finding_absent_since: dict[tuple[str, str, str, str], datetime] = field(default_factory=dict)

    def context(self, cluster: str, node: str) -> NodeContext:
        key = node_key(cluster, node)
        ctx = self.nodes.get(key)
        if ctx is None:
            ctx = self.nodes[key] = NodeContext(cluster=cluster, node=node)
        return ctx

    def peers(self, key: str, dimension: str) -> list[str]:
        """Node keys that share `dimension` (rack, zone) with `key`, itself included."""
        record = self.inventory.get(key)
        value = getattr(record, dimension, None) if record is not None else None
        if not value:
            return [key]
        return [k for k, r in self.inventory.items() if getattr(r, dimension, None) == value]
