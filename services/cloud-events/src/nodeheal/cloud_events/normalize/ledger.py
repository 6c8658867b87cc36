"""Dedup of cloud-event transitions (reference §6.4), pure.

Transition key `(cloud, provider_event_id, phase)`: a transition already seen is a duplicate, unless it
is a **reschedule**: a non-terminal phase reported again with a `not_before` more than
`RESCHEDULE_TOLERANCE_S` from every start time seen for that phase (AWS `ModifyInstanceEventStartTime`, a new
Azure `DocumentIncarnation`). A reschedule is published (`rescheduled`, under `reschedule_message_id`), so the
remediator drains by the new time; a channel that still reports an old time is a duplicate.
Entity key `(cloud, provider_event_id)`: once an entity has reached a terminal phase, a later
non-terminal report (a slower channel: CMS push racing the API poll) is stale and never overwrites
it.

Bounded (`max_entities`): when full, the **closed** entity touched least recently (recorded, or reported again:
`touch`) is forgotten first; an **open** one never is. Forgetting an open event loses its end: it drops out of
`open_events`, so the reconciliation never asks for it, a restarted poller does not take it over, and the
remediator keeps its node drained (before, the least recently *recorded* entity went first, which after a
restart's seed is the oldest, i.e. exactly the long-open notices). When the open events alone fill the bound the
ledger holds more than `max_entities` (`over_bound`): the ingest says so (an error log and
`nodeheal_ingest_ledger_over_bound`) rather than dropping one. Every step is O(1): the open and the closed
entities are kept in two recency orders.

Open report per entity: what the latest non-terminal report of a still open event said (`REPORT_FIELDS`, as CLOUD
holds them), dropped once it closes. A node-local poller that keeps its events in memory (Azure's document tracker,
GCE's current episode) takes the ones its predecessor left open over from the seeded ledger (`open_reports`), so a
restart of its process or VM does not lose an event's end.

Document counter per instance (`incarnation`): the highest Azure `DocumentIncarnation` a report of the instance
carried (`extended.DocumentIncarnation`; a synthesised end carries the one of the document it was read gone from),
recorded from every report, closed or open. A restarted Azure poller starts from it, so an older document served
right after the restart (a lagging relay) does not re-open or end an event (`AzureDocumentTracker.resume`). One
small entry per instance that has had an Azure event; never forgotten. The highest, not the latest: a message sent
again with an older report does not lower it; a counter that went back for good is taken by the tracker after
`INCARNATION_RESET_S` (again after each restart while CLOUD still holds a report with the higher one).

Route per transition: the node its latest message went to, or none (the instance was not in the inventory and
it went out under the instance id). `unmapped` names the message a node never got, so the ingest sends it to the
node once the inventory knows the instance; the route is rebuilt with the rest from the stored messages.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

from nodeheal.schemas.cloud import TERMINAL_PHASES, CloudSystemEvent
from nodeheal.schemas.ids import deterministic_id

Verdict = Literal["new", "rescheduled", "duplicate", "stale"]

PHASE_ORDER: dict[str, int] = {"pending_approval": 0, "scheduled": 1, "in_progress": 2}
"""The non-terminal phases in the order an event goes through them: a report of an earlier one after a later one
was published is stale (a CMS push of `Scheduled` arriving after the poll saw `Executing`)."""

RESCHEDULE_TOLERANCE_S = 60.0
"""Start times closer than this are the same schedule: channels that infer `not_before` from their own notice
time (an Alibaba spot notice: notice + 5 min) differ by seconds; a real reschedule moves it by hours or days."""

MAX_STARTS = 8
"""Start times remembered per phase of an event (a bound; more reschedules than this are still published)."""


REPORT_FIELDS: tuple[str, ...] = (
    "provider_event_type",
    "action",
    "cause",
    "instance_id",
    "resource_ref",
    "not_before",
    "started_at",
    "expected_duration_s",
    "source_initiator",
    "local_data_loss",
    "extended",
)
"""What `open_reports` keeps of an open event's latest report: enough for a restarted poller to end it as its
predecessor would have (not `raw`: a whole document per event)."""


@dataclass(frozen=True, slots=True)
class OpenReport:
    """An event seen in a non-terminal phase and not closed: its latest phase and what its report said there."""

    provider_event_id: str
    phase: str
    fields: Mapping[str, Any]
    """`REPORT_FIELDS` of the report, in JSON form (times as ISO text, as CLOUD holds them)."""


def as_instant(value: datetime | str | None) -> datetime | None:
    """`not_before` as the event has it (a datetime) or as a stored message has it (ISO text), in UTC."""
    if value is None or value == "":
        return None
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            return None
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.astimezone(UTC)


def reschedule_message_id(event: CloudSystemEvent) -> str:
    """The message id of a rescheduled transition: the transition's own id with the new start time, so the
    stream's duplicate window does not take it for the first report."""
    start = as_instant(event.not_before)
    return deterministic_id(event.id, start.isoformat() if start else "", prefix="cloud-")


