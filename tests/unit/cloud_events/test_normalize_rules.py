"""Time formats, Azure disappearance synthesis, GCE returns to NONE, the transition ledger, unknown codes."""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime, timedelta

import prometheus_client
import pytest

from nodeheal.cloud_events.ingest.sink import check_ledger_bound
from nodeheal.cloud_events.normalize import (
    AzureDocumentTracker,
    GceMaintenanceTracker,
    NormalizeContext,
    PayloadError,
    TransitionLedger,
    normalize,
    normalize_stream,
)
from nodeheal.cloud_events.normalize.times import parse_time

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2019-04-12T01:01:01Z", datetime(2019, 4, 12, 1, 1, 1, tzinfo=UTC)),
        ("20190409T121826.922+0800", datetime(2019, 4, 9, 4, 18, 26, 922000, tzinfo=UTC)),
        ("2020-11-19T21:04:41+08:00", datetime(2020, 11, 19, 13, 4, 41, tzinfo=UTC)),
        ("2020-11-19T21:04:42.179PRC", datetime(2020, 11, 19, 13, 4, 42, 179000, tzinfo=UTC)),
        ("2020-11-19T21:04:42Z", datetime(2020, 11, 19, 21, 4, 42, tzinfo=UTC)),
        ("1552199984000", datetime(2019, 3, 10, 6, 39, 44, tzinfo=UTC)),
        (1552199984000, datetime(2019, 3, 10, 6, 39, 44, tzinfo=UTC)),
        ("21 Jan 2019 09:00:43 GMT", datetime(2019, 1, 21, 9, 0, 43, tzinfo=UTC)),
        ("2019-03-14T20:00:00.000Z", datetime(2019, 3, 14, 20, 0, tzinfo=UTC)),
        ("Sat, 05 Jun 2016 15:10:09 GMT", datetime(2016, 6, 5, 15, 10, 9, tzinfo=UTC)),
        ("Mon, 19 Sep 2016 18:29:47 GMT", datetime(2016, 9, 19, 18, 29, 47, tzinfo=UTC)),
        # a real Azure sample with the wrong weekday (11 Apr 2026 is a Saturday): the date wins
        ("Mon, 11 Apr 2026 22:26:58 GMT", datetime(2026, 4, 11, 22, 26, 58, tzinfo=UTC)),
        ("2026-05-01T10:00:00.123456+00:00", datetime(2026, 5, 1, 10, 0, 0, 123456, tzinfo=UTC)),
        ("", None),
        (None, None),
    ],
)
def test_every_time_format_parses(text: object, expected: datetime | None) -> None:
    assert parse_time(text, source="test", where="$.t") == expected


@pytest.mark.parametrize(
    "text", ["2019-04-12T01:01:01", "yesterday", "32 Jan 2019 09:00:43 GMT", "99999999999999", True]
)
def test_bad_time_is_a_payload_error_naming_the_place(text: object) -> None:
    with pytest.raises(PayloadError) as info:
        parse_time(text, source="alibaba-cms", where="$.content.notBefore")
    assert info.value.where == "$.content.notBefore"
    assert "alibaba-cms payload at $.content.notBefore" in str(info.value)


def _doc(
    incarnation: int, *events: tuple[str, str, str], not_before: str = "Mon, 19 Sep 2016 18:29:47 GMT"
) -> dict[str, object]:
    return {
        "DocumentIncarnation": incarnation,
        "Events": [
            {
                "EventId": eid,
                "EventType": etype,
                "ResourceType": "VirtualMachine",
                "Resources": ["vm-a", "vm-b"],
                "EventStatus": status,
                "NotBefore": not_before if status == "Scheduled" else "",
                "EventSource": "Platform",
                "DurationInSeconds": -1,
            }
            for eid, etype, status in events
        ],
    }


