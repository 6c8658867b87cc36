"""The Alibaba poller through the official SDK against the ECS OpenAPI emulator, publishing to CLOUD.

Its sink publishes (and reads the inventory and, when seeded, CLOUD) through a connection under the `ingest` role's
credential and inbox, on a nats-server of the test's own with the per-role authorization; no permission violation
is logged."""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from nats.js.client import JetStreamContext

from nodeheal.cloud_events.ingest.pollers import AlibabaHistoryPoller
from nodeheal.cloud_events.ingest.settings import AlibabaPollerSettings
from nodeheal.cloud_events.ingest.sink import CloudEventSink, InventoryResolver, seed_ledger
from nodeheal.cloud_events.normalize import NormalizeContext, TransitionLedger
from nodeheal.cloud_events.normalize import alibaba as alibaba_norm
from nodeheal.runtime.settings import NatsSettings
from nodeheal.schemas import CloudSystemEvent, DeadLetter, NodeInventory
from nodeheal.schemas.inventory import instance_key
from nodeheal.schemas.subjects import cloud_subject
from nodeheal.sim.clock import ManualClock
from nodeheal.sim.ecs_api import EcsEmulator, EcsWorld
from tests.integration.deploy.natsauth_loader import RoleServer, admin_stands_in, deployed_as

pytestmark = pytest.mark.nats

deployed = deployed_as("ingest")  # the poller's sink publishes under the ingest role; no violation logged
nc, topology_ready = admin_stands_in()  # the admin stands in for the inventory watcher and reads CLOUD back


@pytest.fixture
async def ingest_js(deployed: RoleServer) -> JetStreamContext:
    """What the ingest's sink publishes and reads the inventory with: a connection under the `ingest` role."""
    return (await deployed.role_nc("cloud-events-ingest")).jetstream()


DATA = Path(__file__).resolve().parents[2] / "data" / "cloud-events"


async def make_sink(js: JetStreamContext, nats: NatsSettings, *, seed: bool = False) -> CloudEventSink:
    kv = await js.key_value(f"{nats.bucket_prefix}-inventory")
    ledger = TransitionLedger()
    if seed:
        await seed_ledger(
            js, stream=f"{nats.stream_prefix}CLOUD", prefix=nats.prefix, ledger=ledger, lookback=timedelta(days=1)
        )
    return CloudEventSink(
        js=js,
        prefix=nats.prefix,
        cluster="prod-1",
        service="cloud-events-ingest",
        inventory=InventoryResolver(kv, ttl_s=0),
        ledger=ledger,
    )


async def cloud_messages(js: JetStreamContext, nats: NatsSettings) -> list[tuple[str, str, CloudSystemEvent]]:
    stream = f"{nats.stream_prefix}CLOUD"
    info = await js.stream_info(stream)
    out = []
    for seq in range(info.state.first_seq, info.state.last_seq + 1):
        msg = await js.get_msg(stream, seq)
        assert msg.headers is not None
        out.append((msg.subject, msg.headers["Nats-Msg-Id"], CloudSystemEvent.model_validate_json(msg.data)))
    return out


def _settings(emu: EcsEmulator, **overrides: Any) -> AlibabaPollerSettings:
    """The poller pointed at the ECS emulator with the emulator's keys (one region, cn-hangzhou, unless given)."""
    base: dict[str, Any] = {
        "enabled": True,
        "endpoint": emu.endpoint,
        "protocol": "http",
        "region_ids": ["cn-hangzhou"],
        "access_key_id": "sim-access-key-id",
        "access_key_secret": "sim-access-key-secret",
    }
    return AlibabaPollerSettings(**(base | overrides))


