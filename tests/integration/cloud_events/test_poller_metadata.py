"""The Azure Scheduled Events poller against the IMDS emulator (real wire format), publishing to CLOUD:
an event that starts and then disappears ends as a synthesised `completed`.

The pollers run as deployed (deploy/components/ingest-node-*): their sink publishes, and a restarted one seeds its
ledger from its node's CLOUD subject, under the node-local ingest's own credential (`ingest-node`, node-1 of
prod-1) on a per-role server; no permission violation logged. The admin's connection (`js`) stands in for whoever
reads CLOUD afterwards."""

from __future__ import annotations

import copy
from datetime import timedelta

import prometheus_client
import pytest
from nats.js.client import JetStreamContext

from nodeheal.cloud_events.ingest.pollers import AzureScheduledEventsPoller
from nodeheal.cloud_events.ingest.settings import AzurePollerSettings
from nodeheal.cloud_events.ingest.sink import CloudEventSink, InventoryResolver, seed_ledger
from nodeheal.cloud_events.normalize import TransitionLedger
from nodeheal.runtime.connect import connect
from nodeheal.runtime.settings import NatsSettings
from nodeheal.schemas import CloudSystemEvent
from nodeheal.schemas.subjects import cloud_subject
from nodeheal.sim.azure_imds import AzureImdsEmulator, AzureScheduledEvents
from nodeheal.sim.clock import ManualClock
from tests.integration.deploy.natsauth_loader import RoleServer, admin_stands_in, deployed_as, node_nats

pytestmark = pytest.mark.nats

CLUSTER, NODE = "prod-1", "node-1"
deployed = deployed_as("ingest-node", node=(CLUSTER, NODE))  # the node-local ingest's own credential
nc, topology_ready = admin_stands_in()


@pytest.fixture
async def node_js(deployed: RoleServer) -> JetStreamContext:
    """The node-local ingest's JetStream context: node-1's `ingest-node` credential and inbox."""
    return (await deployed.role_nc("ingest-node")).jetstream()


async def _seed(node_js: JetStreamContext, nats: NatsSettings, ledger: TransitionLedger) -> None:
    """A restarted node-local ingest's ledger, seeded as it seeds it: its node's CLOUD subject only."""
    await seed_ledger(
        node_js,
        stream=f"{nats.stream_prefix}CLOUD",
        prefix=nats.prefix,
        ledger=ledger,
        lookback=timedelta(days=7),
        subjects=[cloud_subject(CLUSTER, NODE, prefix=nats.prefix)],
    )


def _sink(js: JetStreamContext, nats: NatsSettings, ledger: TransitionLedger | None = None) -> CloudEventSink:
    """The ingest's sink for cluster prod-1 with no inventory (each poller speaks for its own node)."""
    return CloudEventSink(
        js=js,
        prefix=nats.prefix,
        cluster="prod-1",
        service="cloud-events-ingest",
        inventory=InventoryResolver(None, ttl_s=0),
        ledger=ledger if ledger is not None else TransitionLedger(),
    )


async def _stored(js: JetStreamContext, nats: NatsSettings) -> list[CloudSystemEvent]:
    """Every cloud event CLOUD holds, in order."""
    stream = f"{nats.stream_prefix}CLOUD"
    info = await js.stream_info(stream)
    return [
        CloudSystemEvent.model_validate_json((await js.get_msg(stream, s)).data)
        for s in range(1, info.state.last_seq + 1)
    ]


async def test_azure_reboot_scheduled_started_gone(
    js: JetStreamContext, node_js: JetStreamContext, topology_ready: NatsSettings
) -> None:
    events = AzureScheduledEvents(clock=ManualClock())
    scheduled = events.schedule("Reboot", resources=["vm-1", "vm-2"], duration_s=60)
    events.schedule("Freeze", resources=["vm-2"])  # another VM's event: not ours
    sink = _sink(node_js, topology_ready)
    async with AzureImdsEmulator(events) as imds:
        settings = AzurePollerSettings(enabled=True, endpoint=imds.url, node="node-1", vm_name="vm-1")
        poller = AzureScheduledEventsPoller(sink=sink, cluster="prod-1", settings=settings, clock=events.now)
        try:
            assert [e.phase for e in await poller.poll_once()] == ["scheduled"]
            events.advance(timedelta(minutes=16))  # NotBefore passed: Started
            assert [e.phase for e in await poller.poll_once()] == ["in_progress"]
            events.advance(timedelta(minutes=5))  # duration over: the event disappears
            assert [e.phase for e in await poller.poll_once()] == ["completed"]
        finally:
            await poller.close()

    stored = await _stored(js, topology_ready)
    subject = cloud_subject("prod-1", "node-1", prefix=topology_ready.prefix)
    assert [(e.phase, e.action, e.instance_id, e.node) for e in stored] == [
        ("scheduled", "reboot", "vm-1", "node-1"),
        ("in_progress", "reboot", "vm-1", "node-1"),
        ("completed", "reboot", "vm-1", "node-1"),
    ]
    assert {e.extended["EventId"] for e in stored} == {scheduled.event_id}
    assert (await js.get_last_msg(f"{topology_ready.stream_prefix}CLOUD", subject)).headers["Nats-Msg-Id"] == stored[
        -1
    ].id  # type: ignore[index]


