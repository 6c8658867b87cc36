"""What each replica knows about the fleet, fed from NATS by the handlers (this module has no NATS):
the node placements (inventory), which nodes are unhealthy now (diagnoses seen by every replica, not
only the ones this replica handles), when a node recovered, and each node's cloud events.

The view is one cluster's (`FleetView.cluster`, the remediator's own): one NATS serves several clusters, and
the inventory bucket, DIAGNOSES and CLOUD hold every cluster's nodes, keyed here by node name alone. A record of
another cluster is ignored: its node of the same name would lend this cluster's node its instance id (a reboot
sent to the other cluster's machine), placement, sickness or departure, and its nodes would count in this
cluster's domain sizes and unhealthy counts."""

from __future__ import annotations

import heapq
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from nodeheal.remediator.planner import HOST_ACTIONS
from nodeheal.remediator.policy import DomainKind, DomainSizes, Placement
from nodeheal.schemas.causes import OPERATOR_REQUEST
from nodeheal.schemas.cloud import CloudEventHead, CloudSystemEvent, canonical_cloud
from nodeheal.schemas.diagnosis import Diagnosis
from nodeheal.schemas.inventory import NodeInventory

FINISHED_KEEP = timedelta(days=7)
"""How long a finished host event (completed, avoided, canceled, failed) is kept after its last report, on CLOUD's
time. Long enough for the maintenance loop to finish it (verify, uncordon: a tick every few seconds, a held slot
expires after `slot_hold_s`, 1 h) even after an outage of every replica, and for any late report of the same
event (CMS retries, polls, a second channel's late "closed") to find it ended: a late pending report of an event
let go would be taken for a new pending event. docs/remediator.md, "Host events"."""
SPOT_NOTICE_OVER = timedelta(minutes=30)
"""A spot interruption notice (`terminate`, cause `spot`) that no report ended this long after its time is over
(`FleetView.cloud_events`). The clouds send no end for it: a released machine leaves the inventory, but one whose
interruption behaviour is *stop* or *hibernate* (AWS `InstanceInterruptionBehavior`, Alibaba
`SpotInterruptionBehavior=Stop`) comes back as the same instance and node, and a notice open for ever would keep
it drained. docs/remediator.md, "Host events"."""
MAX_FINISHED = 50_000
"""At most this many finished host events are kept; beyond it the oldest go first, even within `FINISHED_KEEP`
(about one a week per node on a 50,000-node fleet)."""