def test_azure_event_that_disappears_after_started_is_completed() -> None:
    tracker = AzureDocumentTracker(resource="vm-a")
    first = tracker.feed(_doc(1, ("E1", "Reboot", "Scheduled")), NormalizeContext(observed_at=T0, node="n1"))
    second = tracker.feed(
        _doc(2, ("E1", "Reboot", "Started")), NormalizeContext(observed_at=T0 + timedelta(minutes=15), node="n1")
    )
    third = tracker.feed(_doc(3), NormalizeContext(observed_at=T0 + timedelta(minutes=20), node="n1"))
    assert [(e.phase, e.instance_id) for e in first] == [("scheduled", "vm-a")]
    assert [e.phase for e in second] == ["in_progress"]
    assert second[0].cause == "planned_maintenance"
    assert [(e.phase, e.action, e.provider_event_id) for e in third] == [("completed", "reboot", "e1#vm-a")]
    assert third[0].finished_at == T0 + timedelta(minutes=20)
    assert third[0].started_at == T0 + timedelta(minutes=15)
    assert third[0].extended["synthesized"] is True
    assert third[0].extended["started_observed"] is True
    assert third[0].is_terminal


def test_an_azure_incarnation_that_went_back_for_good_is_taken_after_a_while() -> None:
    """Older documents are ignored (a lagging relay). But should the counter itself go back (not documented by
    Azure; a guard), ignoring it for ever would hide a new Reboot until the counter climbed past the old one:
    once every document for INCARNATION_RESET_S in a row is older, the lower counter is taken."""
    from nodeheal.cloud_events.normalize.azure import INCARNATION_RESET_S

    tracker = AzureDocumentTracker(resource="vm-a")
    at = T0
    tracker.feed(_doc(40, ("E1", "Freeze", "Scheduled"), not_before=LATER), NormalizeContext(observed_at=at))
    late = _doc(3, ("E7", "Reboot", "Scheduled"), not_before=LATER)
    assert tracker.feed(late, NormalizeContext(observed_at=at + timedelta(seconds=10))) == []
    assert tracker.feed(late, NormalizeContext(observed_at=at + timedelta(seconds=INCARNATION_RESET_S - 1))) == []
    taken = tracker.feed(late, NormalizeContext(observed_at=at + timedelta(seconds=INCARNATION_RESET_S + 10)))
    assert sorted((e.provider_event_id, e.phase) for e in taken) == [("e1#vm-a", "canceled"), ("e7#vm-a", "scheduled")]
    assert tracker.incarnation == 3 and tracker.older_documents == 2
    # a newer document in between starts the count again
    tracker.feed(_doc(4), NormalizeContext(observed_at=at + timedelta(seconds=INCARNATION_RESET_S + 20)))
    assert tracker.feed(_doc(2), NormalizeContext(observed_at=at + timedelta(seconds=INCARNATION_RESET_S + 30))) == []


def test_an_azure_tracker_resumed_with_an_incarnation_ignores_older_documents() -> None:
    """`resume(..., incarnation=)`: the newest incarnation the VM's reports in CLOUD carried is taken as the newest
    read (an older document right after a restart is ignored); a lower one does not lower what was read; a synthesised
    end carries the incarnation of the document it was read gone from."""
    tracker = AzureDocumentTracker(resource="vm-a")
    tracker.resume([], NormalizeContext(observed_at=T0), incarnation=9)
    assert tracker.incarnation == 9
    assert tracker.feed(_doc(8, ("E1", "Reboot", "Scheduled")), NormalizeContext(observed_at=T0)) == []
    assert tracker.older_documents == 1
    assert [
        e.phase for e in tracker.feed(_doc(10, ("E1", "Reboot", "Scheduled")), NormalizeContext(observed_at=T0))
    ] == ["scheduled"]
    tracker.resume([], NormalizeContext(observed_at=T0), incarnation=2)
    assert tracker.incarnation == 10
    (ended,) = tracker.feed(_doc(11), NormalizeContext(observed_at=T0))
    assert ended.extended["DocumentIncarnation"] == 11


LATER = "Sun, 01 Mar 2026 14:00:00 GMT"  # T0 + 2 h: a NotBefore still ahead of the observations below


def test_azure_event_that_disappears_before_its_not_before_is_canceled() -> None:
    tracker = AzureDocumentTracker()
    tracker.feed(_doc(5, ("E2", "Redeploy", "Scheduled"), not_before=LATER), NormalizeContext(observed_at=T0))
    gone = tracker.feed(_doc(6), NormalizeContext(observed_at=T0 + timedelta(hours=1)))
    assert sorted((e.instance_id, e.phase, e.action) for e in gone) == [
        ("vm-a", "canceled", "redeploy"),
        ("vm-b", "canceled", "redeploy"),
    ]
    assert all(e.local_data_loss for e in gone)
    assert all(e.extended["started_observed"] is False for e in gone)


