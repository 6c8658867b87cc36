"""The detection rules: probes, cloud events and remediation records in, `Anomaly` (firing / resolved)
out. Pure and synchronous: the caller passes the clock (`now`, float seconds since the epoch, UTC) and
drains `Detector.outbox`; nothing here awaits or talks to NATS, so replay and tests drive it directly.

Guarantees: a (node, kind, subject) fires once and resolves once per fault episode (hysteresis: a
fire threshold, a lower clear threshold, and consecutive-probe counts for both); `fault_onset` is the
first bad observation; message ids are deterministic from (anomaly_key, status, fault_onset) so a
re-emission after a crash is deduplicated by the stream. Conditions never go stale: a measurement
that disappears from the agent's probes counts as clear, and event-like anomalies (reboot, kernel
fault, flapping) resolve after a quiet period.
"""

from __future__ import annotations

from collections import deque
from datetime import UTC, datetime
from typing import Final

from pydantic import BaseModel, Field

from nodeheal.detector.fastpath import FastProbe
from nodeheal.detector.kernel import classify_lines
from nodeheal.detector.state import (
    KUBELET_BIT,
    PING_MASK,
    REACH_BITS,
    SERVICE_MASK,
    CloudEventState,
    Condition,
    NodeState,
)
from nodeheal.schemas import health
from nodeheal.schemas.anomaly import Anomaly, Evidence
from nodeheal.schemas.audit import RemediationRecord
from nodeheal.schemas.cloud import CloudSystemEvent
from nodeheal.schemas.ids import deterministic_id

SEP: Final = "\x1f"
MAINTENANCE_ACTIONS: Final = frozenset({"reboot", "redeploy", "stop"})
ACTIVE_PHASES: Final = frozenset({"pending_approval", "scheduled", "in_progress"})
DISRUPTIVE_REMEDIATIONS: Final = frozenset({"reboot", "redeploy", "accept_cloud_event", "replace"})
SILENCE_KINDS: Final = frozenset({"node_down", "node_hang", "service_down"})
# Kinds measured on every agent probe: when the measurement disappears, it counts as clear.
MEASURED_KINDS: Final = frozenset(
    {"high_load", "disk_full", "inode_exhaustion", "readonly_fs", "fd_exhaustion", "service_down", "node_not_ready"}
)
# Measured on full agent probes only: a heartbeat (`full=False`) leaves them as the last full probe judged them.
FULL_ONLY_KINDS: Final = frozenset({"disk_full", "inode_exhaustion", "readonly_fs", "service_down", "node_not_ready"})
AGENT_SERVICE: Final = "nodeheal-agent"
AGENT_KEY: Final = "service_down" + SEP + AGENT_SERVICE
MAX_PROBE_IDS = 5
MAX_KERNEL_EVIDENCE_LINES = 20
MAX_PARKED_NODES = 100_000


class RuleConfig(BaseModel):
    """Thresholds, windows and hysteresis. Every default is documented in docs/detector.md."""

    probe_interval_s: float = Field(default=10.0, gt=0, description="the agent's probe interval")
    down_after_missed: float = Field(
        default=2.5, gt=0, description="silence of this many probe intervals makes a node down / hung"
    )
    warmup_s: float | None = Field(
        default=None, ge=0, description="after start, no silence anomaly (default: the silence timeout)"
    )
    max_cadence_factor: float = Field(
        default=4.0,
        ge=1,
        description=(
            "silence is judged against the agents' measured probe interval (the median gap between a node's"
            " agent probes over the fleet) when that is longer than probe_interval_s, up to this many times it"
        ),
    )
    prober_interval_s: float = Field(
        default=10.0,
        gt=0,
        description=(
            "the active prober's round (its NODEHEAL_PROBER_INTERVAL_S): a silence waits up to this long (x"
            " PROBER_ROUND_SLACK) for a prober verdict taken after it began, and a verdict counts as fresh as long"
        ),
    )
    high_load_ratio: float = Field(default=health.HIGH_LOAD_RATIO, gt=0, description="load1 / cpu_count that is bad")
    high_load_clear_ratio: float = Field(default=health.HIGH_LOAD_CLEAR_RATIO, gt=0)
    high_load_probes: int = Field(default=2, ge=1, description="consecutive bad probes before high_load fires")
    disk_full_pct: float = Field(default=health.DISK_FULL_PCT, gt=0, le=100)
    disk_clear_pct: float = Field(default=health.DISK_CLEAR_PCT, gt=0, le=100)
    inode_full_pct: float = Field(default=health.INODE_FULL_PCT, gt=0, le=100)
    inode_clear_pct: float = Field(default=health.INODE_CLEAR_PCT, gt=0, le=100)
    fd_ratio: float = Field(default=health.FD_RATIO, gt=0, le=1)
    fd_clear_ratio: float = Field(default=health.FD_CLEAR_RATIO, gt=0, le=1)
    threshold_probes: int = Field(default=1, ge=1, description="consecutive bad probes for disk/inode/fd/ro/ready")
    clear_probes: int = Field(default=2, ge=1, description="consecutive clear probes before a threshold resolves")
    readonly_ignore_mounts: tuple[str, ...] = Field(
        default=health.READONLY_IGNORE_MOUNTS, description="read-only by design"
    )
    services: tuple[str, ...] = Field(
        default=health.WATCHED_SERVICES,
        description="watched services (empty: every service the probe reports)",
    )
    service_down_probes: int = Field(default=1, ge=1)
    not_ready_probes: int = Field(default=1, ge=1)
    event_hold_s: float = Field(
        default=120.0, gt=0, description="unexpected_reboot / kernel_fault resolve after this long without recurrence"
    )
    expected_grace_s: float = Field(
        default=900.0, gt=0, description="how long a cloud event or our own reboot explains downtime / a new boot id"
    )
    flap_count: int = Field(default=3, ge=2, description="fire/resolve cycles of one anomaly that make it flapping")
    flap_window_s: float = Field(default=3600.0, gt=0)
    silence_recheck_s: float = Field(default=5.0, gt=0)
    full_overdue_s: float = Field(
        default=90.0,
        gt=0,
        description=(
            "a node whose agent sends heartbeats but no full probe for this long (scaled like the silence"
            " timeout when the fleet's cadence is slower than probe_interval_s) has a degraded agent:"
            " service_down nodeheal-agent. Keep it ≥ 3 × the agents' full_every × probe interval (90 s for 6 × 5 s)"
        ),
    )

    @property
    def down_timeout_s(self) -> float:
        return self.probe_interval_s * self.down_after_missed


