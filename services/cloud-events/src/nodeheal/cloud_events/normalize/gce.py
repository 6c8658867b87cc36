"""GCE `instance/maintenance-event` metadata values → `CloudSystemEvent` (reference §4, §6).

The value is plain text: `NONE`, `MIGRATE_ON_HOST_MAINTENANCE` or `TERMINATE_ON_HOST_MAINTENANCE`,
about 60 s before the event, back to `NONE` when done. There is no event id, so the tracker makes one.

Decision — what one event (an **episode**) is, and its id. An episode is one run of a maintenance value: it
begins at the first read of a value other than `NONE` and ends at the first read of another value (`NONE`, or
the other maintenance value, which begins a new episode). Its id is
`<instance>:<value>:<first seen, to the second, UTC>` (`…:20260410T120950Z`); when that id is the one the
episode before it had (two episodes first seen within one second, or a `nodeheal normalize` file whose values
share one observation time), `-<n>` is added. So two maintenances of one instance are two events however
close together, and a re-read of the same episode keeps its id: the same answer polled again is the episode
the tracker holds (nothing new is said), and a poller restarted during the episode takes it over from the
seeded ledger (`GceMaintenanceTracker.resume`), so it keeps its id and the return to `NONE` closes it.
Before, the first-seen time was floored to 10 minutes, so a second maintenance within the same 10 minutes got
the first one's id and was dropped as a duplicate (ledger and `Nats-Msg-Id`).

`instance/upcoming-maintenance` (the planned window's `window_start_time`) is not used for the id: it exists
only on VMs offered advance notice of maintenance, it is another read per poll, and the window is a plan that
can be rescheduled while the value is what the VM actually gets; the first-seen time with the ledger's
take-over already separates episodes and keeps a restarted poller on its episode. Ids written before this
change (`…:20260410T1200Z`) are still taken over.

Decision — an episode of another VM of the same node is closed. A VM its instance group recreates under the
node's name (a spot VM with `automaticRestart=false` terminated for maintenance, GKE auto-repair) gets a new
numeric `instance/id`, and the episode id names the old one, so the new VM's poller does not take it over; before,
its `NONE` closed nothing and CLOUD kept the old VM's `terminate` `in_progress` on the node for good: the
remediator (which cannot tell the numeric ids apart: the inventory names GCE VMs by name) cordoned and drained the
recreated, healthy node and never gave it back. At its first poll the poller now closes every episode the seeded
ledger holds open on its node (`TransitionLedger.open_routes`: the node its messages went to) that names another
instance: `completed` (the machine it was about is gone; its maintenance is over on this node), with a description
and `extended` saying the VM was recreated and its new instance id (`GceMaintenanceTracker.close_others`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import UTC, datetime

from nodeheal.cloud_events.normalize.common import NormalizeContext, build_event
from nodeheal.cloud_events.normalize.errors import PayloadError
from nodeheal.cloud_events.normalize.ledger import OpenEvent
from nodeheal.schemas.cloud import CloudAction, CloudCause, CloudSystemEvent

SOURCE = "gce-metadata"
NONE = "NONE"
VALUES: dict[str, tuple[CloudAction, CloudCause]] = {
    "MIGRATE_ON_HOST_MAINTENANCE": ("live_migrate", "planned_maintenance"),
    "TERMINATE_ON_HOST_MAINTENANCE": ("terminate", "planned_maintenance"),
}
_VALUE = re.compile(r"^[A-Z][A-Z0-9_]{0,63}$")


def parse_value(text: str, *, where: str = "$") -> str:
    value = text.strip()
    if not _VALUE.fullmatch(value):
        shown = value if len(value) <= 60 else value[:57] + "..."
        raise PayloadError(
            f"{shown!r} is not a maintenance-event value (NONE, MIGRATE_ON_HOST_MAINTENANCE, "
            "TERMINATE_ON_HOST_MAINTENANCE)",
            source=SOURCE,
            where=where,
        )
    return value


STAMP = "%Y%m%dT%H%M%SZ"
"""The first-seen time in the synthetic id (UTC, to the second)."""
OLD_STAMP = "%Y%m%dT%H%MZ"
"""The first-seen time floored to 10 minutes, in ids written before episodes were told apart (still resumed)."""


def _stamp_time(stamp: str) -> datetime | None:
    """The time a stamp names (today's form or the old one; a `-<n>` suffix ignored), or None."""
    head = stamp.partition("-")[0]
    # by length: strptime reads a digit too few for %M or %S, so `…T1210Z` would also pass as today's form
    form = STAMP if len(head) == len("20260101T000000Z") else OLD_STAMP
    try:
        return datetime.strptime(head, form).replace(tzinfo=UTC)
    except ValueError:
        return None


def _running(
    ctx: NormalizeContext, *, instance: str, value: str, provider_event_id: str, started: datetime
) -> CloudSystemEvent:
    """The `in_progress` event of a maintenance value (seen now, or taken over from the ledger)."""
    action, cause = VALUES.get(value, ("unknown", "unknown"))
    return build_event(
        ctx=ctx,
        cloud="gcp",
        channel="metadata",
        provider_event_id=provider_event_id,
        provider_event_type=value,
        provider_status=value,
        action=action,
        cause=cause,
        phase="in_progress",
        instance_id=instance,
        raw=value,
        started_at=started,
        local_data_loss=action == "terminate",
        description="host maintenance announced by the metadata server (about 60 s notice)",
    )


@dataclass(slots=True)
class GceMaintenanceTracker:
    """Feeds values in order; a change to NONE completes the event that was running."""

    current: CloudSystemEvent | None = None
    previous_id: str | None = None
    """The id of the last episode this tracker began or took over: the next one never gets it again."""
    closing: list[CloudSystemEvent] = field(default_factory=list)
    """Ends of another VM's episodes on this node (`close_others`), said by the next `feed`."""

    def feed(self, text: str, ctx: NormalizeContext, *, where: str = "$") -> list[CloudSystemEvent]:
        value = parse_value(text, where=where)
        out: list[CloudSystemEvent] = self.closing
        self.closing = []
        if self.current is not None and self.current.provider_event_type != value:
            out.append(self._completed(self.current, ctx))
            self.current = None
        if value == NONE or self.current is not None:
            return out
        instance = ctx.instance_id or ctx.node
        if not instance:
            raise PayloadError(
                "the value names no instance; give the instance id (--instance-id)", source=SOURCE, where=where
            )
        base = f"{instance}:{value}:{ctx.observed_at.astimezone(UTC).strftime(STAMP)}"
        provider_event_id, n = base, 1
        while provider_event_id == self.previous_id or (
            self.previous_id is not None and self.previous_id.startswith(f"{provider_event_id}-")
        ):
            n += 1
            provider_event_id = f"{base}-{n}"
        self.current = _running(
            ctx, instance=instance, value=value, provider_event_id=provider_event_id, started=ctx.observed_at
        )
        self.previous_id = provider_event_id
        out.append(self.current)
        return out

    def resume(self, open_ids: list[str], ctx: NormalizeContext) -> None:
        """Take over the event a previous poller of this instance left open (`open_ids`: the ids the seeded
        ledger holds without a terminal phase). A restarted poller then continues it: the same value keeps
        its id (instead of a new one, which left the old event `in_progress` for good), and `NONE` completes
        it. Several open (should not happen): the newest by the time its stamp names."""
        instance = ctx.instance_id or ctx.node
        if self.current is not None or not instance:
            return
        mine: list[tuple[datetime, str, str]] = []
        for pid in open_ids:
            head, sep, stamp = pid.rpartition(":")
            owner, sep2, value = head.rpartition(":")
            if sep and sep2 and owner == instance and value in VALUES:
                started = _stamp_time(stamp)
                mine.append((started or ctx.observed_at, value, pid))
        if not mine:
            return
        started, value, pid = max(mine)
        self.current = _running(ctx, instance=instance, value=value, provider_event_id=pid, started=started)
        self.previous_id = pid

    def close_others(self, open_events: list[OpenEvent], ctx: NormalizeContext) -> None:
        """Close the episodes left open on this node (`ctx.node`: the node their latest message went to) by
        another instance: the VM recreated under the node's name (a new numeric `instance/id`). Their ends
        (`completed`) come first out of the next `feed`. Episodes of this instance are `resume`'s."""
        instance = ctx.instance_id or ctx.node
        if not instance or not ctx.node:
            return
        for event in open_events:
            head, sep, stamp = event.provider_event_id.rpartition(":")
            owner, sep2, value = head.rpartition(":")
            if not (sep and sep2 and owner and value in VALUES) or event.node != ctx.node or owner == instance:
                continue
            action, cause = VALUES[value]
            self.closing.append(
                build_event(
                    ctx=ctx,
                    cloud="gcp",
                    channel="metadata",
                    provider_event_id=event.provider_event_id,
                    provider_event_type=value,
                    provider_status=None,
                    action=action,
                    cause=cause,
                    phase="completed",
                    instance_id=owner,
                    raw=None,
                    started_at=_stamp_time(stamp),
                    finished_at=ctx.observed_at,
                    local_data_loss=action == "terminate",
                    description=(
                        f"the VM was recreated: new instance id {instance} on node {ctx.node}; the maintenance "
                        f"of instance {owner} is over here"
                    ),
                    extended={"closed_because": "vm_recreated", "new_instance_id": instance},
                )
            )

    def _completed(self, current: CloudSystemEvent, ctx: NormalizeContext) -> CloudSystemEvent:
        return build_event(
            ctx=ctx,
            cloud="gcp",
            channel="metadata",
            provider_event_id=current.provider_event_id,
            provider_event_type=current.provider_event_type,
            provider_status=NONE,
            action=current.action,
            cause=current.cause,
            phase="completed",
            instance_id=current.instance_id,
            raw=NONE,
            started_at=current.started_at,
            finished_at=ctx.observed_at,
            local_data_loss=current.local_data_loss,
            description="maintenance-event returned to NONE",
        )


def normalize_value(text: str, ctx: NormalizeContext) -> list[CloudSystemEvent]:
    return GceMaintenanceTracker().feed(text, ctx)