async def test_scheduled_then_executed_gives_two_messages(
    js: JetStreamContext, topology_ready: NatsSettings, ingest_js: JetStreamContext
) -> None:
    world = EcsWorld(clock=ManualClock())
    world.add_instance("i-node1", region_id="cn-hangzhou")
    kv = await js.key_value(f"{topology_ready.bucket_prefix}-inventory")
    await kv.put(
        instance_key("i-node1"), NodeInventory(cluster="prod-1", node="node-1", instance_id="i-node1").to_json()
    )
    event = world.publish_event("i-node1", "SystemMaintenance.Reboot", not_before=world.now() + timedelta(hours=24))

    async with EcsEmulator(world) as emu:
        settings = _settings(
            emu,
        )
        sink = await make_sink(ingest_js, topology_ready)
        poller = AlibabaHistoryPoller(sink=sink, cluster="prod-1", settings=settings, clock=world.now)
        first = await poller.poll_once()
        assert [(e.provider_event_id, e.phase) for e in first] == [(event.event_id, "scheduled")]
        await poller.poll_once()  # nothing changed: nothing new stored

        world.advance(timedelta(hours=25))  # NotBefore passed, the reboot ran: Executed
        second = await poller.poll_once()
        assert [(e.provider_event_id, e.phase) for e in second] == [(event.event_id, "completed")]

        # the poller asked for the active states, then for the open event by id
        history_calls = [c for c in emu.calls if c.action == "DescribeInstanceHistoryEvents"]
        assert any(c.params.get("InstanceEventCycleStatus.1") == "Inquiring" for c in history_calls)
        assert any(c.params.get("EventId.1") == event.event_id for c in history_calls)

        # a restarted poller (ledger seeded from CLOUD) publishes nothing again
        restarted = AlibabaHistoryPoller(
            sink=await make_sink(ingest_js, topology_ready, seed=True),
            cluster="prod-1",
            settings=settings,
            clock=world.now,
        )
        await restarted.poll_once()

    stored = await cloud_messages(js, topology_ready)
    subject = cloud_subject("prod-1", "node-1", prefix=topology_ready.prefix)
    assert [(s, e.phase, e.action, e.channel) for s, _, e in stored] == [
        (subject, "scheduled", "reboot", "api_history"),
        (subject, "completed", "reboot", "api_history"),
    ]
    assert [msg_id for _, msg_id, _ in stored] == [e.id for _, _, e in stored]
    assert stored[1][2].is_terminal


async def test_a_bad_item_and_a_refused_region_cost_only_themselves(
    js: JetStreamContext, topology_ready: NatsSettings, ingest_js: JetStreamContext
) -> None:
    """One item of a history page that does not make a cloud event (an instance id longer than a node name may
    be) went to the DLQ with its whole page, every round: the reboot notice of another instance on that page
    never reached CLOUD. A region the account's RAM policy does not cover stopped the round, so the regions
    listed after it were never polled. Now the bad item alone goes to the DLQ, the notice is stored, and the
    refused region is said in the poll's error while the others are polled."""
    world = EcsWorld(clock=ManualClock())
    world.add_instance("i-node1", region_id="cn-hangzhou")
    odd = "i-" + "x" * 300
    world.add_instance(odd, region_id="cn-hangzhou")
    world.forbidden_regions.add("cn-beijing")
    kv = await js.key_value(f"{topology_ready.bucket_prefix}-inventory")
    await kv.put(
        instance_key("i-node1"), NodeInventory(cluster="prod-1", node="node-1", instance_id="i-node1").to_json()
    )
    notice = world.publish_event("i-node1", "SystemMaintenance.Reboot", not_before=world.now() + timedelta(hours=24))
    world.publish_event(odd, "SystemMaintenance.Reboot", not_before=world.now() + timedelta(hours=24))
    async with EcsEmulator(world) as emu:
        settings = _settings(
            emu,
            region_ids=["cn-beijing", "cn-hangzhou"],
        )
        poller = AlibabaHistoryPoller(
            sink=await make_sink(ingest_js, topology_ready), cluster="prod-1", settings=settings, clock=world.now
        )
        with pytest.raises(RuntimeError, match=r"1 of 2 region\(s\) failed: cn-beijing: .*Forbidden\.RAM"):
            await poller.poll_once()
    stored = await cloud_messages(js, topology_ready)
    assert [(e.provider_event_id, e.node, e.phase) for _, _, e in stored] == [(notice.event_id, "node-1", "scheduled")]
    dlq = f"{topology_ready.stream_prefix}DLQ"
    assert (await js.stream_info(dlq)).state.messages == 1
    letter = DeadLetter.model_validate_json((await js.get_msg(dlq, 1)).data)
    assert odd.encode() in letter.raw and b"i-node1" not in letter.raw