async def test_an_azure_event_gone_after_its_not_before_unseen_started_ends_not_canceled(
    js: JetStreamContext, node_js: JetStreamContext, topology_ready: NatsSettings
) -> None:
    """A Freeze (a memory-preserving live migration: the VM, and the poller on it, paused for seconds) seen
    `Scheduled`; at the next poll, past its NotBefore, it has started and ended, so it is gone without `Started`
    having been seen. Before, the poller published `canceled` (the reading of a disappearance while `Scheduled`)
    and the remediator took the node for untouched. Azure cancels an event only before it starts: now it is
    `completed`, saying Started was not seen. A Reboot canceled by the platform before its NotBefore is still
    `canceled`."""
    events = AzureScheduledEvents(clock=ManualClock())
    freeze = events.schedule("Freeze", resources=["vm-1"], duration_s=5)
    sink = _sink(node_js, topology_ready)
    async with AzureImdsEmulator(events) as imds:
        settings = AzurePollerSettings(enabled=True, endpoint=imds.url, node="node-1", vm_name="vm-1")
        poller = AzureScheduledEventsPoller(sink=sink, cluster="prod-1", settings=settings, clock=events.now)
        try:
            assert [e.phase for e in await poller.poll_once()] == ["scheduled"]
            events.advance(timedelta(minutes=16))  # NotBefore passed: Started, while the VM is paused ...
            events.advance(timedelta(seconds=10))  # ... and over: gone before the poller runs again
            assert [e.phase for e in await poller.poll_once()] == ["completed"]
            reboot = events.schedule("Reboot", resources=["vm-1"])
            assert [e.phase for e in await poller.poll_once()] == ["scheduled"]
            events.advance(timedelta(minutes=5))
            events.cancel(reboot.event_id)  # the platform's rare cancel, before NotBefore
            assert [e.phase for e in await poller.poll_once()] == ["canceled"]
        finally:
            await poller.close()
    stored = await _stored(js, topology_ready)
    assert [(e.provider_event_type, e.phase, e.extended.get("started_observed")) for e in stored] == [
        ("Freeze", "scheduled", None),
        ("Freeze", "completed", False),
        ("Reboot", "scheduled", None),
        ("Reboot", "canceled", False),
    ]
    assert {e.extended["EventId"] for e in stored[:2]} == {freeze.event_id}


async def test_a_rescheduled_azure_event_is_published_again_with_its_new_start(
    js: JetStreamContext, node_js: JetStreamContext, topology_ready: NatsSettings
) -> None:
    """The platform moves a scheduled reboot two hours later (a new `NotBefore` and `DocumentIncarnation`):
    the same transition (`scheduled`) with a start time more than a minute from the one published is a
    reschedule, published as a message of its own, so the remediator drains by the new time. Before, the
    ledger called it a duplicate and the old time stood. Polling it again publishes nothing more."""
    events = AzureScheduledEvents(clock=ManualClock())
    scheduled = events.schedule("Reboot", resources=["vm-1"])
    sink = _sink(node_js, topology_ready)
    async with AzureImdsEmulator(events) as imds:
        settings = AzurePollerSettings(enabled=True, endpoint=imds.url, node="node-1", vm_name="vm-1")
        poller = AzureScheduledEventsPoller(sink=sink, cluster="prod-1", settings=settings, clock=events.now)
        try:
            assert [e.phase for e in await poller.poll_once()] == ["scheduled"]
            first = scheduled.not_before
            assert first is not None
            later = first + timedelta(hours=2)
            events.reschedule(scheduled.event_id, later)
            await poller.poll_once()
            await poller.poll_once()  # the same new time again: a duplicate
        finally:
            await poller.close()

    stored = await _stored(js, topology_ready)
    assert [(e.phase, e.not_before) for e in stored] == [
        ("scheduled", first),
        ("scheduled", later),
    ]
    assert stored[0].provider_event_id == stored[1].provider_event_id  # one event: one remediation episode
    assert stored[0].id != stored[1].id


