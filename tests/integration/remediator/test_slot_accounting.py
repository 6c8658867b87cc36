"""A budget slot is held while the node is disrupted and given back only when it is uncordoned or handed to a
person — whatever episode cordoned it; and the remediator's short-lived stream readers do not pile up on the
server. Real nats-server, the real remediator service, side effects counted at the emulators."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable

import pytest
from nats.aio.client import Client

from nodeheal.remediator.ledger import Ledger
from nodeheal.remediator.settings import RemediatorSettings
from nodeheal.runtime.settings import NatsSettings
from nodeheal.sim.ecs_api import EcsEmulator
from nodeheal.sim.kube import KubeWorld
from tests.integration.remediator.harness import (
    Probes,
    add_inventory,
    audit_records,
    diagnosis,
    judge_budgets,
    make_settings,
    publish_diagnosis,
    start_service,
    wait_for,
    wait_for_record,
)

pytestmark = pytest.mark.nats


async def test_a_node_handed_to_a_person_and_repaired_again_goes_back_to_the_person(
    topology_ready: NatsSettings, nc: Client, world: KubeWorld, ecs: EcsEmulator
) -> None:
    """Episode A cordons n1 and, its ladder spent, hands it to a person (the pool's only slot goes back).
    Episode B of the same node reboots it (a capacity action: nodeheal holds n1 again) and verifies it,
    but n1 stays cordoned for the person. B must say so (a hand-over record) when it gives the slot back;
    before, it released the slot silently, n2 took it, and the referee counted two nodes nodeheal held in a
    pool whose budget is one. Judged by the demo's referee, from AUDIT and the Kubernetes emulator's log."""
    for node in ("n1", "n2"):
        await add_inventory(
            nc, topology_ready, node, zone="z1", rack="r1", node_pool="p", cloud="alibaba", instance_id=f"i-{node}"
        )
    settings = make_settings(
        topology_ready,
        kube_url=world.url,
        ecs_endpoint=ecs.endpoint,
        verify_timeout_s=20,
        storm_threshold_pct=100,
        storm_min_unhealthy=100,
        pool_budget={"max_count": 1},
    )
    service = await start_service(settings)
    try:
        async with Probes(nc, topology_ready, "n1") as n1, Probes(nc, topology_ready, "n2"):
            await publish_diagnosis(nc, topology_ready, diagnosis("n1", ["cordon"], episode="ep-a"))
            await wait_for_record(nc, topology_ready, node="n1", action="escalate", phase="succeeded")
            await publish_diagnosis(nc, topology_ready, diagnosis("n1", ["reboot"], episode="ep-b"))
            await asyncio.wait_for(
                ecs.wait_for_call("RebootInstance", where=lambda c: c.params.get("InstanceId") == "i-n1"), timeout=20
            )
            n1.boot_id = "boot-2"
            await wait_for_record(nc, topology_ready, node="n1", action="reboot", phase="verified")
            await publish_diagnosis(nc, topology_ready, diagnosis("n2", ["cordon"], episode="ep-c"))
            await wait_for_record(nc, topology_ready, node="n2", action="cordon", phase="succeeded")
    finally:
        await service.stop()
    records = await audit_records(nc, topology_ready)
    assert world.cordoned_nodes() == ["n1", "n2"]  # n1 the person's, n2 nodeheal's
    judged = judge_budgets(world, records, pools={"n1": "p", "n2": "p"}, limit=1)
    assert judged["budget_exceedances"] == 0, judged
    back = [r for r in records if r.node == "n1" and r.episode_id == "ep-b" and r.action == "escalate"]
    assert back and "handed to a person" in back[0].reason
    # n1 the person's since B's hand-over; n2 since C's ladder ([cordon]) was spent too
    assert judged["handed_to_people"]["by_pool_at_end"] == {"p": 2}


async def test_a_ladder_out_of_deliveries_hands_its_cordoned_node_to_a_person(
    topology_ready: NatsSettings, nc: Client, world: KubeWorld
) -> None:
    """n1's ladder cordons it, then its drain is held back by the disruption rate on every delivery. On the
    last delivery (`max_deliver`) JetStream will not bring the diagnosis back: before, the node stayed
    cordoned with its slot held until `slot_hold_s` (1 h) expired it, and nobody was told. Now the ladder
    ends with the node handed to a person (an `escalate` record, the slot given back), which is what the
    referee needs to stop counting it against the pool."""
    await add_inventory(nc, topology_ready, "n1", zone="z1", node_pool="p")
    settings = make_settings(
        topology_ready,
        kube_url=world.url,
        storm_threshold_pct=100,
        storm_min_unhealthy=100,
        disruptive_per_minute=0,  # every drain is held back by the rate: the ladder can only ask for retries
        pool_budget={"max_count": 1},
    ).model_copy(update={"max_deliver": 3})
    service = await start_service(settings)
    try:
        await publish_diagnosis(nc, topology_ready, diagnosis("n1", ["cordon", "drain"], episode="ep-a"))
        handed = await wait_for_record(nc, topology_ready, node="n1", action="escalate", phase="succeeded")
        assert await service.remediator.ledger.slot_of("n1") is None  # type: ignore[union-attr]
    finally:
        await service.stop()
    assert "gave up" in handed.reason and "delivery 3 of 3" in handed.reason and "left it cordoned" in handed.reason
    records = await audit_records(nc, topology_ready)
    assert [r.phase for r in records if r.action == "drain"].count("blocked") == 1  # recorded once, retried 3x
    assert world.cordoned_nodes() == ["n1"]  # left for the person, not uncordoned unverified
    judged = judge_budgets(world, records, pools={"n1": "p"}, limit=1)
    assert judged["handed_to_people"]["by_pool_at_end"] == {"p": 1}


async def test_a_crashed_holders_expired_slot_is_given_back_with_a_record(
    topology_ready: NatsSettings, nc: Client, world: KubeWorld
) -> None:
    """Replica r1 cordons n1 and dies with the drain held back; its diagnosis never comes back (gone from the
    stream). r2's maintenance loop finds the slot past `slot_hold_s` and gives it back — with the hand-over
    on record, as every release is (before, the slot was dropped from the ledger silently: the node stayed
    cordoned and the audit trail said nodeheal still held it)."""
    await add_inventory(nc, topology_ready, "n1", zone="z1", node_pool="p")

    def settings(instance: str) -> RemediatorSettings:
        return make_settings(
            topology_ready,
            kube_url=world.url,
            instance=instance,
            storm_threshold_pct=100,
            storm_min_unhealthy=100,
            disruptive_per_minute=0,
            slot_hold_s=2.0,
        ).model_copy(update={"maintenance_interval_s": 0.2})

    first = await start_service(settings("r1"))
    try:
        await publish_diagnosis(nc, topology_ready, diagnosis("n1", ["cordon", "drain"], episode="ep-a"))
        await wait_for_record(nc, topology_ready, node="n1", action="drain", phase="blocked")
    finally:
        first.maintenance.interval_s = 3600.0  # type: ignore[union-attr]  # r1 is dying: it expires nothing
        await first.stop()
    js = nc.jetstream()
    await js.purge_stream(f"{topology_ready.stream_prefix}DIAGNOSES")  # it never comes back
    ledger = Ledger(await js.key_value(f"{topology_ready.bucket_prefix}-control"))
    assert await ledger.slot_of("n1") is not None
    second = await start_service(settings("r2"))
    try:
        handed = await wait_for_record(nc, topology_ready, node="n1", action="escalate", phase="succeeded")
        assert await ledger.slot_of("n1") is None
    finally:
        await second.stop()
    assert handed.actor == "r2" and "expired" in handed.reason
    assert handed.reason.startswith("escalated to a person") and handed.episode_id == "ep-a"
    assert world.cordoned_nodes() == ["n1"]


async def test_stream_readers_are_deleted_after_use(
    topology_ready: NatsSettings, nc: Client, world: KubeWorld, ecs: EcsEmulator
) -> None:
    """Each reboot reads the node's probes twice (the boot id before, the verification after), each time
    through an ephemeral consumer on PROBES; nats-py's unsubscribe leaves it on the server for its inactive
    threshold (60 s), so a storm of ladders piled up thousands of them and met "maximum consumers limit
    reached". They are deleted as soon as the reading is done."""
    nodes = ("n1", "n2", "n3")
    for node in nodes:
        await add_inventory(
            nc,
            topology_ready,
            node,
            zone="z1",
            rack=f"r-{node}",
            node_pool="p",
            cloud="alibaba",
            instance_id=f"i-{node}",
        )
    settings = make_settings(
        topology_ready,
        kube_url=world.url,
        ecs_endpoint=ecs.endpoint,
        verify_timeout_s=20,
        storm_threshold_pct=100,
        storm_min_unhealthy=100,
    )
    service = await start_service(settings)
    js = nc.jetstream()
    probes = topology_ready.topology().stream(f"{topology_ready.stream_prefix}PROBES").name

    def boot(node: str) -> Callable[[], str]:
        def now() -> str:
            calls = (c for c in ecs.calls if c.action == "RebootInstance")
            return "boot-2" if any(c.params.get("InstanceId") == f"i-{node}" for c in calls) else "boot-1"

        return now

    try:
        async with contextlib.AsyncExitStack() as stack:
            for node in nodes:
                await stack.enter_async_context(Probes(nc, topology_ready, node, boot_id=boot(node)))
            for node in nodes:
                await publish_diagnosis(nc, topology_ready, diagnosis(node, ["reboot"]))
            for node in nodes:
                await wait_for_record(nc, topology_ready, node=node, action="reboot", phase="verified")

            async def none_left() -> bool:
                return (await js.stream_info(probes)).state.consumer_count == 0

            await wait_for(none_left, timeout=5.0, what="the remediator's PROBES readers deleted")
    finally:
        await service.stop()