def test_azure_event_that_disappears_after_its_not_before_unseen_started_has_ended_not_canceled() -> None:
    """Seen `Scheduled` (NotBefore 14:00), gone at 14:10 without a poll having seen `Started` (a Freeze pauses the
    VM and its poller with it; a short event can begin and end between two polls). Azure removes an event from
    the document once it has completed, and cancels one only before it starts: past its NotBefore it most likely
    ran. Before, it was published `canceled`, and the remediator took the node for untouched; now it has ended
    (`completed`), saying that Started was not seen, so the node is verified."""
    tracker = AzureDocumentTracker(resource="vm-a")
    tracker.feed(_doc(1, ("E6", "Freeze", "Scheduled"), not_before=LATER), NormalizeContext(observed_at=T0))
    gone = tracker.feed(_doc(2), NormalizeContext(observed_at=T0 + timedelta(hours=2, minutes=10)))
    assert [(e.phase, e.action, e.provider_event_id) for e in gone] == [("completed", "freeze", "e6#vm-a")]
    ended = gone[0]
    assert ended.is_terminal
    assert ended.started_at is None
    assert ended.finished_at == T0 + timedelta(hours=2, minutes=10)
    assert ended.extended["synthesized"] is True
    assert ended.extended["started_observed"] is False
    assert ended.description is not None and "Started was not seen" in ended.description


def test_azure_started_without_scheduled_is_a_host_failure_and_old_documents_synthesise_nothing() -> None:
    tracker = AzureDocumentTracker(resource="vm-b")
    started = tracker.feed(_doc(7, ("E3", "Reboot", "Started")), NormalizeContext(observed_at=T0))
    assert [(e.phase, e.cause) for e in started] == [("in_progress", "host_failure")]
    assert tracker.feed(_doc(6), NormalizeContext(observed_at=T0)) == []  # late, older incarnation


def test_azure_other_vms_events_are_not_ours() -> None:
    tracker = AzureDocumentTracker(resource="vm-z")
    assert tracker.feed(_doc(1, ("E4", "Freeze", "Scheduled")), NormalizeContext(observed_at=T0)) == []


def test_azure_documents_in_one_file_are_diffed(tmp_path: object) -> None:
    lines = "\n".join(
        json.dumps(d) for d in [_doc(1, ("E5", "Reboot", "Scheduled")), _doc(2, ("E5", "Reboot", "Started")), _doc(3)]
    )
    events = normalize_stream("azure-imds", lines.encode(), NormalizeContext(observed_at=T0))
    assert [(e.instance_id, e.phase) for e in events] == [
        ("vm-a", "scheduled"),
        ("vm-b", "scheduled"),
        ("vm-a", "in_progress"),
        ("vm-b", "in_progress"),
        ("vm-a", "completed"),
        ("vm-b", "completed"),
    ]
    as_array = json.dumps([_doc(1, ("E5", "Reboot", "Scheduled"), not_before=LATER), _doc(2)]).encode()
    assert [e.phase for e in normalize_stream("auto", as_array, NormalizeContext(observed_at=T0))] == [
        "scheduled"
    ] * 2 + ["canceled"] * 2


def test_gce_value_back_to_none_completes_the_same_event() -> None:
    tracker = GceMaintenanceTracker()
    ctx = NormalizeContext(observed_at=T0, instance_id="123")
    start = tracker.feed("MIGRATE_ON_HOST_MAINTENANCE\n", ctx)
    again = tracker.feed(
        "MIGRATE_ON_HOST_MAINTENANCE", NormalizeContext(observed_at=T0 + timedelta(seconds=5), instance_id="123")
    )
    done = tracker.feed("NONE", NormalizeContext(observed_at=T0 + timedelta(seconds=90), instance_id="123"))
    assert [(e.phase, e.action) for e in start] == [("in_progress", "live_migrate")]
    assert again == []
    assert [(e.phase, e.provider_event_id) for e in done] == [("completed", start[0].provider_event_id)]
    assert done[0].finished_at == T0 + timedelta(seconds=90)