@dataclass(slots=True)
class FleetView:
    cluster: str | None = None
    """The cluster this view is of: inventory records, diagnoses and host events of any other cluster are ignored
    (None: every record is taken, for a tool or bench fed one cluster's data only)."""
    placements: dict[str, Placement] = field(default_factory=dict)
    instance: dict[str, tuple[str | None, str | None]] = field(default_factory=dict)
    sick_since: dict[str, datetime] = field(default_factory=dict)
    recovered_at: dict[str, datetime] = field(default_factory=dict)
    cloud: dict[str, dict[tuple[str, str], CloudSystemEvent]] = field(default_factory=dict)
    # (cloud, provider id) of a host event a second channel reports → the one it is kept as (`_twin`)
    cloud_alias: dict[tuple[str, str], tuple[str, str]] = field(default_factory=dict)
    cloud_channels: dict[tuple[str, str], set[str]] = field(default_factory=dict)  # who reported each kept event
    latest: dict[str, tuple[str, datetime, str]] = field(default_factory=dict)
    """node → (episode, identified_at, id) of the newest firing diagnosis seen"""
    left: dict[str, datetime] = field(default_factory=dict)
    """node → when its inventory record was deleted (the machine left the cluster: released, replaced)"""
    _sizes: DomainSizes | None = None
    # The unhealthy nodes per failure domain (`unhealthy_counts`), kept as diagnoses arrive instead of counted over
    # every sick node for each decision: the nodes counted (with the placement they were counted under), the counts,
    # a heap of (sick since, node) for the window's expiry, and the horizon of the last count (None: not kept yet).
    _counted: dict[str, Placement] = field(default_factory=dict)
    _sick_counts: dict[tuple[DomainKind, str], int] = field(default_factory=dict)
    _expiry: list[tuple[datetime, str]] = field(default_factory=list)
    _horizon: datetime | None = None
    _window_s: float = 0.0
    # Finished host events are let go (`_prune`): kept `finished_keep` past the newest report CLOUD has shown, and
    # at most `max_finished` of them; open events are never let go (docs/remediator.md, "Host events").
    finished_keep: timedelta = field(default_factory=lambda: FINISHED_KEEP)
    max_finished: int = MAX_FINISHED
    _newest: datetime | None = None  # the latest `observed_at` of a host event report seen
    _finished: list[tuple[datetime, str, tuple[str, str]]] = field(default_factory=list)  # heap: (ended, node, key)
    _to_prune: dict[tuple[str, tuple[str, str]], datetime] = field(default_factory=dict)  # heap entries that count

    def _ours(self, cluster: str) -> bool:
        return self.cluster is None or cluster == self.cluster

    def on_inventory(self, inv: NodeInventory) -> None:
        if not self._ours(inv.cluster):
            return
        self.placements[inv.node] = Placement(node=inv.node, zone=inv.zone, rack=inv.rack, node_pool=inv.node_pool)
        self.instance[inv.node] = (inv.cloud, inv.instance_id)
        self.left.pop(inv.node, None)
        self._sizes = None
        self._recount(inv.node)

    def on_inventory_delete(self, cluster: str, node: str) -> None:
        """The node's inventory record was deleted: it is no longer part of the fleet (nor of its domains)."""
        if not self._ours(cluster):
            return
        self.placements.pop(node, None)
        self.instance.pop(node, None)
        self.left[node] = datetime.now(tz=UTC)
        self._sizes = None
        self._recount(node)

    def placement(self, node: str) -> Placement:
        return self.placements.get(node, Placement(node=node))

    def sizes(self) -> DomainSizes:
        if self._sizes is None:
            self._sizes = DomainSizes.of(self.placements.values())
        return self._sizes

    def on_diagnosis(self, diagnosis: Diagnosis) -> None:
        if diagnosis.replay or not self._ours(diagnosis.cluster):
            return
        node = diagnosis.node
        if diagnosis.resolved:
            self.sick_since.pop(node, None)
            self._uncount(node)
            previous = self.recovered_at.get(node)
            back = diagnosis.ended_at or diagnosis.identified_at  # a recovered verdict is said after the end
            if previous is None or back > previous:
                self.recovered_at[node] = back
        else:
            if diagnosis.cause != OPERATOR_REQUEST:  # a person's batch request is not a sick node (storm guard)
                self._mark_sick(node, diagnosis.identified_at)
            current = self.latest.get(node)
            if current is None or diagnosis.identified_at > current[1]:
                self.latest[node] = (diagnosis.episode, diagnosis.identified_at, diagnosis.id)

    def newer_in_episode(self, diagnosis: Diagnosis) -> str | None:
        """The id of a later diagnosis of the same episode of this node, if one was seen."""
        current = self.latest.get(diagnosis.node)
        if current is None:
            return None
        episode, at, did = current
        if episode == diagnosis.episode and did != diagnosis.id and at > diagnosis.identified_at:
            return did
        return None

    def latest_episode(self, node: str) -> str | None:
        current = self.latest.get(node)
        return current[0] if current else None

    def unhealthy(self, *, now: datetime, window_s: float) -> dict[str, Placement]:
        horizon = now - timedelta(seconds=window_s)
        return {n: self.placement(n) for n, t in self.sick_since.items() if t >= horizon}

    def unhealthy_counts(self, *, now: datetime, window_s: float) -> dict[tuple[DomainKind, str], int]:
        """How many unhealthy nodes (a diagnosis in the last `window_s`) each failure domain has: the counts of
        `unhealthy()` by `Placement.domains()`, kept up to date as diagnoses arrive and leave the window, so a
        decision in a storm of tens of thousands of sick nodes costs the domains, not the nodes. The mapping is
        the view's own: read it, do not keep it."""
        horizon = now - timedelta(seconds=window_s)
        if self._horizon is None or window_s != self._window_s or horizon < self._horizon:
            # first use, another window, or the clock went back: count once from scratch
            self._counted.clear()
            self._sick_counts.clear()
            self._horizon, self._window_s = horizon, window_s
            self._expiry = [(t, n) for n, t in self.sick_since.items()]
            heapq.heapify(self._expiry)
            for n, t in self.sick_since.items():
                if t >= horizon:
                    self._count(n)
            return self._sick_counts
        self._horizon = horizon
        expiry = self._expiry
        while expiry and expiry[0][0] < horizon:
            _, n = heapq.heappop(expiry)
            since = self.sick_since.get(n)
            if since is not None and since < horizon:  # its newest diagnosis left the window (else: newer in the heap)
                self._uncount(n)
        return self._sick_counts

    def _mark_sick(self, node: str, at: datetime) -> None:
        self.sick_since[node] = at
        if self._horizon is None:
            return  # not counted yet: the first `unhealthy_counts` counts everything
        if len(self._expiry) > 4 * len(self.sick_since) + 1024:
            self._horizon = None  # many diagnoses and no decision since: count from scratch when one comes
            self._expiry = []
            return
        heapq.heappush(self._expiry, (at, node))
        if at >= self._horizon:
            self._count(node)
        else:
            self._uncount(node)

    def _count(self, node: str) -> None:
        if node in self._counted:
            return
        placement = self._counted[node] = self.placement(node)
        counts = self._sick_counts
        for key in placement.domains():
            counts[key] = counts.get(key, 0) + 1

    def _uncount(self, node: str) -> None:
        placement = self._counted.pop(node, None)
        if placement is None:
            return
        counts = self._sick_counts
        for key in placement.domains():
            left = counts[key] - 1
            if left:
                counts[key] = left
            else:
                del counts[key]

    def _recount(self, node: str) -> None:
        """A counted node's placement changed: it counts in its new domains."""
        if node in self._counted:
            self._uncount(node)
            self._count(node)

    def on_cloud(self, event: CloudSystemEvent) -> None:
        if not self._ours(event.cluster):
            return
        key = (event.cloud, event.provider_event_id)
        events = self.cloud.get(event.node, {})
        current = events.get(key)
        if current is None:
            if event.action == "state_change":
                self._spot_back(event, events)
            if event.action not in HOST_ACTIONS:
                return  # the remediator acts on host events only: the rest of CLOUD (state changes, ...) is not kept
            twin = self._twin(event, events)
            if twin is not None:
                # one host event a second channel reports under its own id (AWS: Health's
                # `<eventArn>#<instance>` and IMDS's `instance-event-…`): one event under the id first seen,
                # the same on every replica (all read CLOUD in the same order)
                self.cloud_alias[key] = twin
        events = self.cloud.setdefault(event.node, events)
        self.cloud_channels.setdefault(key, set()).add(event.channel)
        if self._newest is None or event.observed_at > self._newest:
            self._seen_newer(event.observed_at)
        if current is not None and current.is_terminal and not event.is_terminal:
            return
        events[key] = event
        if event.is_terminal:
            self._to_prune[(event.node, key)] = event.observed_at
            heapq.heappush(self._finished, (event.observed_at, event.node, key))
            self._prune()
        elif event.not_before is not None:
            self._split_if_moved(key, event, events)

    def _end(self, node: str, key: tuple[str, str], ended: CloudSystemEvent) -> None:
        """Keep `ended` (terminal) as the event under `key` and let it go in time like any finished event."""
        self.cloud[node][key] = ended
        self._to_prune[(node, key)] = ended.observed_at
        heapq.heappush(self._finished, (ended.observed_at, node, key))

    def _spot_back(self, change: CloudSystemEvent, events: dict[tuple[str, str], CloudSystemEvent]) -> None:
        """A state change to *running* of an instance with an open spot notice, reported after the notice: the
        machine was stopped for it (interruption behaviour stop / hibernate) and runs again, so the notice is
        over (`completed`: it ran; the maintenance loop verifies a new boot and uncordons). A running instance
        only becomes running again after it stopped; an earlier state change ends nothing."""
        if (change.provider_status or "").lower() != "running":
            return
        at = change.published_at or change.observed_at
        for key, ev in list(events.items()):
            if (
                ev.is_terminal
                or ev.action != "terminate"
                or ev.cause != "spot"
                or ev.instance_id != change.instance_id
                or at <= (ev.published_at or ev.observed_at)
            ):
                continue
            ended = ev.model_copy(
                update={
                    "phase": "completed",
                    "is_terminal": True,
                    "observed_at": max(change.observed_at, ev.observed_at),
                    "description": f"{ev.description or 'spot notice'}; over: the instance was running again "
                    f"at {at.isoformat()} (state change {change.provider_event_id})",
                }
            )
            self._end(change.node, key, ended)

    @staticmethod
    def _overdue(ev: CloudSystemEvent, now: datetime) -> CloudSystemEvent | None:
        """A spot notice `SPOT_NOTICE_OVER` past its time with no report that ended it, as over (`completed`; a
        machine that did not come back fails the new-boot verification and goes to a person); None for any other
        event."""
        if (
            ev.is_terminal
            or ev.action != "terminate"
            or ev.cause != "spot"
            or ev.not_before is None
            or now - ev.not_before < SPOT_NOTICE_OVER
        ):
            return None
        return ev.model_copy(
            update={
                "phase": "completed",
                "is_terminal": True,
                "observed_at": max(ev.observed_at, ev.not_before + SPOT_NOTICE_OVER),
                "description": f"{ev.description or 'spot notice'}; over: no report ended it "
                f"{SPOT_NOTICE_OVER.total_seconds() / 60:g} min after its time",
            }
        )

    def end_overdue_spot_notices(self, now: datetime) -> int:
        """End (keep as over, let go in time) every spot notice `SPOT_NOTICE_OVER` past its time: the maintenance
        loop's tick calls it, so reading the view (`cloud_events`) changes nothing. Returns how many ended."""
        ended = 0
        for node, events in list(self.cloud.items()):
            for key, ev in list(events.items()):
                over = self._overdue(ev, now)
                if over is not None:
                    self._end(node, key, over)
                    ended += 1
        return ended

    def keeps_cloud(self, data: bytes) -> bool:
        """Would `on_cloud` keep this CLOUD message (as raw JSON)? False only for a message whose head
        (`CloudEventHead`: node, cloud, provider id, action, validated as the whole event validates them) names
        no host event and no event the view already keeps: `on_cloud` would drop it, so the follower passes it
        over without validating the rest (about 2 µs instead of 9 per message, docs/BENCHMARKS.md). Anything
        else, a head that does not validate included, is True: validated in full, a malformed message skipped
        and counted as before."""
        try:
            head = CloudEventHead.model_validate_json(data)
        except Exception:  # the full validation says what is wrong with it
            return True
        if head.action in HOST_ACTIONS:
            return True
        events = self.cloud.get(head.node)
        if (
            head.action == "state_change"
            and events is not None
            and any(ev.cause == "spot" and not ev.is_terminal for ev in events.values())
        ):
            return True  # a machine with an open spot notice running again ends it (`_spot_back`)
        return events is not None and (head.cloud, head.provider_event_id) in events

    def _seen_newer(self, at: datetime) -> None:
        """CLOUD's time moves on to `at`, unless `at` is more than a day ahead of this clock (an ingest's clock far
        ahead would let every finished event go at once)."""
        if at <= datetime.now(tz=UTC) + timedelta(days=1):
            self._newest = at

    def _prune(self) -> None:
        """Let finished host events go: those whose last report is older than `finished_keep` before the newest
        report seen, and the oldest beyond `max_finished`. A twin pair goes only as a whole, once every report of
        it has ended (one report still open is an open event: its group is kept, and shows the pending report
        when the ended one is gone). An open event is never let go. Measured on CLOUD's own time (`observed_at`),
        not the clock: every replica, reading CLOUD in the same order, keeps the same events."""
        if self._newest is None:
            return
        horizon = self._newest - self.finished_keep
        heap = self._finished
        tracked = self._to_prune
        while heap and (heap[0][0] < horizon or len(tracked) > self.max_finished):
            at, node, key = heapq.heappop(heap)
            if tracked.get((node, key)) != at:
                continue  # gone already, or reported again since (a newer entry stands for it)
            del tracked[(node, key)]
            events = self.cloud[node]
            canon = self.cloud_alias.get(key, key)
            members = [k for k in events if self.cloud_alias.get(k, k) == canon]
            if any(not events[k].is_terminal or events[k].observed_at > at for k in members):
                continue  # an open report (never let go), or a later end (the group goes with its entry)
            for k in members:
                del events[k]
                tracked.pop((node, k), None)
                self.cloud_alias.pop(k, None)
                self.cloud_channels.pop(k, None)
            if not events:
                del self.cloud[node]

    def _split_if_moved(
        self, key: tuple[str, str], event: CloudSystemEvent, events: dict[tuple[str, str], CloudSystemEvent]
    ) -> None:
        """A report of a pair that now starts `TWIN_START_S` or more from every other report of it (one channel
        saw a reschedule the other did not): the channels disagree, so the pair is split and each report is
        its own event again, drained for on its own (more drains, never fewer)."""
        canon = self.cloud_alias.get(key, key)
        others = [k for k in events if k != key and self.cloud_alias.get(k, k) == canon]
        if not others:
            return
        assert event.not_before is not None
        if any(
            events[k].not_before is not None
            and abs((events[k].not_before - event.not_before).total_seconds()) < TWIN_START_S  # type: ignore[operator]
            for k in others
        ):
            return
        for k in [key, *others]:
            self.cloud_alias.pop(k, None)

    def cloud_events(self, node: str) -> list[CloudSystemEvent]:
        """The node's host events, one per event: the channels' reports of one event merged (`_merged`). An
        event of another machine that had the node's name (its instance id is not the inventory's) is not
        the node's: a spot notice or a host event of a machine that went away never gets a terminal phase,
        and a new machine under the reused name (IP-based names) must not be drained for it. Compared where
        the inventory and the events spell the id alike (`other_machine`)."""
        now = datetime.now(tz=UTC)
        cloud, instance = self.instance.get(node, (None, None))
        cloud = canonical_cloud(cloud)
        groups: dict[tuple[str, str], list[CloudSystemEvent]] = {}
        for key, ev in self.cloud.get(node, {}).items():
            if instance and other_machine(ev, node=node, cloud=cloud, instance=instance):
                continue
            # a spot notice past its time is shown over even before the maintenance tick ends it in the view:
            # a read changes nothing (`end_overdue_spot_notices`)
            groups.setdefault(self.cloud_alias.get(key, key), []).append(self._overdue(ev, now) or ev)
        return [_merged(canon, members) for canon, members in groups.items()]

    def event_aliases(self, node: str) -> dict[str, str]:
        """A twin report's provider id → the id its host event is kept under (empty for most nodes)."""
        return {key[1]: self.cloud_alias[key][1] for key in self.cloud.get(node, {}) if key in self.cloud_alias}

    def _twin(self, event: CloudSystemEvent, known: dict[tuple[str, str], CloudSystemEvent]) -> tuple[str, str] | None:
        """The pending host event of the node, reported by other channels under other ids, that `event` is:
        the same cloud and action, start times less than `TWIN_START_S` apart. One machine is not taken away
        twice by the same action at the same minute; a channel's own ids are the cloud's, so a channel that
        already reported the event never adds a twin of it, and a finished event takes no twin."""
        if event.not_before is None:
            return None
        groups: dict[tuple[str, str], list[tuple[tuple[str, str], CloudSystemEvent]]] = {}
        for key, ev in known.items():
            groups.setdefault(self.cloud_alias.get(key, key), []).append((key, ev))
        for canon, members in groups.items():
            if all(ev.is_terminal for _, ev in members):
                continue
            if any(event.channel in self.cloud_channels.get(key, ()) for key, _ in members):
                continue
            if any(
                ev.cloud == event.cloud
                and ev.action == event.action
                and _same_kind(ev.provider_event_type, event.provider_event_type)
                and ev.not_before is not None
                and abs((ev.not_before - event.not_before).total_seconds()) < TWIN_START_S
                for _, ev in members
            ):
                return canon
        return None