PROBER_ROUND_SLACK: Final = 1.25
"""A prober verdict is due `prober_interval_s` after the last one; this factor is the room for a round's own
duration (its checks time out after 2 s) and the prober's jitter."""

CADENCE_SAMPLES: Final = 2048
CADENCE_EVERY: Final = 256
CADENCE_MIN_SAMPLES: Final = 32

FEED_PAUSE_ARRIVALS: Final = 20.0
"""A pause in what the probe stream stored counts as the stream's outage (`Detector.stream_stored`) only when it is
this many times the mean gap between two stored messages of the last cadence: a fleet whose agents probe at their
own phases leaves such a gap with a chance of e^-20; a fleet that mostly died leaves its survivors' gaps, and the
rate follows it within one cadence."""
FEED_PAUSE_CADENCE_SHARE: Final = 0.25
"""... and at least this share of the cadence: a large fleet stores thousands of probes a second, and a pause of a
few milliseconds (a disk flush) is no outage. An outage shorter than half a cadence silences nobody (an agent
sends its refused probe with its next one, one cadence later, within the 2.5 cadences of the timeout)."""


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, tz=UTC).isoformat()


def _dt(ts: float) -> datetime:
    return datetime.fromtimestamp(ts, tz=UTC)


def anomaly_key(cluster: str, node: str, kind: str, subject: str | None) -> str:
    return f"{cluster}/{node}/{kind}/{subject or '-'}"


def anomaly_msg_id(key: str, status: str, fault_onset: datetime) -> str:
    """The Nats-Msg-Id of an anomaly: the same episode always gets the same id."""
    return deterministic_id(key, status, fault_onset.isoformat(), prefix="anomaly-")


class Counters:
    __slots__ = ("duplicates", "explained_reboots", "feed_pauses", "fired", "probes", "resolved")

    def __init__(self) -> None:
        self.probes = 0
        self.duplicates = 0
        self.fired = 0
        self.resolved = 0
        self.explained_reboots = 0
        self.feed_pauses = 0  # pauses of the probe stream taken for its outage (`Detector.stream_stored`)


