"""The Alibaba poller through the official SDK against the ECS OpenAPI emulator, publishing to CLOUD."""

from __future__ import annotations

from datetime import timedelta

import pytest
from nats.js.client import JetStreamContext

from nodeheal.cloud_events.ingest.pollers import AlibabaHistoryPoller
from nodeheal.cloud_events.ingest.settings import AlibabaPollerSettings
from nodeheal.cloud_events.ingest.sink import CloudEventSink, InventoryResolver, seed_ledger
from nodeheal.cloud_events.normalize import TransitionLedger
from nodeheal.runtime.settings import NatsSettings
from nodeheal.schemas import CloudSystemEvent, NodeInventory
from nodeheal.schemas.inventory import instance_key
from nodeheal.schemas.subjects import cloud_subject
from nodeheal.sim.clock import ManualClock
from nodeheal.sim.ecs_api import EcsEmulator, EcsWorld

pytestmark = pytest.mark.nats


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


async def test_scheduled_then_executed_gives_two_messages(js: JetStreamContext, topology_ready: NatsSettings) -> None:
    world = EcsWorld(clock=ManualClock())
    world.add_instance("i-node1", region_id="cn-hangzhou")
    kv = await js.key_value(f"{topology_ready.bucket_prefix}-inventory")
    await kv.put(
        instance_key("i-node1"), NodeInventory(cluster="prod-1", node="node-1", instance_id="i-node1").to_json()
    )
    event = world.publish_event("i-node1", "SystemMaintenance.Reboot", not_before=world.now() + timedelta(hours=24))

    async with EcsEmulator(world) as emu:
        settings = AlibabaPollerSettings(
            enabled=True,
            endpoint=emu.endpoint,
            protocol="http",
            region_ids=["cn-hangzhou"],
            access_key_id="sim-access-key-id",
            access_key_secret="sim-access-key-secret",
        )
        sink = await make_sink(js, topology_ready)
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
            sink=await make_sink(js, topology_ready, seed=True), cluster="prod-1", settings=settings, clock=world.now
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