async def test_a_gce_poller_restarted_across_a_ten_minute_boundary_continues_and_closes_the_open_event(
    js: JetStreamContext, node_js: JetStreamContext, topology_ready: NatsSettings
) -> None:
    """TERMINATE_ON_HOST_MAINTENANCE first seen at 12:09:50; the ingest restarts (its ledger seeded from
    CLOUD) and polls again at 12:10:10. The synthetic id floored the first-seen time to 10 minutes, so before,
    the new poller started a second event (`…T1210Z`) and the return to NONE closed only that one: the first
    stayed `in_progress` for good, a host event the remediator keeps waiting for. Now the restarted poller
    takes the open event over: one event, closed."""
    from datetime import UTC, datetime

    from nodeheal.cloud_events.ingest.pollers import GceMaintenancePoller
    from nodeheal.cloud_events.ingest.settings import GcePollerSettings
    from nodeheal.sim.gce_metadata import GceMetadata, GceMetadataEmulator

    metadata = GceMetadata()
    now = [datetime(2026, 4, 10, 12, 9, 50, tzinfo=UTC)]

    async with GceMetadataEmulator(metadata) as gce:
        settings = GcePollerSettings(enabled=True, endpoint=gce.url, node="node-1")
        metadata.set_maintenance_event("TERMINATE_ON_HOST_MAINTENANCE")
        first = GceMaintenancePoller(
            sink=_sink(node_js, topology_ready), cluster="prod-1", settings=settings, clock=lambda: now[0]
        )
        try:
            assert [e.phase for e in await first.poll_once()] == ["in_progress"]
        finally:
            await first.close()
        # the restart: a new process, its ledger rebuilt from the stream
        ledger = TransitionLedger()
        await _seed(node_js, topology_ready, ledger)
        now[0] = datetime(2026, 4, 10, 12, 10, 10, tzinfo=UTC)
        second = GceMaintenancePoller(
            sink=_sink(node_js, topology_ready, ledger), cluster="prod-1", settings=settings, clock=lambda: now[0]
        )
        try:
            assert await second.poll_once() == []  # the same event, going on
            metadata.set_maintenance_event("NONE")
            now[0] = datetime(2026, 4, 10, 12, 12, 0, tzinfo=UTC)
            assert [e.phase for e in await second.poll_once()] == ["completed"]
        finally:
            await second.close()
    stored = await _stored(js, topology_ready)
    assert [(e.phase, e.action) for e in stored] == [("in_progress", "terminate"), ("completed", "terminate")]
    assert stored[0].provider_event_id == stored[1].provider_event_id
    assert ledger.open_events("gcp") == []


async def test_two_gce_maintenances_within_ten_minutes_are_both_published(
    js: JetStreamContext, node_js: JetStreamContext, topology_ready: NatsSettings
) -> None:
    """MIGRATE_ON_HOST_MAINTENANCE at 12:01 (back to NONE at 12:02), again at 12:05: two live migrations of one
    VM. Before, the synthetic id floored the first-seen time to 10 minutes: the second episode had the first's
    id, the ledger called its `in_progress` a duplicate of a finished event and CLOUD never heard of it (nor
    would the stream's `Nats-Msg-Id` window have taken it). Now each episode is its own event; polling a running
    episode again publishes nothing."""
    from datetime import UTC, datetime

    from nodeheal.cloud_events.ingest.pollers import GceMaintenancePoller
    from nodeheal.cloud_events.ingest.settings import GcePollerSettings
    from nodeheal.sim.gce_metadata import GceMetadata, GceMetadataEmulator

    metadata = GceMetadata()
    now = [datetime(2026, 4, 10, 12, 1, 0, tzinfo=UTC)]
    async with GceMetadataEmulator(metadata) as gce:
        settings = GcePollerSettings(enabled=True, endpoint=gce.url, node="node-1")
        poller = GceMaintenancePoller(
            sink=_sink(node_js, topology_ready), cluster="prod-1", settings=settings, clock=lambda: now[0]
        )
        try:
            for minute, value in ((1, "MIGRATE_ON_HOST_MAINTENANCE"), (2, "NONE"), (5, "MIGRATE_ON_HOST_MAINTENANCE")):
                metadata.set_maintenance_event(value)  # type: ignore[arg-type]
                now[0] = now[0].replace(minute=minute, second=0)
                await poller.poll_once()
                now[0] = now[0].replace(second=10)
                await poller.poll_once()  # the same answer again
            metadata.set_maintenance_event("NONE")
            now[0] = now[0].replace(minute=6)
            await poller.poll_once()
        finally:
            await poller.close()
    stored = await _stored(js, topology_ready)
    assert [e.phase for e in stored] == ["in_progress", "completed", "in_progress", "completed"]
    assert stored[0].provider_event_id == stored[1].provider_event_id
    assert stored[2].provider_event_id == stored[3].provider_event_id
    assert stored[0].provider_event_id != stored[2].provider_event_id
    assert stored[2].started_at == datetime(2026, 4, 10, 12, 5, 0, tzinfo=UTC)


