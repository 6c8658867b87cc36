"""Azure Scheduled Events documents → `CloudSystemEvent` (reference §3, §6.1, §6.2, §6.4).

Azure has only `Scheduled` and `Started`; a finished event, and a canceled one, simply disappear
from the next document. `AzureDocumentTracker` diffs consecutive documents and synthesises the
end (reference §6.2), marked `extended.synthesized` and `extended.started_observed`:

- gone after `Started` was seen → `completed`;
- gone while last seen `Scheduled`, observed before its `NotBefore` → `canceled`;
- gone while last seen `Scheduled`, observed at or after its `NotBefore` → `completed`, with "Started was not
  seen" in the description and `started_observed=False`.

Decision (the last case): the Azure Scheduled Events doc says an event moves to `Started` once it is approved or
its `NotBefore` passes, that Azure cancels one only in rare cases *before it starts*, and that an event
disappears from the document once it has completed. Past its `NotBefore` the event has most likely started and
run while no poll saw `Started`: a Freeze pauses the VM and the poller on it, and a short event can start and end
between two polls. Before, it was published `canceled`, so the remediator took the node for untouched; an ended
event makes it verify the node. Without a `NotBefore` nothing tells them apart: `canceled`, as before. An event
approved early (`StartRequests`) that starts and ends before its `NotBefore` between two polls still reads as
`canceled`: the tracker does not know of the approval.

One Azure event covers every VM in `Resources`; each VM gets its own event whose
`provider_event_id` is `<eventid>#<vm>` (lower-case GUID), so two nodes reporting one Azure event do
not dedup each other away. `extended["EventId"]` keeps the id `StartRequests` needs.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime

from nodeheal.cloud_events.normalize.common import Json, JsonObject, NormalizeContext, build_event
from nodeheal.cloud_events.normalize.ledger import OpenReport, as_instant
from nodeheal.schemas.cloud import AckOption, CloudAction, CloudCause, CloudPhase, CloudSystemEvent

SOURCE = "azure-imds"

ACTIONS: dict[str, CloudAction] = {
    "reboot": "reboot",
    "redeploy": "redeploy",
    "freeze": "freeze",
    "preempt": "terminate",
    "terminate": "terminate",
}
_PHASES: dict[str, CloudPhase] = {"scheduled": "scheduled", "started": "in_progress"}


@dataclass(slots=True)
class _Seen:
    last: CloudSystemEvent
    first_status: str
    started_at: datetime | None = None


INCARNATION_RESET_S = 300.0
"""Documents older than the newest read for this long in a row: the counter went back (taken as it is now)."""


@dataclass(slots=True)
class AzureDocumentTracker:
    """Feeds documents in order; remembers which events were present to synthesise their end.

    `resource`: the VM name this tracker speaks for (the node's poller); events whose `Resources`
    do not contain it are not ours (Azure broadcasts to the whole availability set). None: every
    resource in the document.
    """

    resource: str | None = None
    incarnation: int | None = None
    seen: dict[str, _Seen] = field(default_factory=dict)
    older_documents: int = 0
    """Documents ignored because their `DocumentIncarnation` is below the newest fed (`feed`)."""
    older_since: datetime | None = None
    """When the documents began to be older without a break (a counter that went back for good is taken after
    `INCARNATION_RESET_S`)."""

    def feed(self, document: object, ctx: NormalizeContext) -> list[CloudSystemEvent]:
        j = Json(SOURCE)
        doc = j.obj(document, "$")
        if "StartRequests" in doc and "Events" not in doc:
            raise j.fail(
                "this is a StartRequests approval body (what is POSTed to approve an event), "
                "not a Scheduled Events document",
                "$",
            )
        incarnation = j.opt_int(doc, "DocumentIncarnation", "$")
        if incarnation is None:
            raise j.fail("missing DocumentIncarnation: not a Scheduled Events document", "$")
        if self.incarnation is not None and incarnation < self.incarnation:
            # An older document arriving late (a lagging relay, a retried request): everything in it is superseded
            # by the newer one already fed, so nothing is read from it. Before, its events were read into the
            # tracker: a Started event went back to Scheduled (its end then said Started was not seen), and one
            # that had ended was opened again and ended a second time (`canceled`, then `completed`).
            # Only for a while: Azure documents no reset of the counter, but should one go back for good, every
            # document for `INCARNATION_RESET_S` in a row is older, and then the lower one is the counter now
            # (ignored for ever, a new Reboot would never be drained for).
            self.older_since = self.older_since or ctx.observed_at
            if (ctx.observed_at - self.older_since).total_seconds() < INCARNATION_RESET_S:
                self.older_documents += 1
                return []
        self.older_since = None
        events = j.arr(doc.get("Events", []), "$.Events")
        current = [
            self._event(j, j.obj(item, f"$.Events[{i}]"), f"$.Events[{i}]", ctx, doc) for i, item in enumerate(events)
        ]
        self.incarnation = incarnation
        out: list[CloudSystemEvent] = []
        present: set[str] = set()
        for group in current:
            for event in group:
                present.add(event.provider_event_id)
                out.append(event)
        for key in list(self.seen):
            if key not in present:
                out.append(self._ended(self.seen.pop(key), ctx))
        return out

    def resume(self, reports: Iterable[OpenReport], ctx: NormalizeContext, *, incarnation: int | None = None) -> None:
        """Take over the events of this VM a previous poller left open (`reports`: the seeded ledger's
        `open_reports("azure")`), as if this tracker had read them itself: one still in the next document goes on
        (its first status, so its cause, and when Started was first seen are kept), one gone from it ends as it
        would have (`completed` / `canceled`, `_ended`). Before, a restart of the poller's process or VM forgot
        them: an event that ended meanwhile was never closed in CLOUD, and one still `Started` was taken for a
        host failure. A report that does not read back is left alone (as before).
        `incarnation`: the highest `DocumentIncarnation` the VM's reports in CLOUD carried (the seeded ledger's
        `incarnation`), taken as the newest read, so a document older than it right after the restart (a relay
        that lags) is ignored as it would have been before the restart (`feed`; the `INCARNATION_RESET_S` window
        starts anew). Before, the first document after a restart was read whatever its incarnation: an older one
        re-opened an event already ended, or ended one still open."""
        if incarnation is not None and (self.incarnation is None or incarnation > self.incarnation):
            self.incarnation = incarnation
        for report in reports:
            key = report.provider_event_id
            vm = key.rpartition("#")[2]
            if "#" not in key or key in self.seen or report.phase not in _PHASES.values():
                continue
            if self.resource is not None and vm.lower() != self.resource.lower():
                continue
            f = report.fields
            try:
                duration = f.get("expected_duration_s")
                last = build_event(
                    ctx=ctx,
                    cloud="azure",
                    channel="imds",
                    provider_event_id=key,
                    provider_event_type=str(f["provider_event_type"]),
                    provider_status=None,
                    action=f["action"],
                    cause=f["cause"],
                    phase=report.phase,  # type: ignore[arg-type]
                    instance_id=str(f.get("instance_id") or vm),
                    raw=None,
                    resource_ref=f.get("resource_ref"),
                    not_before=as_instant(f.get("not_before")),
                    started_at=as_instant(f.get("started_at")),
                    expected_duration_s=duration if isinstance(duration, int) else None,
                    source_initiator=f.get("source_initiator"),
                    local_data_loss=bool(f.get("local_data_loss")),
                    extended=f.get("extended") if isinstance(f.get("extended"), dict) else None,
                )
            except (KeyError, TypeError, ValueError):  # pydantic's ValidationError is a ValueError
                continue
            # the first status the predecessor saw, as far as the cause tells it (`_cause`)
            first_status = "Started" if last.cause == "host_failure" else "Scheduled"
            self.seen[key] = _Seen(last=last, first_status=first_status, started_at=last.started_at)

    def _event(
        self, j: Json, item: JsonObject, where: str, ctx: NormalizeContext, doc: JsonObject
    ) -> list[CloudSystemEvent]:
        event_id = j.req_str(item, "EventId", where)
        etype = j.req_str(item, "EventType", where)
        status = j.req_str(item, "EventStatus", where)
        resources_raw = item.get("Resources") or []
        resources = [r for r in j.arr(resources_raw, f"{where}.Resources") if isinstance(r, str) and r.strip()]
        if self.resource is not None:
            resources = [r for r in resources if r.lower() == self.resource.lower()]
            if not resources:
                return []
        elif not resources:
            fallback = ctx.instance_id or ctx.node
            if not fallback:
                raise j.fail("event has no Resources and no VM name was given (--instance-id)", f"{where}.Resources")
            resources = [fallback]
        phase = _PHASES.get(status.lower(), "unknown")
        not_before = j.time(item, "NotBefore", where)
        duration = j.opt_int(item, "DurationInSeconds", where)
        initiator = (j.opt_str(item, "EventSource", where) or "").lower() or None
        description = j.opt_str(item, "Description", where)
        out: list[CloudSystemEvent] = []
        for vm in dict.fromkeys(resources):
            key = f"{event_id.lower()}#{vm}"
            previous = self.seen.get(key)
            first_status = previous.first_status if previous else status
            action = ACTIONS.get(etype.lower(), "unknown")
            cause = _cause(etype=etype, initiator=initiator, first_status=first_status, action=action)
            started_at = previous.started_at if previous and previous.started_at else None
            if phase == "in_progress" and started_at is None:
                started_at = ctx.observed_at
            event = build_event(
                ctx=ctx,
                cloud="azure",
                channel="imds",
                provider_event_id=key,
                provider_event_type=etype,
                provider_status=status,
                action=action,
                cause=cause,
                phase=phase,
                instance_id=vm,
                raw=doc,
                resource_ref=vm,
                not_before=not_before,
                started_at=started_at,
                expected_duration_s=duration if duration is not None and duration >= 0 else None,
                description=description,
                source_initiator=initiator,
                ack=[AckOption(method="azure.StartRequests", valid_until=not_before)] if phase == "scheduled" else [],
                local_data_loss=etype.lower() in ("redeploy", "preempt"),
                extended={
                    "EventId": event_id,
                    "Resources": resources_raw,
                    "DocumentIncarnation": doc.get("DocumentIncarnation"),
                },
            )
            self.seen[key] = _Seen(last=event, first_status=first_status, started_at=started_at)
            out.append(event)
        return out

    def _ended(self, seen: _Seen, ctx: NormalizeContext) -> CloudSystemEvent:
        last = seen.last
        started_observed = last.phase == "in_progress"
        not_before = last.not_before
        if started_observed:
            phase: CloudPhase = "completed"
            why = "after Started"
        elif not_before is not None and ctx.observed_at >= not_before:
            phase = "completed"
            why = (
                "while Scheduled, after its NotBefore: taken to have run (Azure cancels only before the start); "
                "Started was not seen, verify the node"
            )
        else:
            phase = "canceled"
            why = "while Scheduled" + (", before its NotBefore" if not_before is not None else "")
        return build_event(
            ctx=ctx,
            cloud="azure",
            channel="imds",
            provider_event_id=last.provider_event_id,
            provider_event_type=last.provider_event_type,
            provider_status=None,
            action=last.action,
            cause=last.cause,
            phase=phase,
            instance_id=last.instance_id,
            raw=None,
            resource_ref=last.resource_ref,
            not_before=last.not_before,
            started_at=seen.started_at,
            finished_at=ctx.observed_at,
            expected_duration_s=last.expected_duration_s,
            description=f"synthesised: the event disappeared from the Scheduled Events document {why}",
            source_initiator=last.source_initiator,
            local_data_loss=last.local_data_loss,
            # the document it was read gone from: what a restarted poller starts from (`resume`)
            extended={
                **last.extended,
                "DocumentIncarnation": self.incarnation,
                "synthesized": True,
                "started_observed": started_observed,
            },
        )


def _cause(*, etype: str, initiator: str | None, first_status: str, action: CloudAction) -> CloudCause:
    if initiator == "user":
        return "user"
    if etype.lower() == "preempt":
        return "spot"
    if action == "unknown":
        return "unknown"
    if first_status.lower() == "started":
        return "host_failure"  # straight to Started with no Scheduled: a hardware failure (reference §3)
    return "planned_maintenance"


def normalize_document(
    document: object, ctx: NormalizeContext, *, resource: str | None = None
) -> list[CloudSystemEvent]:
    """One document on its own (no history: nothing can be synthesised)."""
    return AzureDocumentTracker(resource=resource).feed(document, ctx)