async def test_a_throttled_page_keeps_what_the_pages_before_it_gave(
    js: JetStreamContext, topology_ready: NatsSettings, ingest_js: JetStreamContext
) -> None:
    """Five reboot notices in one region, two per page: the API's flow control refuses page 3. Before, the
    region's events were submitted only once every page was read, so the throttle threw away the four notices
    of pages 1 and 2 (and with a fleet large enough to be throttled at the same page every round, they never
    reached CLOUD). Now each page is submitted as it is read: the four are stored at once, and the next round,
    unthrottled, reads every page again and stores the fifth, publishing none of the four twice."""
    world = EcsWorld(clock=ManualClock())
    notices = []
    for n in range(5):
        world.add_instance(f"i-node{n}", region_id="cn-hangzhou")
        notices.append(
            world.publish_event(
                f"i-node{n}", "SystemMaintenance.Reboot", not_before=world.now() + timedelta(hours=24 + n)
            )
        )
    world.throttled_history_pages.add(3)
    async with EcsEmulator(world) as emu:
        settings = _settings(
            emu,
            page_size=2,
            throttle_retries=0,  # a throttle that outlasts the page's retries
        )
        poller = AlibabaHistoryPoller(
            sink=await make_sink(ingest_js, topology_ready), cluster="prod-1", settings=settings, clock=world.now
        )
        with pytest.raises(RuntimeError, match=r"cn-hangzhou: .*Throttling\.User"):
            await poller.poll_once()
        assert (await js.stream_info(f"{topology_ready.stream_prefix}CLOUD")).state.messages == 4
        first = await cloud_messages(js, topology_ready)
        assert {e.phase for _, _, e in first} == {"scheduled"}

        world.throttled_history_pages.clear()
        await poller.poll_once()
        pages = [
            c.params.get("PageNumber")
            for c in emu.calls
            if c.action == "DescribeInstanceHistoryEvents" and c.params.get("InstanceEventCycleStatus.1")
        ]
        assert pages == ["1", "2", "3", "1", "2", "3"]  # the second round read from the first page again
    stored = await cloud_messages(js, topology_ready)
    assert sorted(e.provider_event_id for _, _, e in stored) == sorted(n.event_id for n in notices)
    assert len({msg_id for _, msg_id, _ in stored}) == 5


async def test_a_briefly_throttled_page_is_asked_again_within_the_round(
    js: JetStreamContext, topology_ready: NatsSettings, ingest_js: JetStreamContext
) -> None:
    """The API's flow control refuses page 2 twice, then lets it through. Before, the round gave up at page 2 and
    the events of pages 2 and 3 waited for the next round, and for ever when the throttle met the scan at the same
    page each round. Now a throttled page is asked again (backoff doubled each time) and the round reads all."""
    world = EcsWorld(clock=ManualClock())
    for n in range(5):
        world.add_instance(f"i-node{n}", region_id="cn-hangzhou")
        world.publish_event(f"i-node{n}", "SystemMaintenance.Reboot", not_before=world.now() + timedelta(hours=24 + n))
    world.history_page_refusals[2] = 2
    async with EcsEmulator(world) as emu:
        settings = _settings(
            emu,
            page_size=2,
            throttle_retries=3,
            throttle_backoff_s=0.05,
        )
        poller = AlibabaHistoryPoller(
            sink=await make_sink(ingest_js, topology_ready), cluster="prod-1", settings=settings, clock=world.now
        )
        seen = await poller.poll_once()
        pages = [
            c.params.get("PageNumber")
            for c in emu.calls
            if c.action == "DescribeInstanceHistoryEvents" and c.params.get("InstanceEventCycleStatus.1")
        ]
    assert pages == ["1", "2", "2", "2", "3"]
    assert len(seen) == 5
    assert (await js.stream_info(f"{topology_ready.stream_prefix}CLOUD")).state.messages == 5


def _asked_by_id(emu: EcsEmulator, since: int) -> list[tuple[str, set[str]]]:
    """(region, event ids) of each `EventId` reconciliation call after the first `since` calls."""
    return [
        (c.params["RegionId"], {v for k, v in c.params.items() if k.startswith("EventId.")})
        for c in emu.calls[since:]
        if c.action == "DescribeInstanceHistoryEvents" and c.params.get("EventId.1")
    ]