async def test_an_azure_poller_without_a_vm_name_asks_imds_for_it(
    js: JetStreamContext, deployed: RoleServer, topology_ready: NatsSettings
) -> None:
    """On AKS the Kubernetes node (`aks-pool1-123-vmss000003`) and the VM Azure names in `Resources`
    (`aks-pool1-123-vmss_3`) differ. With no `AZURE__VM_NAME` the poller matched events on the node name
    and dropped every event of its own VM; now it reads the VM name from IMDS once. The poller runs under that
    node's own credential."""
    node = "aks-pool1-123-vmss000003"
    client = await connect(node_nats(deployed.dir, deployed.url, "ingest-node", CLUSTER, node), name="ingest-node-aks")
    deployed.opened.append(client)  # closed with the server's other connections
    events = AzureScheduledEvents(clock=ManualClock())
    events.schedule("Reboot", resources=["aks-pool1-123-vmss_3"])
    sink = _sink(client.jetstream(), topology_ready)
    async with AzureImdsEmulator(events, vm_name="aks-pool1-123-vmss_3") as imds:
        settings = AzurePollerSettings(enabled=True, endpoint=imds.url, node="aks-pool1-123-vmss000003")
        poller = AzureScheduledEventsPoller(sink=sink, cluster="prod-1", settings=settings, clock=events.now)
        try:
            got = await poller.poll_once()
        finally:
            await poller.close()
    assert [(e.phase, e.action, e.instance_id, e.node) for e in got] == [
        ("scheduled", "reboot", "aks-pool1-123-vmss_3", "aks-pool1-123-vmss000003")
    ]
    assert [(e.phase, e.node) for e in await _stored(js, topology_ready)] == [("scheduled", node)]


def _unacknowledged(js: JetStreamContext, ledger: TransitionLedger) -> CloudEventSink:
    """A sink whose publishes no stream takes (a subject outside every stream): each submit fails, as when
    CLOUD is unavailable for a moment. On the admin's connection `js` (the node's credential may not publish
    there: the server would log a violation, not answer "no responders")."""
    return CloudEventSink(
        js=js,
        prefix="nostream",
        cluster="prod-1",
        service="cloud-events-ingest",
        inventory=InventoryResolver(None, ttl_s=0),
        ledger=ledger,
    )


async def test_an_azure_end_whose_publish_failed_is_said_at_the_next_poll(
    js: JetStreamContext, node_js: JetStreamContext, topology_ready: NatsSettings
) -> None:
    """The event disappears from the document (it ended) while CLOUD does not acknowledge the publish. Before, the
    tracker had already forgotten the event: the next poll said nothing, CLOUD kept it `scheduled` for good and
    the remediator kept the node drained. Now the next poll says `completed`."""
    events = AzureScheduledEvents(clock=ManualClock())
    events.schedule("Reboot", resources=["vm-1"], duration_s=60)
    ledger = TransitionLedger()
    sink = _sink(node_js, topology_ready, ledger)
    async with AzureImdsEmulator(events) as imds:
        settings = AzurePollerSettings(enabled=True, endpoint=imds.url, node="node-1", vm_name="vm-1")
        poller = AzureScheduledEventsPoller(sink=sink, cluster="prod-1", settings=settings, clock=events.now)
        try:
            assert [e.phase for e in await poller.poll_once()] == ["scheduled"]
            events.advance(timedelta(minutes=16))
            assert [e.phase for e in await poller.poll_once()] == ["in_progress"]
            events.advance(timedelta(minutes=5))  # gone: ended
            poller.sink = _unacknowledged(js, ledger)
            with pytest.raises(Exception):  # noqa: B017,PT011  # nats-py's "no responders", whatever its class
                await poller.poll_once()
            poller.sink = sink
            assert [e.phase for e in await poller.poll_once()] == ["completed"]
        finally:
            await poller.close()
    stored = await _stored(js, topology_ready)
    assert [e.phase for e in stored] == ["scheduled", "in_progress", "completed"]
    assert ledger.open_events("azure") == []