def test_gce_two_maintenance_episodes_within_ten_minutes_get_two_ids() -> None:
    """MIGRATE at 12:01, back to NONE at 12:02, MIGRATE again at 12:05: two episodes of one instance. Before, the
    id floored the first-seen time to 10 minutes, so both were `123:MIGRATE_ON_HOST_MAINTENANCE:…T1200Z` and the
    second was dropped as a duplicate (ledger, `Nats-Msg-Id`). A repeated read of a running episode says
    nothing new and keeps its id."""
    tracker = GceMaintenanceTracker()

    def at(minutes: float) -> NormalizeContext:
        return NormalizeContext(observed_at=T0 + timedelta(minutes=minutes), instance_id="123")

    first = tracker.feed("MIGRATE_ON_HOST_MAINTENANCE", at(1))
    assert tracker.feed("MIGRATE_ON_HOST_MAINTENANCE", at(1.1)) == []
    first_done = tracker.feed("NONE", at(2))
    second = tracker.feed("MIGRATE_ON_HOST_MAINTENANCE", at(5))
    assert tracker.feed("MIGRATE_ON_HOST_MAINTENANCE", at(5.1)) == []
    second_done = tracker.feed("NONE", at(6))
    assert [e.phase for e in first + first_done + second + second_done] == [
        "in_progress",
        "completed",
        "in_progress",
        "completed",
    ]
    assert first[0].provider_event_id == first_done[0].provider_event_id
    assert second[0].provider_event_id == second_done[0].provider_event_id
    assert first[0].provider_event_id != second[0].provider_event_id
    assert first[0].id != second[0].id and first_done[0].id != second_done[0].id  # the Nats-Msg-Id
    ledger = TransitionLedger()
    assert [ledger.admit(e) for e in first + first_done + second + second_done] == ["new"] * 4


def test_gce_episodes_read_at_one_instant_still_get_two_ids() -> None:
    """`nodeheal normalize` reads a file of values with one observation time: NONE between two MIGRATEs still
    separates two episodes, whose ids must differ although their first-seen times are equal."""
    events = normalize_stream(
        "gce-metadata",
        b"MIGRATE_ON_HOST_MAINTENANCE\nNONE\nMIGRATE_ON_HOST_MAINTENANCE\nNONE\n",
        NormalizeContext(observed_at=T0, instance_id="123"),
    )
    assert [e.phase for e in events] == ["in_progress", "completed", "in_progress", "completed"]
    assert len({e.provider_event_id for e in events}) == 2


def test_gce_resume_takes_over_the_open_episode_whatever_the_stamp_form() -> None:
    """A restarted poller continues the open episode the seeded ledger names, with ids of today's form (first
    seen to the second) and of the old one (floored to 10 minutes, written before the upgrade): the newest wins,
    by time, not by the text of the stamp."""
    ctx = NormalizeContext(observed_at=T0 + timedelta(minutes=30), instance_id="123")
    tracker = GceMaintenanceTracker()
    tracker.resume(
        ["123:MIGRATE_ON_HOST_MAINTENANCE:20260301T1210Z", "123:MIGRATE_ON_HOST_MAINTENANCE:20260301T120950Z"], ctx
    )
    assert tracker.current is not None
    assert tracker.current.provider_event_id == "123:MIGRATE_ON_HOST_MAINTENANCE:20260301T1210Z"
    assert tracker.current.started_at == T0 + timedelta(minutes=10)
    assert tracker.feed("MIGRATE_ON_HOST_MAINTENANCE", ctx) == []
    done = tracker.feed("NONE", ctx)
    assert [(e.phase, e.provider_event_id) for e in done] == [
        ("completed", "123:MIGRATE_ON_HOST_MAINTENANCE:20260301T1210Z")
    ]
    again = GceMaintenanceTracker()
    again.resume(["123:MIGRATE_ON_HOST_MAINTENANCE:20260301T120950Z"], ctx)
    assert again.current is not None
    assert again.current.started_at == T0 + timedelta(minutes=9, seconds=50)


