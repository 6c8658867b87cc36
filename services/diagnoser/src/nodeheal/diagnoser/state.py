"""What the diagnoser remembers: per-node context (anomalies, kernel findings, crash signatures, cloud
events, remediation history, the last diagnosis) and the fleet view (inventory, who is down, crash
buckets per host, fleet findings). Plain data, bounded, rebuilt from the streams on restart. No I/O.
"""

from __future__ import annotations

import bisect
import contextlib
from collections import deque
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from nodeheal.diagnoser.groups import GroupIndex
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
class CrashFact:
    """A node's crash report as the diagnoser judged it, with its bucket's fleet record at that time."""

    at: datetime  # when the crash was written down
    report_id: str
    cls: str
    hardware: bool  # the crash was the machine's (fatal MCE, GHES fatal, EDAC UE, ...)
    bucket: str
    signature: CrashSignature | None
    count: int  # crashes of the bucket in the fleet record, this one included
    node_count: int  # nodes of the bucket in the fleet record, this one included
    kernels: tuple[str, ...] = ()
    machine_models: tuple[str, ...] = ()
    first_seen: str | None = None
    last_seen: str | None = None
    evidence_path: str | None = None

    @property
    def other_nodes(self) -> int:
        return max(0, self.node_count - 1)

    @property
    def new_bucket(self) -> bool:
        return self.count <= 1


@dataclass(frozen=True, slots=True)
class Published:
    diagnosis_id: str
    cause: str
    category: str
    anomaly_ids: tuple[str, ...]
    resolved: bool
    fingerprint: str
    stale: bool = False  # restored from an episode older than the rebuild look-back: not re-judged on start