@dataclass(slots=True)
class _Entity:
    phases: set[str] = field(default_factory=set)
    terminal: str | None = None
    starts: dict[str, list[datetime]] = field(default_factory=dict)
    """Per non-terminal phase: the start times (`not_before`) reported for it."""
    latest: dict[tuple[str, str], datetime] = field(default_factory=dict)
    """Per (non-terminal phase, channel): the start time that channel last had published."""
    routes: dict[str, tuple[str, str | None]] = field(default_factory=dict)
    """Per phase: (message id, node) of its latest message; node None: published under the instance id.
    A phase without an entry: not known (a message without `node_mapped`)."""
    report: tuple[str, dict[str, Any]] | None = None
    """While open: (phase, `REPORT_FIELDS`) of the latest report of the phase where it stands."""

    def current(self, phase: str) -> bool:
        """`phase` is where the event stands: its terminal phase, or, while open, no later phase was seen."""
        if self.terminal is not None:
            return phase == self.terminal
        rank = PHASE_ORDER.get(phase, -1)
        return not any(PHASE_ORDER.get(p, -1) > rank for p in self.phases)

    def moved(self, phase: str, start: datetime | None, channel: str | None = None) -> bool:
        """A new start time: one the channel itself did not say last (a channel that moves its own time moved
        the event, even back to a time said before: AWS `ModifyInstanceEventStartTime` Jan 10 → 13 → 10);
        from a channel with nothing published yet, one no channel said (a slow channel still reporting the
        first time does not move it back)."""
        seen = self.starts.get(phase)
        if start is None or not seen:
            return False
        mine = self.latest.get((phase, channel)) if channel is not None else None
        if mine is not None:
            return abs((start - mine).total_seconds()) > RESCHEDULE_TOLERANCE_S
        return all(abs((start - s).total_seconds()) > RESCHEDULE_TOLERANCE_S for s in seen)


@dataclass(frozen=True, slots=True)
class OpenEvent:
    """An event seen in a non-terminal phase and not closed, and the node its latest message went to (None:
    published under the instance id only, or not known)."""

    provider_event_id: str
    node: str | None