class Detector:
    """All nodes of one replica. Call `observe_*` and `tick`, then take `outbox`."""

    def __init__(self, *, config: RuleConfig, started_at: float, adopt_unknown: bool = True) -> None:
        self.config = config
        self.started_at = started_at
        self.adopt_unknown = adopt_unknown
        self.nodes: dict[str, NodeState] = {}
        self.outbox: list[Anomaly] = []
        self.counters = Counters()
        self.last_input = 0.0
        # How far behind its stream this replica reads (seconds between the server storing the newest probe
        # read and reading it). Silence is judged net of it: a replica that reads each node's probes a
        # minute late must not take that minute for the node's silence (a whole fleet "down" at once).
        self.feed_lag = 0.0
        self._seeded_input = 0.0  # the newest stored probe a rebuild read (0: none)
        self._wheel: dict[int, list[NodeState]] = {}
        self._wheel_cursor = int(started_at)
        self.tick_behind = False  # the last tick stopped at its limit: nodes are still due
        self._pending_cloud: dict[str, list[tuple[CloudSystemEvent, float | None]]] = {}  # (event, `at`)
        # our own disruptive remediation of a node not known yet (no probe of it read so far: a what-if sandbox that
        # starts at its window, a replica whose node has not probed since its start): the node's expected grace
        # (`remediation_until`), given to it when it becomes known
        self._pending_remediation: dict[str, float] = {}
        # nodes the inventory says left the fleet (a deleted machine): not tracked, so their silence raises
        # nothing; a probe still in the backlog does not bring them back, a new inventory record does
        self.departed: dict[str, None] = {}
        # nodes known only from an anomaly the restart replayed (`restore`), not from a probe: kept apart from `nodes`
        # (no silence is judged for them) until their first probe makes them nodes; their event-like anomalies still
        # resolve when their hold ends. A node that never probes again (decommissioned, or a name that is no node)
        # is never found down
        self.restored_only: dict[str, NodeState] = {}
        # the firing ids of the episodes the restart's replay of ANOMALIES saw resolved (bounded, oldest first): the
        # probes that raised them may be judged again (delivered again after a kill before their ack), and one
        # judged after ANOMALIES' duplicate window would store the episode a second time. Never fired again
        self.replayed_episodes: dict[str, None] = {}
        self._watched = frozenset(config.services)
        self._ro_ignore = frozenset(config.readonly_ignore_mounts)
        self._down_timeout = config.down_timeout_s
        # the agents' real probe interval: the median of recent gaps between two agent probes of a node (by the
        # probes' own timestamps); silence is judged against it when the fleet probes slower than configured
        self.cadence_s = config.probe_interval_s
        self._full_overdue = config.full_overdue_s
        self._gaps: list[float] = []
        self._gap_next = 0
        self._gaps_seen = 0
        self._warmup_until = started_at + (config.warmup_s if config.warmup_s is not None else self._down_timeout)
        self.feed_away = False  # our own connection to NATS is down: no silence is judged (`lost_feed`)
        # what the probe stream stored (`stream_stored`): the newest stored time read, and the last cadence's chunks
        # (stored time of each chunk's newest message, its count) for the stream's rate
        self._stored_last = 0.0
        self._stored_recent: deque[tuple[float, int]] = deque()
        self._stored_in_recent = 0
        # the stream's outages taken from such pauses, (start, end) on our clock: no node's silence counts them
        self._pauses: deque[tuple[float, float]] = deque()

    def lost_feed(self) -> None:
        """Our connection to NATS is down: nothing the fleet sends reaches us, so no silence is judged."""
        self.feed_away = True

    def feed_back(self, *, now: float) -> None:
        """Our connection is back (a reconnect, a NATS server restart): each agent's probes come back only once
        that agent has reconnected too, each at its own moment. No silence is judged until every node has had a
        full silence timeout from now. Before, a server restart of 20 s made the nodes whose agents reconnected
        a few seconds after the others `node_down` / `agent_down` (the input guard judged again at the first
        probe after the outage)."""
        self.feed_away = False
        self._warmup_until = max(self._warmup_until, now + self._down_timeout)

    @property
    def feed_pause_s(self) -> float:
        """The shortest pause in what the probe stream stored that `stream_stored` takes for its outage: 20 of the
        mean gaps between two messages it stored in the last cadence, at least a quarter of the cadence."""
        window = self.cadence_s
        rate = self._stored_in_recent / window
        floor = self.cadence_s * FEED_PAUSE_CADENCE_SHARE
        return max(floor, FEED_PAUSE_ARRIVALS / rate) if rate > 0 else float("inf")

    def stream_stored(self, *, first: float, last: float, count: int, now: float, widest: float = 0.0) -> float | None:
        """A chunk of the probe stream read in stream order: `first` and `last` the times the server stored its
        oldest and newest message, `widest` the widest gap between two of its messages when the caller measured it
        (a chunk spanning more than `feed_pause_s`). A pause before or inside it of `feed_pause_s` or more means
        the stream stored nothing from anyone for that long: its leader lost and another being elected (a server
        of a cluster killed), not the fleet gone quiet — the other agents' probes resume the moment it stores
        again, while each agent whose probe it refused sends that one with its next, an interval later. The pause
        then counts in no node's silence (`silence_credit`): a healthy node's gap, less the pause, is at most two
        intervals, inside the 2.5 of the timeout; a node dark since before it is judged as if the stream had never
        paused. Before, the nodes whose probes fell into a 6.5 s election were `node_down` a moment, read as rack
        and zone partitions (a `--nats-cluster 3 --chaos` demo). Returns the pause when it was taken for the
        stream's outage, else None. The first chunk read only sets where the stream stands."""
        pause = 0.0
        if self._stored_last:
            pause = max(first - self._stored_last, widest)
        outage = pause >= self.feed_pause_s
        recent = self._stored_recent
        recent.append((last, count))
        self._stored_in_recent += count
        while recent and recent[0][0] < last - self.cadence_s:
            self._stored_in_recent -= recent.popleft()[1]
        self._stored_last = max(self._stored_last, last)
        if not outage:
            return None
        self.counters.feed_pauses += 1
        self._pauses.append((now - pause, now))
        return pause

    def _forget_pauses(self, now: float) -> None:
        """A pause that ended two timeouts ago can no longer decide anything (a node silent since before it is past
        its timeout with or without it): dropped, and once none is left the sweep computes no credit at all."""
        pauses = self._pauses
        while pauses and pauses[0][1] < now - 2 * self._down_timeout - self.feed_lag:
            pauses.popleft()

    def silence_credit(self, since: float, now: float) -> float:
        """How much of the time from `since` to `now` the probe stream was paused (`stream_stored`): not a silence."""
        credit = 0.0
        for start, end in self._pauses:
            overlap = min(end, now) - max(start, since)
            if overlap > 0:
                credit += overlap
        return credit

    # ------------------------------------------------------------------ nodes and the timer wheel

    def _node(self, cluster: str, node: str, now: float) -> NodeState:
        key = cluster + "/" + node
        state = self.nodes.get(key)
        if state is None:
            state = self.restored_only.pop(key, None) if self.restored_only else None
            if state is None:
                state = NodeState(key=key, cluster=cluster, node=node, now=now)
            else:  # known from a replayed anomaly, now heard: its silence counts from here
                state.last_agent = now
            self.nodes[key] = state
            self._schedule(state, now + self._down_timeout)
            state.remediation_until = self._pending_remediation.pop(key, 0.0)
            pending = self._pending_cloud.pop(key, None)
            if pending:
                for event, at in pending:
                    self._apply_cloud(state, event, now, at=at)
        return state

    def forget(self, cluster: str, node: str) -> bool:
        """The inventory says the node left the fleet: drop its state (its silence is no anomaly: the
        machine is gone) and ignore its probes until the inventory lists it again (`rejoin`). An anomaly
        already firing stays as it is. True when the node was tracked."""
        key = cluster + "/" + node
        if key not in self.departed and len(self.departed) >= MAX_PARKED_NODES:
            self.departed.pop(next(iter(self.departed)))
        self.departed[key] = None
        self._pending_cloud.pop(key, None)
        self._pending_remediation.pop(key, None)
        self.restored_only.pop(key, None)
        return self.nodes.pop(key, None) is not None  # its timer-wheel entries are skipped (not in `nodes`)

    def rejoin(self, cluster: str, node: str) -> None:
        """The inventory lists the node (again): its probes count from now on."""
        if self.departed:
            self.departed.pop(cluster + "/" + node, None)

    def _schedule(self, node: NodeState, due: float) -> None:
        # Lazy: a node is in the wheel at most once per earlier due time; when it pops, the sweep
        # recomputes the next due time. A node that keeps probing costs one reschedule per timeout.
        if node.due and node.due <= due:
            return
        node.due = due
        self._wheel.setdefault(int(due) + 1, []).append(node)

    # ------------------------------------------------------------------ probes (the hot path)

    def observe_probe(self, p: FastProbe, *, now: float) -> None:
        self.counters.probes += 1
        self.last_input = now
        node = self.nodes.get(p.cluster + "/" + p.node)
        if node is None:
            if self.departed and p.cluster + "/" + p.node in self.departed:
                return
            node = self._node(p.cluster, p.node, now)
        # The agent's own probe carries one `agent` reachability entry (itself): that is not the
        # prober's verdict from outside and must not overwrite it.
        if p.reachability and p.source != "agent":
            self._observe_reachability(node, p, now)
        if p.source != "prober":
            if p.time is not None and node.last_agent_t and p.time.timestamp() <= node.last_agent_t:
                # An agent probe not newer than the node's last one: the same probe again (an agent re-sends a
                # probe whose PubAck it did not get, and probes carry no `Nats-Msg-Id`, so the stream may hold
                # both copies) or an older one delivered again (after `ack_wait`, `_unfinished`'s leftovers).
                # Judged as new it would be one more bad or clear probe, resolve a silence the node is still
                # in, flip the boot id back (a reboot that never happened) or reopen an outage under a new
                # onset (a second episode downstream). It counts once, as a duplicate.
                self.counters.duplicates += 1
                return
            self._observe_agent(node, p, now)

    def _note_gap(self, gap: float) -> None:
        """One gap between two agent probes of a node. Every `CADENCE_EVERY` gaps
        the fleet's cadence is the median of the last `CADENCE_SAMPLES` (robust to a rack coming back
        after a partition), and the silence timeout follows it when it is longer than configured: a
        fleet whose agents all probe every 20 s is not "down" after 2.5 × 5 s."""
        gaps = self._gaps
        if len(gaps) < CADENCE_SAMPLES:
            gaps.append(gap)
        else:
            gaps[self._gap_next] = gap
            self._gap_next = (self._gap_next + 1) % CADENCE_SAMPLES
        self._gaps_seen += 1
        # every `CADENCE_EVERY` gaps; a small fleet (or the first seconds of a large one) more often
        if len(gaps) < CADENCE_MIN_SAMPLES or self._gaps_seen % min(CADENCE_EVERY, len(gaps) // 4):
            return
        ordered = sorted(gaps)
        cfg = self.config
        median = ordered[len(ordered) // 2]
        self.cadence_s = min(max(median, cfg.probe_interval_s), cfg.probe_interval_s * cfg.max_cadence_factor)
        self._down_timeout = cfg.down_after_missed * self.cadence_s
        self._full_overdue = cfg.full_overdue_s * self.cadence_s / cfg.probe_interval_s

    def _observe_reachability(self, node: NodeState, p: FastProbe, now: float) -> None:
        ok = seen = 0
        for r in p.reachability:
            bit = REACH_BITS[r.check]
            seen |= bit
            if r.ok:
                ok |= bit
        node.reach_ok = ok
        node.reach_seen = seen
        node.last_prober = now
        # a silence already judged is judged again by the next sweep (within a second), not in the middle of the
        # batch: a partitioned rack's heal brings the prober's verdict and the agent's return in one batch, and
        # judging between them turned node_down into a node_hang resolved the same millisecond. One the sweep is
        # waiting to judge (for this very verdict: `_classify_silence`) is judged now.
        if node.silence is not None:
            self._schedule(node, now)
        elif (
            not self.feed_away
            and now >= self._warmup_until
            and now
            >= node.last_agent
            + self._down_timeout
            + self.feed_lag
            + (self.silence_credit(node.last_agent, now) if self._pauses else 0.0)
        ):
            self._classify_silence(node, now, probe_id=p.id)

    def _observe_agent(self, node: NodeState, p: FastProbe, now: float) -> None:
        cfg = self.config
        node.last_agent = now
        node.agent_seq += 1
        node.last_probe_id = p.id
        t = p.time.timestamp() if p.time is not None else now
        if node.silence is not None:
            self._resolve_key(node, node.silence, now)
            node.silence = None
        # every gap counts, also one across a silence: when the whole fleet's cadence jumped past the
        # timeout, every node is "silent" at each probe and only these gaps can teach the new cadence (a
        # node really back from the dead is one outlier among the 2,048 the median is taken over)
        if node.last_agent_t and t > node.last_agent_t:
            self._note_gap(t - node.last_agent_t)
        node.last_agent_t = t
        conds = node.conds

        boot_id = p.boot_id
        if boot_id is not None:
            if node.boot_id is not None and boot_id != node.boot_id:
                self._reboot(node, old=node.boot_id, new=boot_id, t=t, now=now, probe_id=p.id)
            node.boot_id = boot_id

        load = p.load
        if load is not None and p.cpu_count:
            ratio = load.load1 / p.cpu_count
            if ratio >= cfg.high_load_ratio or (conds and "high_load" + SEP in conds):
                self._level(
                    node,
                    "high_load",
                    None,
                    bad=ratio >= cfg.high_load_ratio,
                    clear=ratio < cfg.high_load_clear_ratio,
                    value=round(ratio, 3),
                    threshold=cfg.high_load_ratio,
                    t=t,
                    now=now,
                    probe_id=p.id,
                    fire_after=cfg.high_load_probes,
                    severity="minor",
                )

        for fs in p.filesystems:
            used = fs.used_pct
            if used >= cfg.disk_full_pct or (conds and "disk_full" + SEP + fs.mount in conds):
                self._level(
                    node,
                    "disk_full",
                    fs.mount,
                    bad=used >= cfg.disk_full_pct,
                    clear=used < cfg.disk_clear_pct,
                    value=used,
                    threshold=cfg.disk_full_pct,
                    t=t,
                    now=now,
                    probe_id=p.id,
                    fire_after=cfg.threshold_probes,
                    severity="major",
                )
            inodes = fs.inodes_used_pct
            if inodes >= cfg.inode_full_pct or (conds and "inode_exhaustion" + SEP + fs.mount in conds):
                self._level(
                    node,
                    "inode_exhaustion",
                    fs.mount,
                    bad=inodes >= cfg.inode_full_pct,
                    clear=inodes < cfg.inode_clear_pct,
                    value=inodes,
                    threshold=cfg.inode_full_pct,
                    t=t,
                    now=now,
                    probe_id=p.id,
                    fire_after=cfg.threshold_probes,
                    severity="major",
                )
            if (fs.readonly and fs.mount not in self._ro_ignore) or (conds and "readonly_fs" + SEP + fs.mount in conds):
                ro = fs.readonly and fs.mount not in self._ro_ignore
                self._level(
                    node,
                    "readonly_fs",
                    fs.mount,
                    bad=ro,
                    clear=not ro,
                    value=fs.readonly,
                    threshold=None,
                    t=t,
                    now=now,
                    probe_id=p.id,
                    fire_after=cfg.threshold_probes,
                    severity="critical",
                )

        fh = p.file_handles
        if fh is not None:
            fd = fh.allocated / fh.max
            if fd >= cfg.fd_ratio or (conds and "fd_exhaustion" + SEP in conds):
                self._level(
                    node,
                    "fd_exhaustion",
                    None,
                    bad=fd >= cfg.fd_ratio,
                    clear=fd < cfg.fd_clear_ratio,
                    value=round(fd, 4),
                    threshold=cfg.fd_ratio,
                    t=t,
                    now=now,
                    probe_id=p.id,
                    fire_after=cfg.threshold_probes,
                    severity="major",
                )

        watched = self._watched
        for svc in p.services:
            down = health.service_down(svc.state, svc.healthy)
            if (down or (conds and "service_down" + SEP + svc.name in conds)) and (not watched or svc.name in watched):
                self._level(
                    node,
                    "service_down",
                    svc.name,
                    bad=down,
                    clear=not down,
                    value=svc.state if svc.healthy is not False else f"{svc.state} (health check failed)",
                    threshold=None,
                    t=t,
                    now=now,
                    probe_id=p.id,
                    fire_after=cfg.service_down_probes,
                    severity="major",
                )

        if p.kernel_log:
            self._kernel(node, list(p.kernel_log), t=t, now=now, probe_id=p.id)

        ready = p.ready
        if (ready is False or (conds and "node_not_ready" + SEP in conds)) and p.full:  # not in heartbeats
            self._level(
                node,
                "node_not_ready",
                None,
                bad=ready is False,
                clear=ready is True,
                value=ready,
                threshold=None,
                t=t,
                now=now,
                probe_id=p.id,
                fire_after=cfg.not_ready_probes,
                severity="major",
            )

        if p.full:
            node.last_full_t = t
            if node.conds and AGENT_KEY in node.conds and node.silence != AGENT_KEY:
                self._resolve_key(node, AGENT_KEY, now)  # the agent's full probes came back
        elif not node.last_full_t:
            node.last_full_t = t  # first sighting: its full probe is due from here
        elif t - node.last_full_t > self._full_overdue:
            self._full_overdue_probe(node, t=t, now=now, probe_id=p.id)

        if node.conds:
            self._after_agent_probe(node, now, full=p.full)

    def _full_overdue_probe(self, node: NodeState, *, t: float, now: float, probe_id: str) -> None:
        """Heartbeats but no full probe for `full_overdue_s`: the agent runs yet cannot (or does not) collect
        its full probe, so services, disks and file systems go unjudged. That is our agent degraded:
        `service_down nodeheal-agent` (the diagnoser's agent_down: restart the agent's pod)."""
        conds = node.conds
        if conds and AGENT_KEY in conds:
            conds[AGENT_KEY].stamp = node.agent_seq
            return
        age = round(t - node.last_full_t, 3)
        cond = Condition(kind="service_down", subject=AGENT_SERVICE, onset=t, severity="major")
        cond.value = f"no full probe for {age:g} s"
        cond.threshold = round(self._full_overdue, 3)
        cond.detail = {"full_probe_age_s": age, "heartbeats": True}
        cond.stamp = node.agent_seq
        if probe_id:
            cond.probe_ids.append(probe_id)
        if conds is None:
            conds = node.conds = {}
        conds[AGENT_KEY] = cond
        self._fire(node, cond, now)

    def _after_agent_probe(self, node: NodeState, now: float, *, full: bool = True) -> None:
        """Measurements that vanished count as clear (no stale condition); cloud events may resolve. A
        heartbeat carries no full-only measurement: those conditions stand as the last full probe left them."""
        assert node.conds is not None
        for key, cond in list(node.conds.items()):
            if (
                cond.kind in MEASURED_KINDS
                and cond.stamp != node.agent_seq
                and key != node.silence
                and (full or cond.kind not in FULL_ONLY_KINDS)
            ):
                if cond.firing:
                    cond.good += 1
                    cond.bad = 0
                    if cond.good >= self.config.clear_probes:
                        self._resolve_key(node, key, now)
                else:
                    del node.conds[key]
            elif cond.kind == "cloud_maintenance" and cond.firing:
                self._maybe_resolve_cloud(node, key, cond, now)
        if not node.conds:
            node.conds = None

    # ------------------------------------------------------------------ condition helpers

    def _level(
        self,
        node: NodeState,
        kind: str,
        subject: str | None,
        *,
        bad: bool,
        clear: bool,
        value: float | str | bool | None,
        threshold: float | None,
        t: float,
        now: float,
        probe_id: str,
        fire_after: int,
        severity: str,
    ) -> None:
        key = kind + SEP + (subject or "")
        conds = node.conds
        cond = conds.get(key) if conds else None
        if bad:
            if cond is None:
                cond = Condition(kind=kind, subject=subject, onset=t, severity=severity)
                if conds is None:
                    conds = node.conds = {}
                conds[key] = cond
            cond.stamp = node.agent_seq
            cond.good = 0
            cond.bad += 1
            if not cond.firing:
                cond.value = value
                cond.threshold = threshold
                if probe_id and len(cond.probe_ids) < MAX_PROBE_IDS:
                    cond.probe_ids.append(probe_id)
                if cond.bad >= fire_after:
                    cond.expected = kind == "node_not_ready" and self._expected_downtime(node, now)
                    self._fire(node, cond, now)
            return
        if cond is None:
            return
        cond.stamp = node.agent_seq
        if cond.firing:
            if clear:
                cond.good += 1
                cond.bad = 0
                if cond.good >= self.config.clear_probes:
                    self._resolve_key(node, key, now)
            else:
                cond.good = 0
        else:
            assert conds is not None
            del conds[key]

    def _event(
        self,
        node: NodeState,
        kind: str,
        subject: str | None,
        *,
        t: float,
        now: float,
        probe_id: str,
        value: float | str | bool | None,
        hold_s: float,
        severity: str,
        detail: dict[str, object] | None = None,
    ) -> None:
        """An event-like anomaly: fires at once, resolves after `hold_s` without recurrence."""
        key = kind + SEP + (subject or "")
        conds = node.conds
        if conds is None:
            conds = node.conds = {}
        cond = conds.get(key)
        if cond is not None and cond.firing:
            cond.hold_until = now + hold_s
            self._schedule(node, cond.hold_until)
            return
        cond = Condition(kind=kind, subject=subject, onset=t, severity=severity)
        cond.value = value
        cond.detail = detail
        if probe_id:
            cond.probe_ids.append(probe_id)
        cond.hold_until = now + hold_s
        conds[key] = cond
        self._fire(node, cond, now)
        self._schedule(node, cond.hold_until)

    def _fire(self, node: NodeState, cond: Condition, now: float) -> None:
        if self.replayed_episodes and (
            anomaly_msg_id(anomaly_key(node.cluster, node.node, cond.kind, cond.subject), "firing", _dt(cond.onset))
            in self.replayed_episodes
        ):
            # an episode fired and resolved before the restart, judged again from its probes: not raised twice (the
            # condition stays not firing, so it ends without a resolution)
            self.counters.duplicates += 1
            return
        cond.firing = True
        self.counters.fired += 1
        self.outbox.append(self._anomaly(node, cond, status="firing", now=now))

    def _resolve_key(self, node: NodeState, key: str, now: float) -> None:
        conds = node.conds
        if not conds:
            return
        cond = conds.pop(key, None)
        if not conds:
            node.conds = None
        if cond is None or not cond.firing:
            return
        self.counters.resolved += 1
        self.outbox.append(self._anomaly(node, cond, status="resolved", now=now))
        if cond.kind != "flapping":
            self._record_flap(node, key, cond, now)

    def _record_flap(self, node: NodeState, key: str, cond: Condition, now: float) -> None:
        cfg = self.config
        if node.flaps is None:
            node.flaps = {}
        history = node.flaps.setdefault(key, [])
        history.append(now)
        horizon = now - cfg.flap_window_s
        while history and history[0] < horizon:
            history.pop(0)
        if len(history) >= cfg.flap_count:
            subject = cond.kind + (":" + cond.subject if cond.subject else "")
            self._event(
                node,
                "flapping",
                subject,
                t=history[0],
                now=now,
                probe_id="",
                value=len(history),
                hold_s=cfg.flap_window_s,
                severity="major",
                detail={"cycles_in_window": len(history), "window_s": cfg.flap_window_s},
            )

    def _anomaly(self, node: NodeState, cond: Condition, *, status: str, now: float) -> Anomaly:
        key = anomaly_key(node.cluster, node.node, cond.kind, cond.subject)
        onset = _dt(cond.onset)
        detected = _dt(now)
        evidence = Evidence(
            kind="kernel_log" if cond.kind == "kernel_fault" else "probe",
            summary=self._summary(cond, status),
            value=cond.value,
            threshold=cond.threshold,
            ref=cond.probe_ids[-1] if cond.probe_ids else None,
            observed_at=onset,
            details=dict(cond.detail) if cond.detail else {},
        )
        msg_id = anomaly_msg_id(key, status, onset)
        return Anomaly(
            id=msg_id,
            time=detected,
            cluster=node.cluster,
            node=node.node,
            anomaly_key=key,
            kind=cond.kind,  # type: ignore[arg-type]
            status=status,  # type: ignore[arg-type]
            severity=cond.severity,  # type: ignore[arg-type]
            subject=cond.subject,
            fault_onset=onset,
            detected_at=detected,
            resolved_at=detected if status == "resolved" else None,
            expected=cond.expected,
            evidence=(evidence,),
            probe_ids=tuple(cond.probe_ids),
        )

    @staticmethod
    def _summary(cond: Condition, status: str) -> str:
        what = cond.kind + (f" ({cond.subject})" if cond.subject else "")
        if status == "resolved":
            return f"{what} cleared"
        if cond.threshold is not None:
            return f"{what}: {cond.value} >= {cond.threshold}"
        return f"{what}: {cond.value}"

    # ------------------------------------------------------------------ reboots and kernel lines

    def _reboot(self, node: NodeState, *, old: str, new: str, t: float, now: float, probe_id: str) -> None:
        if self._expected_downtime(node, now):
            self.counters.explained_reboots += 1
            return
        self._event(
            node,
            "unexpected_reboot",
            None,
            t=t,
            now=now,
            probe_id=probe_id,
            value=new,
            hold_s=self.config.event_hold_s,
            severity="major",
            detail={"previous_boot_id": old, "boot_id": new},
        )

    def _kernel(self, node: NodeState, lines: list[str], *, t: float, now: float, probe_id: str) -> None:
        for cls, matched in classify_lines(lines).items():
            self._event(
                node,
                "kernel_fault",
                cls,
                t=t,
                now=now,
                probe_id=probe_id,
                value=matched[0][:500],
                hold_s=self.config.event_hold_s,
                severity="major",
                detail={"lines": matched[:MAX_KERNEL_EVIDENCE_LINES], "matched_lines": len(matched)},
            )

    # ------------------------------------------------------------------ silence: down, hang, agent

    def _classify_silence(self, node: NodeState, now: float, *, probe_id: str = "") -> None:
        # The prober's verdict says what the silence is only when it was taken after the silence began (the
        # agent's first missed probe): one taken before shows a node that was fine then. When the prober
        # probes less often than the agents (its round 10 s, agents every 5 s: a node dark just after its
        # verdict is found silent before the next one), the first judgement waits for the next verdict, at
        # most one prober round; without a recent verdict (no prober, or it missed a round) it does not wait.
        prober_round = self.config.prober_interval_s * PROBER_ROUND_SLACK
        if (
            node.silence is None
            and node.last_prober < node.last_agent + self.cadence_s
            and now <= node.last_prober + prober_round + self.feed_lag
        ):
            return  # the sweep looks again (`silence_recheck_s`), the next verdict judges at once
        prober_fresh = now - node.last_prober <= max(self._down_timeout, prober_round) + self.feed_lag
        ok = node.reach_ok if prober_fresh else 0
        seen = node.reach_seen if prober_fresh else 0
        if ok & PING_MASK:
            # The kubelet's answer decides (docs/detector.md): it answering means the node's userspace
            # runs, so only our agent is gone. SSH is consulted only when the prober does not check the
            # kubelet (a filtered port 22 on a stock node must not turn an agent outage into a hang).
            decisive = KUBELET_BIT if seen & KUBELET_BIT else seen & SERVICE_MASK
            if decisive & ~ok:
                kind, subject = "node_hang", None
            else:
                kind, subject = "service_down", AGENT_SERVICE
        else:
            kind, subject = "node_down", None
        key = kind + SEP + (subject or "")
        if node.silence == key:
            return
        if node.silence is not None:
            self._resolve_key(node, node.silence, now)
        held = node.conds.get(key) if node.conds else None
        if held is not None and held.firing:
            # our agent was already reported degraded (full probe overdue): now it is silent, the same anomaly
            node.silence = key
            return
        cond = Condition(
            kind=kind,
            subject=subject,
            onset=node.last_agent + self.config.probe_interval_s,
            severity="critical" if kind != "service_down" else "major",
        )
        cond.expected = self._expected_downtime(node, now)
        silent_for = round(now - node.last_agent, 3)
        cond.value = silent_for
        cond.threshold = self._down_timeout
        cond.detail = {
            "agent_silent_s": silent_for,
            "prober_fresh": prober_fresh,
            "reachable": sorted(c for c, bit in REACH_BITS.items() if ok & bit),
            "unreachable": sorted(c for c, bit in REACH_BITS.items() if (seen & bit) and not ok & bit),
        }
        if node.last_probe_id:
            cond.probe_ids.append(node.last_probe_id)
        if probe_id:
            cond.probe_ids.append(probe_id)
        if node.conds is None:
            node.conds = {}
        node.conds[key] = cond
        node.silence = key
        self._fire(node, cond, now)

    # ------------------------------------------------------------------ the periodic sweep

    def tick(self, *, now: float, limit: int | None = None) -> int:
        """Run the timers that are due; returns how many nodes were looked at (O(due), not O(fleet)).

        With `limit`, at most that many nodes are looked at: the rest stay due (`tick_behind`) for the next
        call, so a silence storm of tens of thousands of nodes is swept in slices and the caller's event loop
        runs between them (its /healthz among others)."""
        target = int(now)
        looked = 0
        # When the whole input is silent, the problem is our feed, not the fleet: no silence anomaly. Silent means
        # nothing for the silence timeout, or for as long as the stream's pauses taken for its outage
        # (`feed_pause_s`): every node whose probe falls into an election of the stream's leader would otherwise be
        # judged in the middle of it, when nothing yet shows the pause for the stream's
        input_alive = now - self.last_input <= min(self._down_timeout, self.feed_pause_s)
        if self._pauses:
            self._forget_pauses(now)
        in_warmup = now < self._warmup_until
        self.tick_behind = False
        while self._wheel_cursor <= target:
            cursor = self._wheel_cursor
            bucket = self._wheel.pop(cursor, None)
            self._wheel_cursor += 1
            if not bucket:
                continue
            for i, node in enumerate(bucket):
                if node.due > now:
                    continue
                known = self.nodes.get(node.key) is node
                if not known and (not self.restored_only or self.restored_only.get(node.key) is not node):
                    continue
                if limit is not None and looked >= limit:
                    # the rest of this second's bucket waits for the next call, ahead of anything scheduled since
                    self._wheel[cursor] = bucket[i:] + self._wheel.get(cursor, [])
                    self._wheel_cursor = cursor
                    self.tick_behind = True
                    return looked
                looked += 1
                node.due = 0.0
                if known:
                    self._tick_node(node, now, check_silence=input_alive and not in_warmup and not self.feed_away)
                else:
                    self._tick_restored(node, now)
        return looked

    def _tick_node(self, node: NodeState, now: float, *, check_silence: bool) -> None:
        next_due = node.last_agent + self._down_timeout + self.feed_lag
        if self._pauses:  # the stream's outages are no node's silence
            next_due += self.silence_credit(node.last_agent, now)
        if node.silence is not None or now >= next_due:
            if check_silence:
                self._classify_silence(node, now)
            next_due = now + self.config.silence_recheck_s
            if node.silence is None and check_silence:  # waiting for a prober verdict: no longer than the round
                wait_until = node.last_prober + self.config.prober_interval_s * PROBER_ROUND_SLACK + self.feed_lag
                next_due = min(next_due, max(now, wait_until) + 0.001)
        if node.conds:
            for key, cond in list(node.conds.items()):
                if cond.hold_until:
                    if now >= cond.hold_until:
                        self._resolve_key(node, key, now)
                    else:
                        next_due = min(next_due, cond.hold_until)
        self._schedule(node, next_due)

    def _tick_restored(self, node: NodeState, now: float) -> None:
        """A node known only from a replayed anomaly (`restored_only`): no silence is judged, its event-like
        anomalies resolve when their hold ends; once nothing is held it waits for its first probe unscheduled."""
        next_due = 0.0
        if node.conds:
            for key, cond in list(node.conds.items()):
                if cond.hold_until:
                    if now >= cond.hold_until:
                        self._resolve_key(node, key, now)
                    elif not next_due or cond.hold_until < next_due:
                        next_due = cond.hold_until
        if next_due:
            self._schedule(node, next_due)
        elif not node.conds and node.silence is None:
            self.restored_only.pop(node.key, None)

    # ------------------------------------------------------------------ cloud events and remediation

    def observe_cloud(self, event: CloudSystemEvent, *, now: float, at: float | None = None) -> None:
        """`at`: when the event's phase was observed, if not now (a restart's replay of CLOUD: a host event that
        ended days ago explains no downtime after the restart).

        A cloud event never creates a node, partitioned (`adopt_unknown` False) or not: one for a node
        not known yet is parked (bounded) and applied when the node's first probe comes here — a node made from
        an event alone never probes, so its "silence" would fire node_down for a machine nobody watches. An event
        ingest could not map to a node (`node_mapped=False`, named after its instance id) is no node's at all
        and is ignored; ingest sends it again under the node's name once the inventory knows the instance."""
        if event.node_mapped is False:
            return
        key = event.cluster + "/" + event.node
        node = self.nodes.get(key)
        if node is None:
            if key in self.departed:
                return
            # not probed here yet (another replica's node, or one whose first probe is still to come): park it
            if key not in self._pending_cloud and len(self._pending_cloud) >= MAX_PARKED_NODES:
                self._pending_cloud.pop(next(iter(self._pending_cloud)))
            self._pending_cloud.setdefault(key, []).append((event, at))
            return
        self._apply_cloud(node, event, now, at=at)

    def _apply_cloud(self, node: NodeState, event: CloudSystemEvent, now: float, *, at: float | None = None) -> None:
        if node.cloud is None:
            node.cloud = {}
        state = node.cloud.get(event.provider_event_id)
        if state is not None and state.terminal and not event.is_terminal:
            return  # a terminal phase is never overwritten by a late non-terminal one
        not_before = event.not_before.timestamp() if event.not_before else None
        if state is None:
            state = CloudEventState(
                event_id=event.provider_event_id,
                action=event.action,
                phase=event.phase,
                terminal=event.is_terminal,
                not_before=not_before,
            )
            node.cloud[event.provider_event_id] = state
        state.phase = event.phase
        state.terminal = event.is_terminal
        state.not_before = not_before or state.not_before
        if event.is_terminal and not state.terminal_at:
            state.terminal_at = now if at is None else at
        if event.action not in MAINTENANCE_ACTIONS:
            return
        subject = f"{event.action}:{event.provider_event_id}"
        key = "cloud_maintenance" + SEP + subject
        cond = node.conds.get(key) if node.conds else None
        if event.phase in ACTIVE_PHASES and (cond is None or not cond.firing):
            onset = event.published_at or event.observed_at
            cond = Condition(kind="cloud_maintenance", subject=subject, onset=onset.timestamp(), severity="minor")
            cond.expected = True
            cond.value = event.phase
            cond.detail = {
                "provider_event_type": event.provider_event_type,
                "cloud": event.cloud,
                "not_before": event.not_before.isoformat() if event.not_before else None,
                "local_data_loss": event.local_data_loss,
            }
            cond.probe_ids.append(event.id)
            if node.conds is None:
                node.conds = {}
            node.conds[key] = cond
            self._fire(node, cond, now)
        elif event.is_terminal and cond is not None and cond.firing:
            self._maybe_resolve_cloud(node, key, cond, now)

    def _maybe_resolve_cloud(self, node: NodeState, key: str, cond: Condition, now: float) -> None:
        """A maintenance anomaly resolves when its event is terminal and the node is healthy again:
        no silence anomaly and an agent probe newer than the terminal phase."""
        assert cond.subject is not None
        event_id = cond.subject.split(":", 1)[1]
        state = node.cloud.get(event_id) if node.cloud else None
        if state is None or not state.terminal:
            return
        if node.silence is None and node.last_agent >= state.terminal_at:
            self._resolve_key(node, key, now)

    def observe_remediation(self, record: RemediationRecord, *, now: float) -> None:
        if record.action not in DISRUPTIVE_REMEDIATIONS:
            return
        key = record.cluster + "/" + record.node
        node = self.nodes.get(key)
        if node is not None:
            node.remediation_until = self._remediation_until(node.remediation_until, record, now)
            return
        if key in self.departed:
            return
        # not known yet: kept (bounded) for its first probe. Before, the record was dropped, and a node whose
        # probes came only after our reboot had begun (a what-if window starting inside the reboot) was found
        # down and rebooted unexpectedly
        parked = self._pending_remediation
        if key not in parked and len(parked) >= MAX_PARKED_NODES:
            parked.pop(next(iter(parked)))
        parked[key] = self._remediation_until(parked.get(key, 0.0), record, now)

    def _remediation_until(self, until: float, record: RemediationRecord, now: float) -> float:
        """A node's expected grace (`NodeState.remediation_until`) after one record of our disruptive action."""
        if record.phase in ("intent", "started", "succeeded"):
            # from the record's own time: a record redelivered after a restart or read from a backlog is not a
            # reboot that just happened (it gave the node 15 more minutes in which a crash reboot passed as ours)
            at = min(now, record.time.timestamp())
            return max(until, at + self.config.expected_grace_s)
        if record.phase in ("skipped", "blocked"):
            return 0.0
        return until

    def _expected_downtime(self, node: NodeState, now: float) -> bool:
        if node.remediation_until > now:
            return True
        if not node.cloud:
            return False
        grace = self.config.expected_grace_s
        for state in node.cloud.values():
            if state.action not in MAINTENANCE_ACTIONS:
                continue
            if state.terminal:
                if now - state.terminal_at <= grace and state.phase == "completed":
                    return True
            elif state.phase == "in_progress" or state.not_before is None or state.not_before <= now + grace:
                return True
        return False

    # ------------------------------------------------------------------ restart: rebuild without a burst

    def seed_last_probe(self, p: FastProbe, *, now: float, stored_at: float | None = None) -> None:
        """Know a node (and its boot id) from the stream's last probe, without evaluating rules. With
        `stored_at` (when the stream stored that probe) an agent probe also says since when the node has
        been silent: a node that went dark before a restart is found down on time, not a whole silence
        timeout after the restart."""
        node = self._node(p.cluster, p.node, now)
        if p.source != "prober":
            if p.boot_id is not None:
                node.boot_id = p.boot_id
            if stored_at is not None and stored_at < node.last_agent:
                node.last_agent = stored_at
                self._schedule(node, max(stored_at + self._down_timeout, now))  # the wheel runs forward only
            if stored_at is not None:
                self._seeded_input = max(self._seeded_input, min(stored_at, now))

    def seed_boot(self, cluster: str, node: str, boot_id: str | None) -> None:
        """The boot id the node had as of what was processed before a restart (its last probe at or
        before the probe durable's ack floor; None: no such probe), replacing the one `seed_last_probe`
        took from a probe not processed yet — which is delivered again and compared with this."""
        state = self.nodes.get(cluster + "/" + node)
        if state is not None:
            state.boot_id = boot_id

    def seeded(self, *, now: float) -> None:
        """The rebuild read the fleet's last probes: every seeded node knows since when it is silent, so no
        warm-up is needed; the feed counts as alive since its newest stored probe (a feed that has been
        dead longer than the silence timeout raises no silence anomaly until probes flow again)."""
        if self._seeded_input:
            self._warmup_until = min(self._warmup_until, now)
            self.last_input = max(self.last_input, self._seeded_input)

    def restore(self, anomaly: Anomaly, *, now: float) -> None:
        """Replay ANOMALIES in order: what was firing at the crash is firing again, without a publish.

        An anomaly of a node no probe is known of (the rebuild seeded every node with a probe in PROBES) makes no
        node: it goes to `restored_only`, where no silence is judged, until the node's first probe. Before, it made
        a node whose "silence" counted from the restart: an anomaly fired before cloud events stopped making nodes
        (a node named after an instance id) or of a decommissioned node brought it back, and it went node_down
        after every restart. A partitioned replica (`adopt_unknown` False) keeps only its own nodes' anomalies.

        A resolution also records its episode (`replayed_episodes`): judged again from probes delivered again after
        the restart, it is not raised a second time."""
        key_cluster, key_node = anomaly.cluster, anomaly.node
        node_key = key_cluster + "/" + key_node
        node = self.nodes.get(node_key)
        if node is None:
            node = self.restored_only.get(node_key)
        if anomaly.status == "resolved" and (node is not None or self.adopt_unknown):
            # its probes may be judged again (a chunk delivered again after a kill): never fired again (`_fire`)
            episodes = self.replayed_episodes
            episodes[anomaly_msg_id(anomaly.anomaly_key, "firing", anomaly.fault_onset)] = None
            if len(episodes) > MAX_PARKED_NODES:
                del episodes[next(iter(episodes))]
        if node is None:
            if not self.adopt_unknown or anomaly.status == "resolved" or node_key in self.departed:
                return
            if len(self.restored_only) >= MAX_PARKED_NODES:
                self.restored_only.pop(next(iter(self.restored_only)))
            node = self.restored_only[node_key] = NodeState(key=node_key, cluster=key_cluster, node=key_node, now=now)
        key = anomaly.kind + SEP + (anomaly.subject or "")
        if anomaly.status == "resolved":
            if node.conds:
                node.conds.pop(key, None)
                if not node.conds:
                    node.conds = None
            if node.silence == key:
                node.silence = None
            if node.conds is None and node.silence is None and node_key in self.restored_only:
                del self.restored_only[node_key]  # nothing of it is firing: nothing to keep
            return
        cond = Condition(
            kind=anomaly.kind, subject=anomaly.subject, onset=anomaly.fault_onset.timestamp(), severity=anomaly.severity
        )
        cond.firing = True
        cond.expected = anomaly.expected
        cond.probe_ids = list(anomaly.probe_ids)[:MAX_PROBE_IDS]
        if anomaly.evidence:
            cond.value = anomaly.evidence[0].value
            cond.threshold = anomaly.evidence[0].threshold
        if anomaly.kind in ("unexpected_reboot", "kernel_fault"):
            cond.hold_until = now + self.config.event_hold_s
            self._schedule(node, cond.hold_until)
        elif anomaly.kind == "flapping":
            cond.hold_until = now + self.config.flap_window_s
            self._schedule(node, cond.hold_until)
        if node.conds is None:
            node.conds = {}
        node.conds[key] = cond
        if anomaly.kind in SILENCE_KINDS and (anomaly.kind != "service_down" or anomaly.subject == AGENT_SERVICE):
            node.silence = key
            cond.stamp = -1

    def firing(self) -> list[tuple[str, str, str | None]]:
        """(node key, kind, subject) of every firing anomaly, for tests and /metrics."""
        out: list[tuple[str, str, str | None]] = []
        for node in (*self.nodes.values(), *self.restored_only.values()):
            if node.conds:
                out.extend((node.key, c.kind, c.subject) for c in node.conds.values() if c.firing)
        return out
