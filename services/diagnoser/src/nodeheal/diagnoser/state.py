"""What the diagnoser remembers: per-node context (anomalies, kernel findings, crash signatures, cloud
events, remediation history, the last diagnosis) and the fleet view (inventory, who is down, crash
buckets per host, fleet findings). Plain data, bounded, rebuilt from the streams on restart. No I/O.
"""

from __future__ import annotations

import bisect
import heapq
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from nodeheal.diagnoser.groups import GroupIndex
from nodeheal.diagnoser.kb import Finding
from nodeheal.diagnoser.kpi import schedulable
from nodeheal.schemas.anomaly import Anomaly
from nodeheal.schemas.audit import RemediationRecord
from nodeheal.schemas.cloud import CloudSystemEvent
from nodeheal.schemas.diagnosis import CrashSignature
from nodeheal.schemas.finding import FleetFinding
from nodeheal.schemas.inventory import NodeInventory

MAX_ANOMALIES = 200
MAX_KERNEL = 1000
MAX_HISTORY = 200
MAX_RESOLVED_KEYS = 200  # per node: anomaly keys whose last resolution is remembered
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
    # anomaly_key → the latest fault_onset a resolution of it ended (bounded, least recently resolved dropped
    # first): a firing of that onset or an earlier one arriving late is not firing (`add_anomaly`)
    resolved_onsets: dict[str, datetime] = field(default_factory=dict)

    @property
    def key(self) -> str:
        return node_key(self.cluster, self.node)

    def add_anomaly(self, anomaly: Anomaly) -> bool:
        """Remember an anomaly; False when it was already seen (redelivery). A firing whose episode's
        resolution was already seen (same anomaly key, a resolution of its onset or a later one: the detector's
        publish of the firing failed and was stored after its resolution) is remembered but not firing — as
        if the two had arrived in order."""
        if any(a.id == anomaly.id for a in self.anomalies):
            return False
        self.anomalies.append(anomaly)
        key = anomaly.anomaly_key
        if anomaly.status == "firing":
            over = self.resolved_onsets.get(key)
            if over is None or anomaly.fault_onset > over:
                self.firing[key] = anomaly
            if anomaly.id not in self.episode_ids:
                self.episode_ids.append(anomaly.id)
        else:
            current = self.firing.get(key)
            if current is not None and current.fault_onset <= anomaly.fault_onset:
                del self.firing[key]
            seen = self.resolved_onsets.pop(key, None)
            self.resolved_onsets[key] = anomaly.fault_onset if seen is None else max(seen, anomaly.fault_onset)
            if len(self.resolved_onsets) > MAX_RESOLVED_KEYS:
                del self.resolved_onsets[next(iter(self.resolved_onsets))]
        return True

    def is_firing(self, anomaly: Anomaly) -> bool:
        """The anomaly is its key's current firing (not a late firing of an episode already resolved)."""
        return self.firing.get(anomaly.anomaly_key) is anomaly

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
    # the inventory's nodes that are Ready (or not known otherwise) and not cordoned, kept per inventory
    # put / delete: the KPIs' schedulable count is this minus the down ones, O(down) instead of O(fleet)
    ready_schedulable: set[str] = field(default_factory=set)
    # indexes, kept up to date per change (a zone of thousands going dark must cost O(log n) per
    # arrival, not O(n)): the dark nodes of every rack / zone sorted by detected_at (`_dark`) and by
    # onset (`_down`), and per (domain, gap) their `Chains`, created on first use and then updated
    # per arrival / return / inventory change of a dark node
    judged_dark: set[str] = field(default_factory=set)  # dark nodes judged, not (yet) as the network
    # the judged dark nodes per rack, and per zone by rack (None: no rack), kept by `judge_dark` /
    # `unjudge_dark`: an arrival revisits the judged peers that it can move into a partition without
    # scanning every judged node of the fleet (`judged_to_revisit`)
    _judged_rack: dict[str, set[str]] = field(default_factory=dict)
    _judged_zone: dict[str, dict[str | None, set[str]]] = field(default_factory=dict)
    _judged_in: dict[str, tuple[str | None, str | None]] = field(default_factory=dict)  # key -> (rack, zone)
    released: set[tuple[str, str]] = field(default_factory=set)  # domains whose burst became a partition
    _dark: dict[tuple[str, str], list[tuple[datetime, str]]] = field(default_factory=dict)
    _down: dict[tuple[str, str], list[tuple[datetime, str]]] = field(default_factory=dict)
    _runs: dict[tuple[str, str], dict[timedelta, Chains]] = field(default_factory=dict)  # domain -> gap -> chains
    _bursts: dict[tuple[str, str], dict[timedelta, Chains]] = field(default_factory=dict)
    _placed: dict[str, tuple[tuple[str, str], ...]] = field(default_factory=dict)  # dark node -> its domains

    def mark_dark(self, key: str, *, onset: datetime, detected_at: datetime) -> None:
        if key in self.dark_at:
            return
        self.down_since.setdefault(key, onset)
        self.dark_at[key] = detected_at
        self._place(key)

    def clear_dark(self, key: str) -> None:
        self._unplace(key)
        self.down_since.pop(key, None)
        self.dark_at.pop(key, None)
        self.unjudge_dark(key)

    def judge_dark(self, key: str) -> None:
        """A dark node was judged as something other than the network: a later arrival in its rack or
        zone may still make it part of a partition (`judged_to_revisit`)."""
        if key in self.judged_dark:
            return
        self.judged_dark.add(key)
        rack, zone = self.domain_of(key, "rack"), self.domain_of(key, "zone")
        self._judged_in[key] = (rack, zone)
        if rack is not None:
            self._judged_rack.setdefault(rack, set()).add(key)
        if zone is not None:
            self._judged_zone.setdefault(zone, {}).setdefault(rack, set()).add(key)

    def unjudge_dark(self, key: str) -> None:
        self.judged_dark.discard(key)
        rack, zone = self._judged_in.pop(key, (None, None))
        if rack is not None:
            _discard(self._judged_rack, rack, key)
        if zone is not None:
            by_rack = self._judged_zone.get(zone)
            if by_rack is not None:
                _discard(by_rack, rack, key)
                if not by_rack:
                    del self._judged_zone[zone]

    def judged_to_revisit(self, key: str, *, zone_min_down: int, zone_min_fraction: float) -> set[str]:
        """The judged dark nodes whose partition view the arrival of `key` (now dark) can change: every
        one of its rack; of its zone, only while the zone's dark nodes could make a zone partition
        (at least `zone_min_down` and `zone_min_fraction` of it, counting every dark node, a bound of
        any burst) and only those whose own rack could be dark enough for one (same bound), or that
        have no rack. The others' partition view stays None whatever this arrival adds: their verdict
        cannot change because of it (`rules.partition_view`), so they are not evaluated again — a zone
        of thousands of scattered dark nodes costs O(racks) per arrival, not O(judged nodes)."""
        touched: set[str] = set()
        rack, zone = self.domain_of(key, "rack"), self.domain_of(key, "zone")
        if rack is not None:
            touched |= self._judged_rack.get(rack, set())
        by_rack = self._judged_zone.get(zone) if zone is not None else None
        if not by_rack:
            return touched
        assert zone is not None
        dark = len(self._down.get(("zone", zone), ()))
        size = self.groups.size("zone", zone)
        if dark < zone_min_down or (dark / size if size else 0.0) < zone_min_fraction:
            return touched
        for peer_rack, keys in by_rack.items():
            if peer_rack is None:
                touched |= keys
                continue
            rack_size = self.groups.size("rack", peer_rack)
            rack_dark = len(self._down.get(("rack", peer_rack), ()))
            if (rack_dark / rack_size if rack_size else 0.0) >= zone_min_fraction:
                touched |= keys
        return touched

    def _place(self, key: str) -> None:
        """Index a dark node in the rack / zone its inventory names now."""
        domains = tuple(self._domains_of(key))
        at, onset = self.dark_at[key], self.down_since.get(key)
        for domain in domains:
            _insort(self._dark.setdefault(domain, []), (at, key))
            for chains in self._chains_of(self._runs, domain):
                chains.insert((at, key))
            if onset is not None:
                _insort(self._down.setdefault(domain, []), (onset, key))
                for chains in self._chains_of(self._bursts, domain):
                    chains.insert((onset, key))
        self._placed[key] = domains

    def _unplace(self, key: str, *, returned: bool = True) -> None:
        """Take a dark node out of the indexes; `returned`: it came back (a domain left without dark
        nodes is judged anew on its next burst), not merely moved in the inventory."""
        domains = self._placed.pop(key, ())
        at, onset = self.dark_at.get(key), self.down_since.get(key)
        for domain in domains:
            if at is not None:
                _remove(self._dark.get(domain), (at, key))
                for chains in self._chains_of(self._runs, domain):
                    chains.remove((at, key))
            if onset is not None:
                _remove(self._down.get(domain), (onset, key))
                for chains in self._chains_of(self._bursts, domain):
                    chains.remove((onset, key))
            if not self._dark.get(domain):
                self._dark.pop(domain, None)
                self._down.pop(domain, None)
                if returned:
                    self.released.discard(domain)  # the domain is back: a new burst is judged anew

    @staticmethod
    def _chains_of(cache: dict[tuple[str, str], dict[timedelta, Chains]], domain: tuple[str, str]) -> Iterable[Chains]:
        by_gap = cache.get(domain)
        return by_gap.values() if by_gap else ()

    def put_inventory(self, key: str, record: NodeInventory) -> None:
        """A node's inventory record (new or changed)."""
        domains = self._domains_of(key)
        self.inventory[key] = record
        self.groups.put(key, record)
        if schedulable(record):
            self.ready_schedulable.add(key)
        else:
            self.ready_schedulable.discard(key)
        if key in self.dark_at and self._domains_of(key) != domains:
            self._unplace(key, returned=False)
            self._place(key)
        judged_in = self._judged_in.get(key)
        if judged_in is not None and judged_in != (self.domain_of(key, "rack"), self.domain_of(key, "zone")):
            self.unjudge_dark(key)
            self.judge_dark(key)

    def drop_inventory(self, key: str) -> None:
        self.inventory.pop(key, None)
        self.groups.remove(key)
        self.ready_schedulable.discard(key)
        if key in self._placed:
            self._unplace(key, returned=False)
        if key in self._judged_in:  # still judged, in no rack or zone any more
            self.unjudge_dark(key)
            self.judge_dark(key)

    def invalidate_domains(self) -> None:
        """Rebuild the dark-node indexes from `dark_at` / `down_since` and the inventory (O(dark nodes)):
        after `dark_at` / `down_since` were changed directly instead of through `mark_dark` / `clear_dark`."""
        self._dark.clear()
        self._down.clear()
        self._runs.clear()
        self._bursts.clear()
        self._placed.clear()
        for key in self.dark_at:
            self._place(key)

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
        return self._dark

    def dark_run(self, key: str, dimension: str, *, gap: timedelta) -> tuple[int, datetime] | None:
        """How many dark nodes of this node's rack / zone arrived in its run (consecutive `detected_at`
        at most `gap` apart), and the last arrival of that run; None when the node is not dark."""
        value = self.domain_of(key, dimension)
        at = self.dark_at.get(key)
        if value is None or at is None or key not in self._placed:
            return None
        by_gap = self._runs.setdefault((dimension, value), {})
        chains = by_gap.get(gap)
        if chains is None:
            chains = by_gap[gap] = Chains(gap, self._dark.get((dimension, value), ()))
        return chains.run((at, key))

    def burst(self, key: str, dimension: str, *, gap: timedelta) -> tuple[str, ...]:
        """The down nodes of this node's rack / zone whose onsets (`down_since`) chain to its own at
        most `gap` apart (itself included); empty when it is not down."""
        value = self.domain_of(key, dimension)
        onset = self.down_since.get(key)
        if value is None or onset is None or key not in self._placed:
            return ()
        by_gap = self._bursts.setdefault((dimension, value), {})
        chains = by_gap.get(gap)
        if chains is None:
            chains = by_gap[gap] = Chains(gap, self._down.get((dimension, value), ()))
        return chains.names((onset, key))

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