async def test_a_gce_maintenance_whose_publish_failed_is_said_at_the_next_poll(
    js: JetStreamContext, node_js: JetStreamContext, topology_ready: NatsSettings
) -> None:
    """TERMINATE_ON_HOST_MAINTENANCE (about 60 s of notice) seen while CLOUD does not acknowledge the publish.
    Before, the tracker had already taken the event as current: the next poll said nothing and the node was
    never drained. Now the next poll says `in_progress`."""
    from nodeheal.cloud_events.ingest.pollers import GceMaintenancePoller
    from nodeheal.cloud_events.ingest.settings import GcePollerSettings
    from nodeheal.sim.gce_metadata import GceMetadata, GceMetadataEmulator

    metadata = GceMetadata()
    ledger = TransitionLedger()
    sink = _sink(node_js, topology_ready, ledger)
    async with GceMetadataEmulator(metadata) as gce:
        settings = GcePollerSettings(enabled=True, endpoint=gce.url, node="node-1")
        poller = GceMaintenancePoller(sink=sink, cluster="prod-1", settings=settings)
        try:
            assert await poller.poll_once() == []
            metadata.set_maintenance_event("TERMINATE_ON_HOST_MAINTENANCE")
            poller.sink = _unacknowledged(js, ledger)
            with pytest.raises(Exception):  # noqa: B017,PT011
                await poller.poll_once()
            poller.sink = sink
            assert [(e.phase, e.action) for e in await poller.poll_once()] == [("in_progress", "terminate")]
        finally:
            await poller.close()


async def test_an_aws_event_canceled_and_moved_to_history_is_published_canceled(
    js: JetStreamContext, node_js: JetStreamContext, topology_ready: NatsSettings
) -> None:
    """IMDS lists active events in `events/maintenance/scheduled`; an event that completes or is canceled moves
    to `events/maintenance/history`. Before, the poller read `scheduled` only: a canceled system-reboot just
    left it, CLOUD kept the event `scheduled` and the remediator kept the node drained for it. Here the
    emulator moves a closed event to history at once (`linger` 0)."""
    from datetime import UTC, datetime

    from nodeheal.cloud_events.ingest.pollers import AwsScheduledEventsPoller
    from nodeheal.cloud_events.ingest.settings import MetadataPollerSettings
    from nodeheal.sim.aws_imds import AwsImdsEmulator, AwsMaintenanceEvents

    clock = ManualClock(datetime(2026, 5, 4, 8, 0, tzinfo=UTC))
    aws = AwsMaintenanceEvents(instance_id="i-0abc", clock=clock, linger=timedelta(0))
    event = aws.add("system-reboot", not_before=clock.now() + timedelta(days=3))
    async with AwsImdsEmulator(aws) as imds:
        settings = MetadataPollerSettings(enabled=True, endpoint=imds.url, node="node-1")
        poller = AwsScheduledEventsPoller(
            sink=_sink(node_js, topology_ready), cluster="prod-1", settings=settings, clock=clock.now
        )
        try:
            assert [e.phase for e in await poller.poll_once()] == ["scheduled"]
            aws.cancel(event.event_id)
            assert [e.phase for e in await poller.poll_once() if e.provider_event_id == event.event_id] == ["canceled"]
        finally:
            await poller.close()
    stored = await _stored(js, topology_ready)
    assert [(e.provider_event_id, e.phase, e.action) for e in stored] == [
        (event.event_id, "scheduled", "reboot"),
        (event.event_id, "canceled", "reboot"),
    ]


def _older_documents() -> float:
    return prometheus_client.REGISTRY.get_sample_value("nodeheal_ingest_azure_older_documents_total") or 0.0


async def test_an_older_azure_document_does_not_put_a_started_event_back_to_scheduled(
    js: JetStreamContext, node_js: JetStreamContext, topology_ready: NatsSettings
) -> None:
    """A relay that lags serves the document of before the event started (a lower `DocumentIncarnation`) after
    the poller read it `Started`. Before, the older document was read into the tracker: the event was `Scheduled`
    again for it, and when it ended its `completed` said Started was not seen (`started_observed=false`). Now the
    older document is ignored (counted) and the end says what was seen."""
    events = AzureScheduledEvents(clock=ManualClock())
    events.schedule("Reboot", resources=["vm-1"], duration_s=60)
    lagging = copy.deepcopy(events)  # the relay's view: stuck at the Scheduled document
    sink = _sink(node_js, topology_ready)
    async with AzureImdsEmulator(events) as imds, AzureImdsEmulator(lagging) as relay:
        settings = AzurePollerSettings(enabled=True, endpoint=imds.url, node="node-1", vm_name="vm-1")
        poller = AzureScheduledEventsPoller(sink=sink, cluster="prod-1", settings=settings, clock=events.now)
        try:
            assert [e.phase for e in await poller.poll_once()] == ["scheduled"]
            events.advance(timedelta(minutes=16))  # Started
            assert [e.phase for e in await poller.poll_once()] == ["in_progress"]
            counted = _older_documents()
            poller.settings = settings.model_copy(update={"endpoint": relay.url})
            older = await poller.poll_once()  # the older document
            poller.settings = settings
            events.advance(timedelta(minutes=5))  # ended
            assert [e.phase for e in await poller.poll_once()] == ["completed"]
        finally:
            await poller.close()
    stored = await _stored(js, topology_ready)
    assert [e.phase for e in stored] == ["scheduled", "in_progress", "completed"]
    assert stored[-1].extended["started_observed"] is True
    assert stored[-1].started_at == stored[1].started_at
    assert older == []  # nothing read from the older document
    assert _older_documents() == counted + 1