def test_ledger_terminal_is_never_overwritten_by_a_late_non_terminal() -> None:
    ledger = TransitionLedger()
    assert ledger.record(cloud="alibaba", provider_event_id="e-1", phase="scheduled") == "new"
    assert ledger.record(cloud="alibaba", provider_event_id="e-1", phase="scheduled") == "duplicate"
    assert ledger.open_events("alibaba") == ["e-1"]
    assert ledger.record(cloud="alibaba", provider_event_id="e-1", phase="completed") == "new"
    assert ledger.record(cloud="alibaba", provider_event_id="e-1", phase="in_progress") == "stale"
    assert ledger.record(cloud="alibaba", provider_event_id="e-1", phase="scheduled") == "duplicate"
    assert ledger.record(cloud="alibaba", provider_event_id="e-1", phase="completed") == "duplicate"
    assert ledger.open_events("alibaba") == []
    # the same id in another cloud is another entity
    assert ledger.record(cloud="aws", provider_event_id="e-1", phase="in_progress") == "new"


def test_ledger_keeps_what_an_open_event_last_said_until_it_closes() -> None:
    """`open_reports`: what a restarted node-local poller takes over. The report of the phase where the event
    stands (not a late earlier phase's), only while it is open."""
    ledger = TransitionLedger()
    ledger.record(cloud="azure", provider_event_id="e#vm", phase="scheduled")
    ledger.reported(cloud="azure", provider_event_id="e#vm", phase="scheduled", fields={"action": "reboot", "raw": {}})
    ledger.record(cloud="azure", provider_event_id="e#vm", phase="in_progress")
    ledger.reported(cloud="azure", provider_event_id="e#vm", phase="in_progress", fields={"started_at": "t"})
    ledger.reported(cloud="azure", provider_event_id="e#vm", phase="scheduled", fields={"action": "freeze"})  # late
    (report,) = ledger.open_reports("azure")
    assert (report.provider_event_id, report.phase, dict(report.fields)) == ("e#vm", "in_progress", {"started_at": "t"})
    assert ledger.open_reports("gcp") == []
    ledger.record(cloud="azure", provider_event_id="e#vm", phase="completed")
    assert ledger.open_reports("azure") == []


def test_ledger_keeps_the_highest_azure_incarnation_per_instance() -> None:
    """`incarnation`: the highest `extended.DocumentIncarnation` an instance's reports carried, open or closed, in
    the forms CLOUD holds it (a number, a numeric string); a lower one later does not lower it; the instance
    matched whatever its case; a report without one says nothing."""
    ledger = TransitionLedger()
    ledger.noted(cloud="azure", fields={"instance_id": "VM-1", "extended": {"DocumentIncarnation": 4}})
    ledger.noted(cloud="azure", fields={"instance_id": "vm-1", "extended": {"DocumentIncarnation": "7"}})
    ledger.noted(cloud="azure", fields={"instance_id": "vm-1", "extended": {"DocumentIncarnation": 5}})
    ledger.noted(cloud="azure", fields={"instance_id": "vm-2", "extended": {"EventId": "x"}})
    ledger.noted(cloud="azure", fields={"instance_id": "vm-2", "extended": {"DocumentIncarnation": True}})
    assert ledger.incarnation("azure", "Vm-1") == 7
    assert ledger.incarnation("azure", "vm-2") is None
    assert ledger.incarnation("gcp", "vm-1") is None


def test_ledger_is_bounded_by_forgetting_closed_events_first() -> None:
    ledger = TransitionLedger(max_entities=100)
    ledger.record(cloud="aws", provider_event_id="open-old", phase="scheduled")  # the oldest entry, still open
    for n in range(250):
        ledger.record(cloud="aws", provider_event_id=f"x{n}", phase="scheduled")
        ledger.record(cloud="aws", provider_event_id=f"x{n}", phase="completed")
    assert len(ledger) == 100
    assert ledger.open_events("aws") == ["open-old"]
    assert ledger.verdict(cloud="aws", provider_event_id="x249", phase="completed") == "duplicate"
    assert ledger.verdict(cloud="aws", provider_event_id="x0", phase="completed") == "new"  # forgotten: it was closed


