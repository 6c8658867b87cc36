"""GCE `instance/maintenance-event` metadata values → `CloudSystemEvent` (reference §4, §6).

The value is plain text: `NONE`, `MIGRATE_ON_HOST_MAINTENANCE` or `TERMINATE_ON_HOST_MAINTENANCE`,
about 60 s before the event, back to `NONE` when done. There is no event id: the synthetic id is
`<instance>:<value>:<first seen, floored to 10 minutes>`; a poller restarted during the event takes the
open event over from the seeded ledger (`GceMaintenanceTracker.resume`), so it keeps its id and the return
to `NONE` closes it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from nodeheal.cloud_events.normalize.common import NormalizeContext, build_event
from nodeheal.cloud_events.normalize.errors import PayloadError
from nodeheal.schemas.cloud import CloudAction, CloudCause, CloudSystemEvent

SOURCE = "gce-metadata"
NONE = "NONE"
VALUES: dict[str, tuple[CloudAction, CloudCause]] = {
    "MIGRATE_ON_HOST_MAINTENANCE": ("live_migrate", "planned_maintenance"),
    "TERMINATE_ON_HOST_MAINTENANCE": ("terminate", "planned_maintenance"),
}
_VALUE = re.compile(r"^[A-Z][A-Z0-9_]{0,63}$")
ID_BUCKET = timedelta(minutes=10)


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


def _floor(moment: datetime) -> datetime:
    step = int(ID_BUCKET.total_seconds())
    epoch = int(moment.timestamp())
    return datetime.fromtimestamp(epoch - epoch % step, tz=moment.tzinfo)


STAMP = "%Y%m%dT%H%MZ"
"""The first-seen time in the synthetic id, floored to `ID_BUCKET`."""


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

    def feed(self, text: str, ctx: NormalizeContext, *, where: str = "$") -> list[CloudSystemEvent]:
        value = parse_value(text, where=where)
        out: list[CloudSystemEvent] = []
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
        stamp = _floor(ctx.observed_at).strftime(STAMP)
        self.current = _running(
            ctx,
            instance=instance,
            value=value,
            provider_event_id=f"{instance}:{value}:{stamp}",
            started=ctx.observed_at,
        )
        out.append(self.current)
        return out

    def resume(self, open_ids: list[str], ctx: NormalizeContext) -> None:
        """Take over the event a previous poller of this instance left open (`open_ids`: the ids the seeded
        ledger holds without a terminal phase). A restarted poller then continues it: the same value keeps
        its id (instead of a new one when the restart crossed a 10-minute boundary, which left the old event
        `in_progress` for good), and `NONE` completes it. Several open (should not happen): the newest."""
        instance = ctx.instance_id or ctx.node
        if self.current is not None or not instance:
            return
        mine: list[tuple[str, str, str]] = []
        for pid in open_ids:
            head, sep, stamp = pid.rpartition(":")
            owner, sep2, value = head.rpartition(":")
            if sep and sep2 and owner == instance and value in VALUES:
                mine.append((stamp, value, pid))
        if not mine:
            return
        stamp, value, pid = max(mine)
        try:
            started = datetime.strptime(stamp, STAMP).replace(tzinfo=UTC)
        except ValueError:
            started = ctx.observed_at
        self.current = _running(ctx, instance=instance, value=value, provider_event_id=pid, started=started)

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