async def test_an_older_azure_document_does_not_reopen_an_event_that_ended(
    js: JetStreamContext, node_js: JetStreamContext, topology_ready: NatsSettings
) -> None:
    """The event is canceled (gone before its NotBefore: published `canceled`); then a lagging relay serves the
    document of before the cancel. Before, the tracker took the event for open again, and once its NotBefore had
    passed the next document ended it a second time, `completed` after `canceled`: CLOUD said the reboot ran and
    the remediator went to verify a node nothing happened to. Now the older document is ignored."""
    events = AzureScheduledEvents(clock=ManualClock())
    scheduled = events.schedule("Reboot", resources=["vm-1"], duration_s=60)
    lagging = copy.deepcopy(events)
    sink = _sink(node_js, topology_ready)
    async with AzureImdsEmulator(events) as imds, AzureImdsEmulator(lagging) as relay:
        settings = AzurePollerSettings(enabled=True, endpoint=imds.url, node="node-1", vm_name="vm-1")
        poller = AzureScheduledEventsPoller(sink=sink, cluster="prod-1", settings=settings, clock=events.now)
        try:
            assert [e.phase for e in await poller.poll_once()] == ["scheduled"]
            events.cancel(scheduled.event_id)
            events.advance(timedelta(minutes=1))
            assert [e.phase for e in await poller.poll_once()] == ["canceled"]
            poller.settings = settings.model_copy(update={"endpoint": relay.url})
            older = await poller.poll_once()
            poller.settings = settings
            events.advance(timedelta(minutes=20))  # past the NotBefore the canceled event had
            await poller.poll_once()
        finally:
            await poller.close()
    stored = await _stored(js, topology_ready)
    assert [e.phase for e in stored] == ["scheduled", "canceled"]
    assert older == []


async def _restarted_azure_poller(
    node_js: JetStreamContext, nats: NatsSettings, settings: AzurePollerSettings, events: AzureScheduledEvents
) -> tuple[AzureScheduledEventsPoller, TransitionLedger]:
    """A new ingest process: its ledger seeded from its node's CLOUD subject (`seed_ledger`, as the node-local
    ingest does at start), a new poller."""
    ledger = TransitionLedger()
    await _seed(node_js, nats, ledger)
    poller = AzureScheduledEventsPoller(
        sink=_sink(node_js, nats, ledger), cluster="prod-1", settings=settings, clock=events.now
    )
    return poller, ledger


async def test_an_azure_poller_restarted_while_an_event_was_open_publishes_its_end(
    js: JetStreamContext, node_js: JetStreamContext, topology_ready: NatsSettings
) -> None:
    """The poller sees a Reboot scheduled, then its process (or its VM) restarts; meanwhile the reboot runs and
    leaves the document. Before, the new poller's tracker started empty: the event's disappearance said nothing,
    CLOUD kept it `scheduled` for good and the remediator kept the node drained for it. Now the new poller takes
    the open event over from the ledger seeded from CLOUD and ends it (`completed`: gone after its NotBefore)."""
    events = AzureScheduledEvents(clock=ManualClock())
    scheduled = events.schedule("Reboot", resources=["vm-1"], duration_s=60)
    async with AzureImdsEmulator(events) as imds:
        settings = AzurePollerSettings(enabled=True, endpoint=imds.url, node="node-1", vm_name="vm-1")
        first = AzureScheduledEventsPoller(
            sink=_sink(node_js, topology_ready), cluster="prod-1", settings=settings, clock=events.now
        )
        try:
            assert [e.phase for e in await first.poll_once()] == ["scheduled"]
        finally:
            await first.close()
        events.advance(timedelta(minutes=16))  # started while no poller ran
        events.advance(timedelta(minutes=5))  # and ended: gone from the document
        second, ledger = await _restarted_azure_poller(node_js, topology_ready, settings, events)
        try:
            await second.poll_once()
        finally:
            await second.close()
    stored = await _stored(js, topology_ready)
    assert [(e.phase, e.action, e.cause, e.node) for e in stored] == [
        ("scheduled", "reboot", "planned_maintenance", "node-1"),
        ("completed", "reboot", "planned_maintenance", "node-1"),
    ]
    assert stored[0].provider_event_id == stored[1].provider_event_id == f"{scheduled.event_id.lower()}#vm-1"
    assert stored[1].extended["EventId"] == scheduled.event_id
    assert stored[1].extended["started_observed"] is False
    assert ledger.open_events("azure") == []