@dataclass
class NodeContext:
    cluster: str
    node: str
    firing: dict[str, Anomaly] = field(default_factory=dict)  # anomaly_key → latest firing anomaly
    anomalies: deque[Anomaly] = field(default_factory=lambda: deque(maxlen=MAX_ANOMALIES))
    kernel: deque[KernelEvidence] = field(default_factory=lambda: deque(maxlen=MAX_KERNEL))
    crashes: deque[tuple[datetime, CrashSignature]] = field(default_factory=lambda: deque(maxlen=MAX_HISTORY))
    crash_reports: deque[CrashFact] = field(default_factory=lambda: deque(maxlen=MAX_HISTORY))
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
        while self.crash_reports and self.crash_reports[0].at < horizon:
            self.crash_reports.popleft()
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
    crash_counted: dict[str, datetime] = field(default_factory=dict)  # crash report id → counted by a diagnosis
    finding_absent_since: dict[tuple[str, str, str, str], datetime] = field(default_factory=dict)
    dark_at: dict[str, datetime] = field(default_factory=dict)  # node key → detected_at of its node_down / hang
    # the inventory's groups (rack, zone, kernel, ...: members per group), kept up to date per inventory
    # put / delete (`put_inventory`, `drop_inventory`): an inventory change costs O(dimensions), and
    # neither an anomaly nor a correlation run re-groups the whole inventory (50,000 nodes)
    groups: GroupIndex = field(default_factory=GroupIndex)
    # indexes, kept up to date per change (a zone of thousands going dark must cost O(n log n), not
    # O(n^2)): dark nodes per domain sorted by detected_at and by onset; and
    # per domain the runs / bursts derived from them, recomputed only for the domain that changed
    judged_dark: set[str] = field(default_factory=set)  # dark nodes judged, not (yet) as the network
    released: set[tuple[str, str]] = field(default_factory=set)  # domains whose burst became a partition
    _dark: dict[tuple[str, str], list[tuple[datetime, str]]] | None = None
    _down: dict[tuple[str, str], list[tuple[datetime, str]]] = field(default_factory=dict)
    _runs: dict[tuple[str, str, timedelta], dict[str, tuple[int, datetime]]] = field(default_factory=dict)
    _bursts: dict[tuple[str, str, timedelta], dict[str, tuple[str, ...]]] = field(default_factory=dict)

    def mark_dark(self, key: str, *, onset: datetime, detected_at: datetime) -> None:
        if key in self.dark_at:
            return
        self.down_since.setdefault(key, onset)
        self.dark_at[key] = detected_at
        if self._dark is not None:
            for domain in self._domains_of(key):
                bisect.insort(self._dark.setdefault(domain, []), (detected_at, key))
                bisect.insort(self._down.setdefault(domain, []), (self.down_since[key], key))
                self._forget(domain)

    def clear_dark(self, key: str) -> None:
        onset = self.down_since.pop(key, None)
        at = self.dark_at.pop(key, None)
        self.judged_dark.discard(key)
        if self._dark is not None and (onset is not None or at is not None):
            for domain in self._domains_of(key):
                for index, item in ((self._dark, (at, key)), (self._down, (onset, key))):
                    members = index.get(domain, [])
                    with contextlib.suppress(ValueError):
                        members.remove(item)  # type: ignore[arg-type]
                if not self._dark.get(domain):
                    self.released.discard(domain)  # the domain is back: a new burst is judged anew
                self._forget(domain)

    def _forget(self, domain: tuple[str, str]) -> None:
        for cache in (self._runs, self._bursts):
            for k in [k for k in cache if k[:2] == domain]:
                del cache[k]

    def put_inventory(self, key: str, record: NodeInventory) -> None:
        """A node's inventory record (new or changed)."""
        domains = self._domains_of(key)
        self.inventory[key] = record
        self.groups.put(key, record)
        if self._domains_of(key) != domains:
            self.invalidate_domains()

    def drop_inventory(self, key: str) -> None:
        domains = self._domains_of(key)
        self.inventory.pop(key, None)
        self.groups.remove(key)
        if domains:
            self.invalidate_domains()

    def invalidate_domains(self) -> None:
        """A node's rack / zone changed: the dark-node indexes (O(dark nodes)) are rebuilt lazily."""
        self._dark = None
        self._down = {}
        self._runs.clear()
        self._bursts.clear()

    def _domains_of(self, key: str) -> list[tuple[str, str]]:
        out = []
        for dimension in ("rack", "zone"):
            value = self.domain_of(key, dimension)
            if value is not None:
                out.append((dimension, value))
        return out

    def domain_of(self, key: str, dimension: str) -> str | None:
        record = self.inventory.get(key)
        value = getattr(record, dimension, None) if record is not None else None
        return str(value) if value else None

    def members(self, dimension: str, value: str) -> list[str]:
        return list(self.groups.members.get((dimension, value), ()))

    def dark_domains(self) -> dict[tuple[str, str], list[tuple[datetime, str]]]:
        """(dimension, value) → the dark nodes of that rack / zone as sorted (detected_at, node key)."""
        if self._dark is None:
            dark: dict[tuple[str, str], list[tuple[datetime, str]]] = {}
            down: dict[tuple[str, str], list[tuple[datetime, str]]] = {}
            for key, at in self.dark_at.items():
                for domain in self._domains_of(key):
                    dark.setdefault(domain, []).append((at, key))
                    if key in self.down_since:
                        down.setdefault(domain, []).append((self.down_since[key], key))
            for index in (dark, down):
                for members in index.values():
                    members.sort()
            self._dark, self._down = dark, down
        return self._dark

    def dark_run(self, key: str, dimension: str, *, gap: timedelta) -> tuple[int, datetime] | None:
        """How many dark nodes of this node's rack / zone arrived in its run (consecutive `detected_at`
        at most `gap` apart), and the last arrival of that run; None when the node is not dark."""
        value = self.domain_of(key, dimension)
        if value is None:
            return None
        cache_key = (dimension, value, gap)
        runs = self._runs.get(cache_key)
        if runs is None:
            runs = {}
            for group in _chains(self.dark_domains().get((dimension, value), []), gap):
                for _, k in group:
                    runs[k] = (len(group), group[-1][0])
            self._runs[cache_key] = runs
        return runs.get(key)

    def burst(self, key: str, dimension: str, *, gap: timedelta) -> tuple[str, ...]:
        """The down nodes of this node's rack / zone whose onsets (`down_since`) chain to its own at
        most `gap` apart (itself included); empty when it is not down."""
        value = self.domain_of(key, dimension)
        if value is None:
            return ()
        cache_key = (dimension, value, gap)
        bursts = self._bursts.get(cache_key)
        if bursts is None:
            self.dark_domains()  # builds `_down` too
            bursts = {}
            for group in _chains(self._down.get((dimension, value), []), gap):
                names = tuple(sorted(k for _, k in group))
                for _, k in group:
                    bursts[k] = names
            self._bursts[cache_key] = bursts
        return bursts.get(key, ())

    def context(self, cluster: str, node: str) -> NodeContext:
        key = node_key(cluster, node)
        ctx = self.nodes.get(key)
        if ctx is None:
            ctx = self.nodes[key] = NodeContext(cluster=cluster, node=node)
        return ctx

    def peers(self, key: str, dimension: str) -> list[str]:
        """Node keys that share `dimension` (rack, zone) with `key`, itself included."""
        value = self.domain_of(key, dimension)
        if value is None:
            return [key]
        return self.members(dimension, value)

    def peer_count(self, key: str, dimension: str) -> int:
        """How many nodes share `dimension` with `key` (itself included): `len(peers(...))` in O(1)."""
        value = self.domain_of(key, dimension)
        if value is None:
            return 1
        return self.groups.size(dimension, value)


def _chains(items: list[tuple[datetime, str]], gap: timedelta) -> list[list[tuple[datetime, str]]]:
    """Sorted (time, key) items cut where consecutive times are more than `gap` apart."""
    out: list[list[tuple[datetime, str]]] = []
    for item in items:
        if out and item[0] - out[-1][-1][0] <= gap:
            out[-1].append(item)
        else:
            out.append([item])
    return out