def _discard(index: dict[Any, set[str]], domain: Any, key: str) -> None:
    keys = index.get(domain)
    if keys is not None:
        keys.discard(key)
        if not keys:
            del index[domain]


def _insort(items: list[tuple[datetime, str]], item: tuple[datetime, str]) -> None:
    index = bisect.bisect_left(items, item)
    if index == len(items) or items[index] != item:
        items.insert(index, item)


def _remove(items: list[tuple[datetime, str]] | None, item: tuple[datetime, str]) -> None:
    if items is not None:
        index = bisect.bisect_left(items, item)
        if index < len(items) and items[index] == item:
            del items[index]


Item = tuple[datetime, str]


class Chains:
    """(time, key) items in time order, cut into chains where consecutive times are more than `gap`
    apart (a rack's run of arrivals, a zone's burst of onsets), kept up to date per insert / remove:
    an item starts a chain exactly when the item before it is more than `gap` earlier, so an insert
    or a remove changes that only for itself and the item after it. Per chain: its first item
    (`starts`, sorted) and its keys sorted by name. A query costs O(log n); an arrival O(log n) plus
    moving list memory, and O(chain) only when it joins two chains or its removal splits one."""

    __slots__ = ("_names", "_tuples", "gap", "items", "starts")

    def __init__(self, gap: timedelta, items: Iterable[Item] = ()) -> None:
        self.gap = gap
        self.items: list[Item] = sorted(items)
        self.starts: list[Item] = []
        self._names: dict[Item, list[str]] = {}  # chain start -> the chain's keys, sorted
        self._tuples: dict[Item, tuple[str, ...]] = {}  # chain start -> `_names` as a tuple (cache)
        previous: Item | None = None
        for item in self.items:
            if previous is None or item[0] - previous[0] > gap:
                self.starts.append(item)
                self._names[item] = [item[1]]
            else:
                self._names[self.starts[-1]].append(item[1])
            previous = item
        for names in self._names.values():
            names.sort()

    def _start_of(self, item: Item) -> Item:
        return self.starts[bisect.bisect_right(self.starts, item) - 1]

    def _end(self, start: Item) -> int:
        """The index after the last item of the chain starting at `start`."""
        following = bisect.bisect_right(self.starts, start)
        return (
            bisect.bisect_left(self.items, self.starts[following]) if following < len(self.starts) else len(self.items)
        )

    def _changed(self, start: Item) -> None:
        self._tuples.pop(start, None)

    def _find(self, item: Item) -> int | None:
        index = bisect.bisect_left(self.items, item)
        return index if index < len(self.items) and self.items[index] == item else None

    def run(self, item: Item) -> tuple[int, datetime] | None:
        """(size, last time) of the chain holding `item`; None when it is not held."""
        if self._find(item) is None:
            return None
        start = self._start_of(item)
        return len(self._names[start]), self.items[self._end(start) - 1][0]

    def names(self, item: Item) -> tuple[str, ...]:
        """The keys of the chain holding `item`, sorted; empty when it is not held."""
        if self._find(item) is None:
            return ()
        start = self._start_of(item)
        out = self._tuples.get(start)
        if out is None:
            out = self._tuples[start] = tuple(self._names[start])
        return out

    def insert(self, item: Item) -> None:
        index = bisect.bisect_left(self.items, item)
        if index < len(self.items) and self.items[index] == item:
            return
        before = self.items[index - 1] if index > 0 else None
        after = self.items[index] if index < len(self.items) else None
        after_started = after is not None and (before is None or after[0] - before[0] > self.gap)
        after_joins = after is not None and after[0] - item[0] <= self.gap
        self.items.insert(index, item)
        if before is not None and item[0] - before[0] <= self.gap:
            start = self._start_of(before)
            bisect.insort(self._names[start], item[1])
            self._changed(start)
            if after is not None and after_started and after_joins:  # the item bridges two chains
                self._merge(start, after)
            return
        bisect.insort(self.starts, item)
        if after is not None and after_joins:  # `after` started a chain (its gap to `before` is wider)
            names = self._names.pop(after)
            self._changed(after)
            self.starts.pop(bisect.bisect_left(self.starts, after))
            bisect.insort(names, item[1])
            self._names[item] = names
        else:
            self._names[item] = [item[1]]

    def remove(self, item: Item) -> None:
        index = self._find(item)
        if index is None:
            return
        before = self.items[index - 1] if index > 0 else None
        after = self.items[index + 1] if index + 1 < len(self.items) else None
        after_in_chain = after is not None and after[0] - item[0] <= self.gap
        del self.items[index]
        if before is None or item[0] - before[0] > self.gap:  # the item started its chain
            names = self._names.pop(item)
            self._changed(item)
            self.starts.pop(bisect.bisect_left(self.starts, item))
            names.pop(bisect.bisect_left(names, item[1]))
            if after is not None and after_in_chain:  # `after` starts it now (`before` is further away)
                bisect.insort(self.starts, after)
                self._names[after] = names
            return
        start = self._start_of(before)
        names = self._names[start]
        names.pop(bisect.bisect_left(names, item[1]))
        self._changed(start)
        if after is not None and after_in_chain and after[0] - before[0] > self.gap:  # it splits before `after`
            first = bisect.bisect_left(self.items, start)
            self._names[after] = sorted(key for _, key in self.items[index : self._end(start)])
            self._names[start] = sorted(key for _, key in self.items[first:index])
            bisect.insort(self.starts, after)

    def _merge(self, start: Item, other: Item) -> None:
        """The chain starting at `other` joins the one starting at `start` (before it)."""
        names = self._names.pop(other)
        self._changed(other)
        self.starts.pop(bisect.bisect_left(self.starts, other))
        self._names[start] = list(heapq.merge(self._names[start], names))
        self._changed(start)