async def test_an_azure_poller_restarted_during_a_started_event_keeps_its_cause_and_start(
    js: JetStreamContext, node_js: JetStreamContext, topology_ready: NatsSettings
) -> None:
    """Seen Scheduled, then Started; the poller restarts while it runs and sees it Started again, then gone. Before,
    the new tracker took an event first seen `Started` for a host failure: its end said `host_failure` and a
    `started_at` of the restart. Now the end keeps what the first poller saw."""
    events = AzureScheduledEvents(clock=ManualClock())
    events.schedule("Reboot", resources=["vm-1"], duration_s=600)
    async with AzureImdsEmulator(events) as imds:
        settings = AzurePollerSettings(enabled=True, endpoint=imds.url, node="node-1", vm_name="vm-1")
        first = AzureScheduledEventsPoller(
            sink=_sink(node_js, topology_ready), cluster="prod-1", settings=settings, clock=events.now
        )
        try:
            assert [e.phase for e in await first.poll_once()] == ["scheduled"]
            events.advance(timedelta(minutes=16))
            assert [e.phase for e in await first.poll_once()] == ["in_progress"]
        finally:
            await first.close()
        events.advance(timedelta(minutes=2))
        second, _ = await _restarted_azure_poller(node_js, topology_ready, settings, events)
        try:
            await second.poll_once()  # still Started: the same event going on
            events.advance(timedelta(minutes=10))  # gone
            await second.poll_once()
        finally:
            await second.close()
    stored = await _stored(js, topology_ready)
    assert [(e.phase, e.cause) for e in stored] == [
        ("scheduled", "planned_maintenance"),
        ("in_progress", "planned_maintenance"),
        ("completed", "planned_maintenance"),
    ]
    assert stored[2].started_at == stored[1].started_at
    assert stored[2].extended["started_observed"] is True


async def test_an_older_azure_document_right_after_a_restart_does_not_reopen_an_event_that_ended(
    js: JetStreamContext, node_js: JetStreamContext, topology_ready: NatsSettings
) -> None:
    """The poller sees a Reboot scheduled, then canceled (gone before its NotBefore: `canceled`); its process
    restarts, and the first document the new poller reads is an older one from a relay that lags, still listing the
    Reboot `Scheduled`. Before, the incarnation was in memory only: the new tracker read the older document, took
    the event for open again, and the next (current) document ended it a second time, `completed` after `canceled`
    once its NotBefore had passed. Now the newest incarnation is taken over from the VM's reports in CLOUD (the
    `canceled` carries the incarnation of the document it was read gone from): the older document is ignored."""
    events = AzureScheduledEvents(clock=ManualClock())
    scheduled = events.schedule("Reboot", resources=["vm-1"], duration_s=60)
    lagging = copy.deepcopy(events)  # the relay's view: stuck at the document listing the Reboot Scheduled
    async with AzureImdsEmulator(events) as imds, AzureImdsEmulator(lagging) as relay:
        settings = AzurePollerSettings(enabled=True, endpoint=imds.url, node="node-1", vm_name="vm-1")
        first = AzureScheduledEventsPoller(
            sink=_sink(node_js, topology_ready), cluster="prod-1", settings=settings, clock=events.now
        )
        try:
            assert [e.phase for e in await first.poll_once()] == ["scheduled"]
            events.cancel(scheduled.event_id)
            events.advance(timedelta(minutes=1))
            assert [e.phase for e in await first.poll_once()] == ["canceled"]
        finally:
            await first.close()
        events.advance(timedelta(minutes=20))  # past the NotBefore the canceled event had
        second, ledger = await _restarted_azure_poller(node_js, topology_ready, settings, events)
        try:
            counted = _older_documents()
            second.settings = settings.model_copy(update={"endpoint": relay.url})
            older = await second.poll_once()  # the first read after the restart: the older document
            second.settings = settings
            current = await second.poll_once()
        finally:
            await second.close()
    stored = await _stored(js, topology_ready)
    assert [e.phase for e in stored] == ["scheduled", "canceled"]
    assert stored[1].extended["DocumentIncarnation"] == events.incarnation
    assert ledger.incarnation("azure", "vm-1") == events.incarnation
    assert older == [] and current == []
    assert _older_documents() == counted + 1