def other_machine(event: CloudSystemEvent, *, node: str, cloud: str | None, instance: str) -> bool:
    """Does `event` name another machine than the node's inventory instance (`cloud` canonical, `instance`)?
    Only where the inventory and the event spell the id alike; anything else is not compared (the event is
    kept: more drains, never fewer):

    - Alibaba, AWS: `i-…` from the API / IMDS and from `spec.providerID`, compared as is;
    - Azure: the VM name (`<vmss>_<n>` for a scale set's VM) in Scheduled Events' `Resources` and in the
      inventory (from `spec.providerID`), compared without case (Azure names are case-insensitive);
    - GCE: the instance name in the inventory; an event that names the instance by the metadata server's
      numeric `instance/id` (what the GCE poller reads unless `GCE__INSTANCE_ID` is set) is not compared;
    - an event that names the node itself (a metadata poller that could not learn its instance falls back to
      the node name) is not compared.

    The clouds are compared by their canonical names (`canonical_cloud`): the inventory says `gce` where the
    events say `gcp`."""
    if canonical_cloud(event.cloud) != cloud:
        return False
    theirs = event.instance_id
    if cloud in ("alibaba", "aws"):
        return theirs != instance
    if cloud not in ("azure", "gcp") or theirs.lower() == node.lower():
        return False
    if cloud == "gcp" and theirs.isdigit():
        return False
    return theirs.lower() != instance.lower()