async def test_a_region_is_asked_only_for_its_own_open_events(
    js: JetStreamContext, topology_ready: NatsSettings, ingest_js: JetStreamContext
) -> None:
    """250 reboot notices open in cn-beijing, none in cn-hangzhou. Before, every round asked cn-hangzhou by
    `EventId` for the 250 (3 calls a round, for nothing: about R x O/100 extra calls with R regions and O open
    events, the calls likeliest to be throttled). Now an open event is asked for in the region whose scan listed
    it: a round where nothing changed asks nobody by id, and events that end there are asked there only."""
    world = EcsWorld(clock=ManualClock())
    beijing = []
    for n in range(250):
        world.add_instance(f"i-bj{n:04d}", region_id="cn-beijing")
        beijing.append(
            world.publish_event(f"i-bj{n:04d}", "SystemMaintenance.Reboot", not_before=world.now() + timedelta(days=3))
        )
    world.add_instance("i-hz0001", region_id="cn-hangzhou")
    async with EcsEmulator(world) as emu:
        settings = _settings(emu, region_ids=["cn-hangzhou", "cn-beijing"])
        poller = AlibabaHistoryPoller(
            sink=await make_sink(ingest_js, topology_ready), cluster="prod-1", settings=settings, clock=world.now
        )
        await poller.poll_once()
        before = len(emu.calls)
        await poller.poll_once()  # nothing changed anywhere
        assert _asked_by_id(emu, before) == []

        for notice in beijing[:3]:
            world.cancel_event(notice.event_id)
        before = len(emu.calls)
        ended = await poller.poll_once()
        assert _asked_by_id(emu, before) == [("cn-beijing", {n.event_id for n in beijing[:3]})]
    assert sorted((e.provider_event_id, e.phase) for e in ended if e.is_terminal) == sorted(
        (n.event_id, "canceled") for n in beijing[:3]
    )


async def test_an_open_event_of_no_polled_region_is_asked_for_less_and_less(
    js: JetStreamContext, topology_ready: NatsSettings, ingest_js: JetStreamContext
) -> None:
    """A CMS push of an account (or region) the poller does not cover stays open in the ledger: no scan lists it
    and no region knows it. Before, every region was asked for it every round, for ever. Now each region is asked
    once; when none knows it, it is asked again after 2 rounds, then 4, … (at most `UNKNOWN_REGION_BACKOFF_ROUNDS`).
    A restarted poller (the ledger seeded from CLOUD, no region known) asks for its open events in every region
    once and still sees the one that ended."""
    world = EcsWorld(clock=ManualClock())
    world.add_instance("i-hz0001", region_id="cn-hangzhou")
    world.add_instance("i-bj0001", region_id="cn-beijing")
    ours = world.publish_event("i-bj0001", "SystemMaintenance.Reboot", not_before=world.now() + timedelta(days=3))
    sink = await make_sink(ingest_js, topology_ready)
    payload = json.loads((DATA / "alibaba-cms-systemmaintenance-reboot-scheduled-1.json").read_text())
    ctx = NormalizeContext(observed_at=world.now(), cluster="prod-1")
    (foreign,) = await sink.submit(alibaba_norm.normalize_cms(payload, ctx))  # an event of another account
    async with EcsEmulator(world) as emu:
        settings = _settings(emu, region_ids=["cn-hangzhou", "cn-beijing"])
        poller = AlibabaHistoryPoller(sink=sink, cluster="prod-1", settings=settings, clock=world.now)
        asked = []
        for _ in range(4):
            before = len(emu.calls)
            await poller.poll_once()
            asked.append(_asked_by_id(emu, before))
        other = {foreign.provider_event_id}
        assert asked == [
            [("cn-hangzhou", other), ("cn-beijing", other)],
            [],
            [("cn-hangzhou", other), ("cn-beijing", other)],
            [],
        ]

        world.cancel_event(ours.event_id)  # ends while no poller runs
        restarted = AlibabaHistoryPoller(
            sink=await make_sink(ingest_js, topology_ready, seed=True),
            cluster="prod-1",
            settings=settings,
            clock=world.now,
        )
        before = len(emu.calls)
        ended = await restarted.poll_once()
        both = {foreign.provider_event_id, ours.event_id}
        assert _asked_by_id(emu, before) == [("cn-hangzhou", both), ("cn-beijing", both)]
    assert [(e.provider_event_id, e.phase) for e in ended] == [(ours.event_id, "canceled")]
