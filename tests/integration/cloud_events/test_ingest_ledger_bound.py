"""The ingest's bounded ledger keeps the events still open: a full ledger forgets closed events, never an open one,
so an event that ended while the ingest was down is still asked for by the reconciliation after a restart and
its end published (docs/cloud-events.md, "Dedup ledger").

The ingest's sink, seed and poller run under the `ingest` role on a per-role server of the test's own (no permission
violation); the admin's connection stands in for the inventory watcher and reads CLOUD."""

from __future__ import annotations

import copy
import json
from datetime import timedelta
from pathlib import Path

import pytest
from nats.js.client import JetStreamContext

from nodeheal.cloud_events.ingest.pollers import AlibabaHistoryPoller
from nodeheal.cloud_events.ingest.settings import AlibabaPollerSettings
from nodeheal.cloud_events.ingest.sink import CloudEventSink, InventoryResolver, seed_ledger
from nodeheal.cloud_events.normalize import NormalizeContext, TransitionLedger
from nodeheal.cloud_events.normalize import alibaba as alibaba_norm
from nodeheal.runtime.settings import NatsSettings
from nodeheal.schemas import CloudSystemEvent, NodeInventory
from nodeheal.schemas.inventory import instance_key
from nodeheal.sim.clock import ManualClock
from nodeheal.sim.ecs_api import EcsEmulator, EcsWorld
from tests.integration.deploy.natsauth_loader import RoleServer, admin_stands_in, deployed_as

pytestmark = pytest.mark.nats

deployed = deployed_as("ingest")
nc, topology_ready = admin_stands_in()

DATA = Path(__file__).resolve().parents[2] / "data" / "cloud-events"
BOUND = 100  # `ledger_max_entities` scaled down (its floor); the same code path as 200,000


async def test_an_open_event_that_ended_during_a_restart_is_closed_though_the_ledger_is_full(
    js: JetStreamContext, topology_ready: NatsSettings, deployed: RoleServer
) -> None:
    """A reboot notice open for days while 150 other events come and go (more than the bound), then the ingest is
    down while the reboot runs: the restarted ingest's seeded ledger still holds the notice open, the reconciliation
    asks for it and its `completed` is published (before: the oldest entries were forgotten first, exactly the
    long-open notice, and CLOUD ended at `scheduled`)."""
    kv = await js.key_value(f"{topology_ready.bucket_prefix}-inventory")
    await kv.put(
        instance_key("i-node1"), NodeInventory(cluster="prod-1", node="node-1", instance_id="i-node1").to_json()
    )
    stream = f"{topology_ready.stream_prefix}CLOUD"
    ingest_js = (await deployed.role_nc("cloud-events-ingest")).jetstream()
    ingest_kv = await ingest_js.key_value(f"{topology_ready.bucket_prefix}-inventory")

    def sink(ledger: TransitionLedger) -> CloudEventSink:
        return CloudEventSink(
            js=ingest_js,
            prefix=topology_ready.prefix,
            cluster="prod-1",
            service="cloud-events-ingest",
            inventory=InventoryResolver(ingest_kv, ttl_s=0),
            ledger=ledger,
        )

    world = EcsWorld(clock=ManualClock())
    world.add_instance("i-node1", region_id="cn-hangzhou")
    event = world.publish_event("i-node1", "SystemMaintenance.Reboot", not_before=world.now() + timedelta(days=3))
    async with EcsEmulator(world) as emu:
        settings = AlibabaPollerSettings(
            enabled=True,
            endpoint=emu.endpoint,
            protocol="http",
            region_ids=["cn-hangzhou"],
            access_key_id="sim-access-key-id",
            access_key_secret="sim-access-key-secret",
        )
        first = sink(TransitionLedger(max_entities=BOUND))
        poller = AlibabaHistoryPoller(sink=first, cluster="prod-1", settings=settings, clock=world.now)
        assert [e.phase for e in await poller.poll_once()] == ["scheduled"]

        # the days after: the rest of the fleet's notices, 150 events of other instances that ended (CMS pushes),
        # while the node's notice is polled again and again (still scheduled: a duplicate)
        base = json.loads((DATA / "alibaba-cms-systemmaintenance-reboot-scheduled-1.json").read_text())
        for n in range(150):
            body = copy.deepcopy(base)
            body["content"]["eventId"] = f"e-other{n:04d}"
            body["content"]["instanceId"] = f"i-other{n:04d}"
            body["content"]["eventStatus"] = "Executed"
            await first.submit(
                alibaba_norm.normalize_cms(body, NormalizeContext(observed_at=world.now(), cluster="prod-1"))
            )
            if n % 10 == 0:
                await poller.poll_once()
        assert first.ledger.open_events("alibaba") == [event.event_id]
        assert len(first.ledger) == BOUND

        # the ingest is down while the platform runs the reboot; it restarts with its ledger seeded from CLOUD
        world.advance(timedelta(days=4))
        ledger = TransitionLedger(max_entities=BOUND)
        await seed_ledger(
            ingest_js, stream=stream, prefix=topology_ready.prefix, ledger=ledger, lookback=timedelta(days=30)
        )
        assert ledger.open_events("alibaba") == [event.event_id]
        restarted = AlibabaHistoryPoller(sink=sink(ledger), cluster="prod-1", settings=settings, clock=world.now)
        await restarted.poll_once()
        await restarted.poll_once()

    info = await js.stream_info(stream)
    phases = []
    for seq in range(info.state.first_seq, info.state.last_seq + 1):
        stored = CloudSystemEvent.model_validate_json((await js.get_msg(stream, seq)).data)
        if stored.provider_event_id == event.event_id:
            phases.append(stored.phase)
    assert phases == ["scheduled", "completed"]
    assert ledger.open_events("alibaba") == []