def test_a_closed_event_reported_again_is_forgotten_last() -> None:
    ledger = TransitionLedger(max_entities=100)
    for n in range(100):
        ledger.record(cloud="aws", provider_event_id=f"x{n}", phase="completed")
    ledger.touch(cloud="aws", provider_event_id="x0")  # a duplicate report of the oldest
    ledger.record(cloud="aws", provider_event_id="x100", phase="completed")
    assert ledger.verdict(cloud="aws", provider_event_id="x0", phase="completed") == "duplicate"
    assert ledger.verdict(cloud="aws", provider_event_id="x1", phase="completed") == "new"


def test_open_events_alone_over_the_bound_are_all_kept_and_said(caplog: pytest.LogCaptureFixture) -> None:
    ledger = TransitionLedger(max_entities=100)
    assert check_ledger_bound(ledger) is False
    for n in range(101):
        ledger.record(cloud="aws", provider_event_id=f"x{n}", phase="scheduled")
    assert len(ledger) == 101
    assert ledger.over_bound
    with caplog.at_level(logging.ERROR, logger="nodeheal.cloud_events.ingest"):
        assert check_ledger_bound(ledger) is True
        assert check_ledger_bound(ledger) is True  # said once per crossing, not per event
    (said,) = caplog.records
    assert "more open cloud events than ledger_max_entities" in said.getMessage()
    assert prometheus_client.REGISTRY.get_sample_value("nodeheal_ingest_ledger_over_bound") == 1
    assert prometheus_client.REGISTRY.get_sample_value("nodeheal_ingest_ledger_open_events") == 101
    ledger.record(cloud="aws", provider_event_id="x0", phase="completed")
    assert check_ledger_bound(ledger) is False
    assert prometheus_client.REGISTRY.get_sample_value("nodeheal_ingest_ledger_over_bound") == 0


@pytest.mark.parametrize(
    ("code", "status", "action", "cause", "phase"),
    [
        ("SystemMaintenance.Reboot", "Inquiring", "reboot", "planned_maintenance", "pending_approval"),
        ("SystemFailure.Redeploy", "Executed", "redeploy", "host_failure", "completed"),
        ("InstanceFailure.Reboot", "Failed", "reboot", "guest_failure", "failed"),
        ("SystemFailure.Delete", "Canceled", "terminate", "host_failure", "canceled"),
        (
            "SystemMaintenance.RebootAndReInitErrorDisk",
            "Inquiring",
            "reboot",
            "planned_maintenance",
            "pending_approval",
        ),
        ("SystemMaintenance.RebootAndIsolateErrorDisk", "Scheduled", "reboot", "planned_maintenance", "scheduled"),
        ("SystemMaintenance.ReInitErrorDisk", "Inquiring", "disk_repair", "planned_maintenance", "pending_approval"),
        ("AccountUnbalanced.Delete", "Scheduled", "terminate", "billing", "scheduled"),
        ("SomethingNew.Teleport", "Pondering", "unknown", "unknown", "unknown"),
    ],
)
def test_alibaba_codes_and_unknowns(code: str, status: str, action: str, cause: str, phase: str) -> None:
    payload = {
        "name": f"Instance:{code}:{status}",
        "content": {"eventId": "e-x", "eventType": code, "eventStatus": status, "instanceId": "i-1"},
    }
    (event,) = normalize("alibaba-cms", payload, NormalizeContext(observed_at=T0))
    assert (event.action, event.cause, event.phase) == (action, cause, phase)


@pytest.mark.parametrize(
    ("code", "detail", "loss"),
    [
        ("SystemMaintenance.RebootAndIsolateErrorDisk", "isolate", False),
        ("SystemMaintenance.RebootAndReInitErrorDisk", "reinit", True),
    ],
)
def test_alibaba_reboot_and_error_disk_is_a_reboot_that_keeps_the_disk_detail(
    code: str, detail: str, loss: bool
) -> None:
    """The instance restarts: `reboot` (the remediator drains ahead of it; as `disk_repair` it did not), with
    which disk and what is done to it kept, on every channel, and the re-init's data loss said."""
    cms = {
        "name": f"Instance:{code}:Inquiring",
        "content": {
            "eventId": "e-d",
            "eventType": code,
            "eventStatus": "Inquiring",
            "instanceId": "i-1",
            "diskId": "d-bp1",
            "device": "/dev/vdb",
        },
    }
    api = {
        "InstanceSystemEventSet": {
            "InstanceSystemEventType": [
                {
                    "EventId": "e-d",
                    "InstanceId": "i-1",
                    "EventType": {"Name": code},
                    "EventCycleStatus": {"Name": "Inquiring"},
                    "ExtendedAttribute": {"DiskId": "d-bp1", "Device": "/dev/vdb"},
                }
            ]
        }
    }
    ctx = NormalizeContext(observed_at=T0)
    (by_cms,) = normalize("alibaba-cms", cms, ctx)
    (by_api,) = normalize("alibaba-api", api, ctx)
    assert (by_cms.action, by_api.action) == ("reboot", "reboot")
    assert by_cms.extended == {"error_disk": detail, "diskId": "d-bp1", "device": "/dev/vdb"}
    assert by_api.extended == {"DiskId": "d-bp1", "Device": "/dev/vdb", "error_disk": detail}
    assert (by_cms.local_data_loss, by_api.local_data_loss) == (loss, loss)
    assert by_cms.provider_event_type == code