@dataclass(slots=True)
class TransitionLedger:
    max_entities: int = 200_000
    """The bound on closed entities: a full ledger forgets the least recently touched closed one. Open ones are
    never forgotten (`over_bound`)."""
    _open: OrderedDict[tuple[str, str], _Entity] = field(default_factory=OrderedDict)
    """Entities without a terminal phase, least recently touched first."""
    _closed: OrderedDict[tuple[str, str], _Entity] = field(default_factory=OrderedDict)
    """Entities with a terminal phase, least recently touched first (the ones forgotten when full)."""
    over_bound_said: bool = False
    """The ingest has said `over_bound` (logged) since it last was not: it says it once per crossing."""
    _incarnations: dict[tuple[str, str], int] = field(default_factory=dict)
    """Per (cloud, instance id lower-cased): the highest `extended.DocumentIncarnation` its reports carried."""

    def _get(self, key: tuple[str, str]) -> _Entity | None:
        entity = self._open.get(key)
        return entity if entity is not None else self._closed.get(key)

    def touch(self, *, cloud: str, provider_event_id: str) -> None:
        """An event reported again (a duplicate): it is the most recently touched of its kind, so a full ledger
        forgets it last."""
        key = (cloud, provider_event_id)
        if key in self._open:
            self._open.move_to_end(key)
        elif key in self._closed:
            self._closed.move_to_end(key)

    @property
    def open_count(self) -> int:
        return len(self._open)

    @property
    def over_bound(self) -> bool:
        """The open events alone are more than `max_entities`: the ledger holds them all, above its bound."""
        return len(self._open) > self.max_entities

    def _evict(self, keep: tuple[str, str]) -> None:
        """Forget the least recently touched closed entities while over the bound (never `keep`, the one just
        recorded, nor an open one)."""
        while len(self._open) + len(self._closed) > self.max_entities and self._closed:
            oldest = next(iter(self._closed))
            if oldest == keep:
                break
            del self._closed[oldest]

    def verdict(
        self,
        *,
        cloud: str,
        provider_event_id: str,
        phase: str,
        not_before: datetime | str | None = None,
        channel: str | None = None,
    ) -> Verdict:
        """What `record` would say, without recording."""
        entity = self._get((cloud, provider_event_id))
        if entity is None:
            return "new"
        if entity.terminal is not None and phase not in TERMINAL_PHASES:
            return "duplicate" if phase in entity.phases else "stale"
        if phase in entity.phases:
            if phase not in TERMINAL_PHASES and entity.moved(phase, as_instant(not_before), channel):
                return "rescheduled"
            return "duplicate"
        rank = PHASE_ORDER.get(phase)
        if rank is not None and any(PHASE_ORDER.get(p, -1) > rank for p in entity.phases):
            return "stale"
        return "new"

    def record(
        self,
        *,
        cloud: str,
        provider_event_id: str,
        phase: str,
        not_before: datetime | str | None = None,
        channel: str | None = None,
    ) -> Verdict:
        verdict = self.verdict(
            cloud=cloud, provider_event_id=provider_event_id, phase=phase, not_before=not_before, channel=channel
        )
        key = (cloud, provider_event_id)
        entity = self._get(key)
        if entity is None:
            entity = self._open[key] = _Entity()
        else:
            self.touch(cloud=cloud, provider_event_id=provider_event_id)
        if verdict in ("new", "rescheduled"):
            entity.phases.add(phase)
            if phase in TERMINAL_PHASES and entity.terminal is None:
                entity.terminal = phase
                entity.report = None
                del self._open[key]
                self._closed[key] = entity
            start = as_instant(not_before)
            if phase not in TERMINAL_PHASES and start is not None:
                starts = entity.starts.setdefault(phase, [])
                starts.append(start)
                del starts[:-MAX_STARTS]
                if channel is not None:
                    entity.latest[(phase, channel)] = start
        self._evict(keep=key)
        return verdict

    def admit(self, event: CloudSystemEvent) -> Verdict:
        """Record a published event, and where it went if it says (`node_mapped`)."""
        verdict = self.record(
            cloud=event.cloud,
            provider_event_id=event.provider_event_id,
            phase=event.phase,
            not_before=event.not_before,
            channel=event.channel,
        )
        self.noted(cloud=event.cloud, fields=event.model_dump(mode="json", include={"instance_id", "extended"}))
        if verdict in ("new", "rescheduled"):
            self.reported(
                cloud=event.cloud,
                provider_event_id=event.provider_event_id,
                phase=event.phase,
                fields=event.model_dump(mode="json", include=set(REPORT_FIELDS)),
            )
        if event.node_mapped is not None:
            self.routed(
                cloud=event.cloud,
                provider_event_id=event.provider_event_id,
                phase=event.phase,
                message_id=event.id,
                node=event.node if event.node_mapped else None,
                fresh=verdict in ("new", "rescheduled"),
            )
        return verdict

    def routed(
        self, *, cloud: str, provider_event_id: str, phase: str, message_id: str, node: str | None, fresh: bool
    ) -> None:
        """Where a message of a recorded transition went: `node`, or None (under the instance id). `fresh`: the
        message was the transition's latest (new or rescheduled). A message to a node is always kept (a remap is
        a duplicate of the transition); an unmapped one only when fresh (it does not undo a remap)."""
        entity = self._get((cloud, provider_event_id))
        if entity is None or phase not in entity.phases:
            return
        if node is not None or fresh:
            entity.routes[phase] = (message_id, node)

    def unmapped(self, *, cloud: str, provider_event_id: str, phase: str) -> str | None:
        """The id of the message of this transition that went out under the instance id only, if the transition
        is where the event stands (an earlier phase superseded by a later one is not sent again); else None."""
        entity = self._get((cloud, provider_event_id))
        if entity is None or phase not in entity.phases or not entity.current(phase):
            return None
        route = entity.routes.get(phase)
        if route is None or route[1] is not None:
            return None
        return route[0]

    def reported(self, *, cloud: str, provider_event_id: str, phase: str, fields: Mapping[str, Any]) -> None:
        """What a recorded (new or rescheduled) report of an open event said: kept while the event is open and
        the phase is where it stands (`open_reports`). `fields`: the report, as a model dump or CLOUD's JSON."""
        entity = self._get((cloud, provider_event_id))
        if entity is None or entity.terminal is not None or phase in TERMINAL_PHASES or not entity.current(phase):
            return
        entity.report = (phase, {k: fields[k] for k in REPORT_FIELDS if k in fields})

    def noted(self, *, cloud: str, fields: Mapping[str, Any]) -> None:
        """A report of `cloud` (a model dump or CLOUD's JSON): keep its `extended.DocumentIncarnation` if it is the
        highest its instance's reports carried (`incarnation`). A report without one says nothing."""
        extended, instance = fields.get("extended"), fields.get("instance_id")
        if not isinstance(extended, Mapping) or not isinstance(instance, str) or not instance:
            return
        value = extended.get("DocumentIncarnation")
        if isinstance(value, str):
            try:
                value = int(value.strip())
            except ValueError:
                return
        if isinstance(value, bool) or not isinstance(value, int):
            return
        key = (cloud, instance.lower())
        known = self._incarnations.get(key)
        if known is None or value > known:
            self._incarnations[key] = value

    def incarnation(self, cloud: str, instance_id: str) -> int | None:
        """The highest document counter a report of `instance_id` (any case) carried (`noted`), or None."""
        return self._incarnations.get((cloud, instance_id.lower()))

    def open_reports(self, cloud: str) -> list[OpenReport]:
        """The open events of `cloud` (as `open_events`) whose latest report is known, with what it said."""
        return [
            OpenReport(provider_event_id=eid, phase=e.report[0], fields=e.report[1])
            for (c, eid), e in self._open.items()
            if c == cloud and e.report is not None
        ]

    def open_events(self, cloud: str) -> list[str]:
        """Event ids of `cloud` seen in a non-terminal phase and not yet closed (for reconciliation)."""
        return [eid for (c, eid) in self._open if c == cloud]

    def open_routes(self, cloud: str) -> list[OpenEvent]:
        """The open events of `cloud` (as `open_events`) with the node the latest message of the phase where each
        stands went to: a node-local poller finds the events left open on its node by another machine (a GCE VM
        recreated under the node's name)."""
        out: list[OpenEvent] = []
        for (c, eid), e in self._open.items():
            if c != cloud:
                continue
            routes = [r for p, r in e.routes.items() if e.current(p)]
            out.append(OpenEvent(provider_event_id=eid, node=routes[0][1] if routes else None))
        return out

    def __len__(self) -> int:
        return len(self._open) + len(self._closed)