TWIN_START_S = 60.0  # two channels' start times of one host event differ by less than this


def _merged(canon: tuple[str, str], members: list[CloudSystemEvent]) -> CloudSystemEvent:
    """One host event from its channels' reports, under the id first seen: the first report that it ended
    (completed, avoided, canceled, failed: on AWS only IMDS can say canceled, and Health's later "closed"
    does not undo it), else the latest pending report."""
    if len(members) == 1:
        return members[0]
    ended = [m for m in members if m.is_terminal]
    pick = min(ended, key=lambda m: m.observed_at) if ended else max(members, key=lambda m: m.observed_at)
    if pick.provider_event_id == canon[1]:
        return pick
    return pick.model_copy(
        update={"provider_event_id": canon[1], "extended": {**pick.extended, "reported_as": pick.provider_event_id}}
    )


def _squash(text: str) -> str:
    return "".join(ch for ch in text.lower() if ch.isalnum())


def _same_kind(a: str, b: str) -> bool:
    """Do two channels' type codes name the same kind of event? One holds the other once lower-cased and
    stripped of separators: IMDS `system-reboot` in Health's `AWS_EC2_SYSTEM_REBOOT_MAINTENANCE_SCHEDULED`,
    `instance-reboot` in `AWS_EC2_INSTANCE_REBOOT_MAINTENANCE_SCHEDULED` (and not in the other)."""
    x, y = _squash(a), _squash(b)
    return bool(x) and bool(y) and (x in y or y in x)