def test_status_from_content_not_from_name() -> None:
    # the documentation's own Avoided sample still says ":Scheduled" in name
    payload = {
        "name": "Instance:SystemMaintenance.Reboot:Scheduled",
        "content": {
            "eventId": "e-y",
            "eventType": "SystemMaintenance.Reboot",
            "eventStatus": "Avoided",
            "instanceId": "i-1",
        },
    }
    (event,) = normalize("alibaba-cms", payload, NormalizeContext(observed_at=T0))
    assert event.phase == "avoided"


def test_aws_imds_phase_depends_on_not_before_and_state() -> None:
    item = {
        "NotBefore": "21 Jan 2019 09:00:43 GMT",
        "Code": "instance-reboot",
        "EventId": "instance-event-1",
        "State": "active",
    }
    before = NormalizeContext(observed_at=datetime(2019, 1, 20, tzinfo=UTC), instance_id="i-9")
    assert normalize("aws-imds", [item], before)[0].phase == "scheduled"
    assert [a.method for a in normalize("aws-imds", [item], before)[0].ack] == ["aws.RebootInstances"]
    assert normalize("aws-imds", [{**item, "State": "completed"}], before)[0].phase == "completed"
    assert normalize("aws-imds", [{**item, "State": "canceled"}], before)[0].phase == "canceled"


def test_auto_cannot_tell_says_so() -> None:
    with pytest.raises(PayloadError, match="pass --source"):
        normalize("auto", {"hello": "world"}, NormalizeContext(observed_at=T0))


def test_ledger_a_new_start_time_is_a_reschedule_an_old_or_near_one_a_duplicate() -> None:
    at = datetime(2026, 4, 21, 9, 0, tzinfo=UTC)
    ledger = TransitionLedger()
    assert ledger.record(cloud="aws", provider_event_id="e-9", phase="scheduled", not_before=at) == "new"
    # another channel's inferred time, seconds away: the same schedule
    assert (
        ledger.record(cloud="aws", provider_event_id="e-9", phase="scheduled", not_before=at + timedelta(seconds=5))
        == "duplicate"
    )
    assert ledger.record(cloud="aws", provider_event_id="e-9", phase="scheduled", not_before=None) == "duplicate"
    earlier = at - timedelta(days=6)  # ModifyInstanceEventStartTime, or the platform moving it
    assert ledger.record(cloud="aws", provider_event_id="e-9", phase="scheduled", not_before=earlier) == "rescheduled"
    # a slow channel still reporting the first time does not move it back; the stored form (ISO text) is read too
    assert (
        ledger.record(cloud="aws", provider_event_id="e-9", phase="scheduled", not_before="2026-04-21T09:00:00Z")
        == "duplicate"
    )
    assert ledger.record(cloud="aws", provider_event_id="e-9", phase="completed") == "new"
    # after the end nothing non-terminal is published, moved or not
    later = at + timedelta(days=1)
    assert ledger.record(cloud="aws", provider_event_id="e-9", phase="scheduled", not_before=later) == "duplicate"
    assert ledger.record(cloud="aws", provider_event_id="e-9", phase="in_progress", not_before=later) == "stale"