async def test_an_older_azure_document_right_after_a_restart_does_not_end_an_event_still_open(
    js: JetStreamContext, node_js: JetStreamContext, topology_ready: NatsSettings
) -> None:
    """The poller sees a Reboot scheduled and Started; its process restarts while the reboot runs, and the first
    document the new poller reads is one from before the Reboot was scheduled (a relay that lags: no events).
    Before, the new tracker read it and ended the Reboot it had taken over (`completed` while it ran: the
    remediator would put the node back in service mid-reboot), and the real end was then a duplicate. Now the
    older document is ignored: the Reboot ends when the current document no longer lists it."""
    events = AzureScheduledEvents(clock=ManualClock())
    lagging = copy.deepcopy(events)  # the relay's view: the document before the Reboot (no events)
    events.schedule("Reboot", resources=["vm-1"], duration_s=600)
    async with AzureImdsEmulator(events) as imds, AzureImdsEmulator(lagging) as relay:
        settings = AzurePollerSettings(enabled=True, endpoint=imds.url, node="node-1", vm_name="vm-1")
        first = AzureScheduledEventsPoller(
            sink=_sink(node_js, topology_ready), cluster="prod-1", settings=settings, clock=events.now
        )
        try:
            assert [e.phase for e in await first.poll_once()] == ["scheduled"]
            events.advance(timedelta(minutes=16))
            assert [e.phase for e in await first.poll_once()] == ["in_progress"]
        finally:
            await first.close()
        events.advance(timedelta(minutes=1))
        second, ledger = await _restarted_azure_poller(node_js, topology_ready, settings, events)
        try:
            second.settings = settings.model_copy(update={"endpoint": relay.url})
            older = await second.poll_once()
            second.settings = settings
            assert [e.phase for e in await _stored(js, topology_ready)] == ["scheduled", "in_progress"]
            assert [e.phase for e in await second.poll_once()] == ["in_progress"]  # still Started: goes on
            events.advance(timedelta(minutes=10))  # gone
            assert [e.phase for e in await second.poll_once()] == ["completed"]
        finally:
            await second.close()
    stored = await _stored(js, topology_ready)
    assert older == []
    assert [(e.phase, e.cause) for e in stored] == [
        ("scheduled", "planned_maintenance"),
        ("in_progress", "planned_maintenance"),
        ("completed", "planned_maintenance"),
    ]
    assert stored[2].extended["started_observed"] is True
    assert stored[2].started_at == stored[1].started_at
    assert ledger.open_events("azure") == []


async def test_an_azure_incarnation_that_went_back_for_good_is_taken_after_a_while_after_a_restart(
    js: JetStreamContext, node_js: JetStreamContext, topology_ready: NatsSettings
) -> None:
    """The incarnation taken over at a restart holds as the newest read did before it, for `INCARNATION_RESET_S`
    (300 s) only: a counter that went back for good (here, a document service whose count started again) is taken
    once every document for 300 s in a row is lower, and its new event is published. The poller's clock is the
    emulator's: the 300 s pass without waiting."""
    events = AzureScheduledEvents(clock=ManualClock())
    scheduled = events.schedule("Reboot", resources=["vm-1"], duration_s=60)
    async with AzureImdsEmulator(events) as imds:
        settings = AzurePollerSettings(enabled=True, endpoint=imds.url, node="node-1", vm_name="vm-1")
        first = AzureScheduledEventsPoller(
            sink=_sink(node_js, topology_ready), cluster="prod-1", settings=settings, clock=events.now
        )
        try:
            assert [e.phase for e in await first.poll_once()] == ["scheduled"]
            events.cancel(scheduled.event_id)
            assert [e.phase for e in await first.poll_once()] == ["canceled"]
        finally:
            await first.close()
    recounted = AzureScheduledEvents(clock=ManualClock(events.now()), seed=1)  # event ids of its own
    recounted.schedule("Freeze", resources=["vm-1"])
    assert recounted.incarnation < events.incarnation
    async with AzureImdsEmulator(recounted) as imds:
        settings = AzurePollerSettings(enabled=True, endpoint=imds.url, node="node-1", vm_name="vm-1")
        second, _ = await _restarted_azure_poller(node_js, topology_ready, settings, events)
        try:
            assert await second.poll_once() == []  # lower than the incarnation taken over: ignored
            events.advance(timedelta(seconds=299))
            assert await second.poll_once() == []
            events.advance(timedelta(seconds=1))  # lower for 300 s in a row: the counter now
            assert [(e.provider_event_type, e.phase) for e in await second.poll_once()] == [("Freeze", "scheduled")]
        finally:
            await second.close()
    stored = await _stored(js, topology_ready)
    assert [(e.provider_event_type, e.phase) for e in stored] == [
        ("Reboot", "scheduled"),
        ("Reboot", "canceled"),
        ("Freeze", "scheduled"),
    ]