def test_ledger_a_channel_that_moves_its_own_time_back_is_a_reschedule() -> None:
    """AWS `ModifyInstanceEventStartTime` Jan 10 → Jan 13, then back to Jan 10, all through IMDS. Before, the
    move back was a duplicate (Jan 10 had been said): CLOUD's latest report stayed Jan 13 and the node was not
    drained before the reboot on Jan 10. A slow second channel still saying Jan 10 after the first move is a
    duplicate, as before."""
    jan10 = datetime(2027, 1, 10, 3, 0, tzinfo=UTC)
    jan13 = jan10 + timedelta(days=3)
    ledger = TransitionLedger()

    def say(channel: str, start: datetime) -> str:
        return ledger.record(cloud="aws", provider_event_id="e-7", phase="scheduled", not_before=start, channel=channel)

    assert say("imds", jan10) == "new"
    assert say("imds", jan13) == "rescheduled"
    assert say("health_api", jan10) == "duplicate"  # another channel, slow: not a move back
    assert say("imds", jan13) == "duplicate"
    assert say("imds", jan10) == "rescheduled"  # the channel itself moved it back
    assert say("imds", jan10 + timedelta(seconds=20)) == "duplicate"


def test_ledger_an_earlier_phase_after_a_later_one_is_stale() -> None:
    """The API poll saw the event `Executing` and it was published `in_progress`; the CMS push of its `Scheduled`
    arrives later. Before, it was new and published after it: a reader keeping the latest report went back to
    `scheduled`. Now it is stale, like a non-terminal report after a terminal one."""
    ledger = TransitionLedger()
    assert ledger.record(cloud="alibaba", provider_event_id="e-3", phase="pending_approval") == "new"
    assert ledger.record(cloud="alibaba", provider_event_id="e-3", phase="in_progress") == "new"
    assert ledger.record(cloud="alibaba", provider_event_id="e-3", phase="scheduled") == "stale"
    assert ledger.record(cloud="alibaba", provider_event_id="e-3", phase="completed") == "new"
    fresh = TransitionLedger()
    assert fresh.record(cloud="alibaba", provider_event_id="e-4", phase="pending_approval") == "new"
    assert fresh.record(cloud="alibaba", provider_event_id="e-4", phase="scheduled") == "new"  # forward: new


def _route(ledger: TransitionLedger, phase: str, message_id: str, node: str | None, *, fresh: bool = True) -> None:
    if fresh:
        ledger.record(cloud="alibaba", provider_event_id="e-5", phase=phase)
    ledger.routed(cloud="alibaba", provider_event_id="e-5", phase=phase, message_id=message_id, node=node, fresh=fresh)


def _unmapped(ledger: TransitionLedger, phase: str) -> str | None:
    return ledger.unmapped(cloud="alibaba", provider_event_id="e-5", phase=phase)


def test_ledger_names_the_message_a_node_never_got_while_it_is_where_the_event_stands() -> None:
    ledger = TransitionLedger()
    _route(ledger, "scheduled", "m-scheduled", None)  # published under the instance id
    assert _unmapped(ledger, "scheduled") == "m-scheduled"
    assert _unmapped(ledger, "in_progress") is None  # not seen: nothing to send again
    _route(ledger, "scheduled", "m-scheduled", "worker-7", fresh=False)  # sent to the node (a remap)
    assert _unmapped(ledger, "scheduled") is None
    _route(ledger, "scheduled", "m-later", None, fresh=False)  # a duplicate unmapped report does not undo it
    assert _unmapped(ledger, "scheduled") is None
    _route(ledger, "scheduled", "m-moved", None, fresh=True)  # a reschedule under the instance id does
    assert _unmapped(ledger, "scheduled") == "m-moved"
    _route(ledger, "in_progress", "m-running", None)
    assert _unmapped(ledger, "scheduled") is None  # superseded: the node is not told about it after in_progress
    assert _unmapped(ledger, "in_progress") == "m-running"
    _route(ledger, "completed", "m-done", None)
    assert (_unmapped(ledger, "in_progress"), _unmapped(ledger, "completed")) == (None, "m-done")


def test_ledger_without_a_route_never_asks_for_a_remap() -> None:
    ledger = TransitionLedger()  # messages stored before routes were kept carry no node_mapped
    ledger.record(cloud="alibaba", provider_event_id="e-5", phase="scheduled")
    assert _unmapped(ledger, "scheduled") is None
