"""A budget slot is held while the node is disrupted and given back only when it is uncordoned or handed to a
person — whatever episode cordoned it; and the remediator's short-lived stream readers do not pile up on the
server. Real nats-server with the deployed per-role authorization (the remediator under its role's credential and
inbox), the real remediator service, side effects counted at the emulators."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from nodeheal.cloud_events.normalize.alibaba import normalize_api
from nodeheal.cloud_events.normalize.common import NormalizeContext
from nodeheal.remediator.control import write_approval
from nodeheal.remediator.ledger import Ledger
from nodeheal.remediator.settings import RemediatorSettings
from nodeheal.schemas.cloud import CloudSystemEvent
from nodeheal.schemas.inventory import inventory_key
from nodeheal.sim.clock import SystemClock
from nodeheal.sim.ecs_api import EcsEmulator, EcsWorld, render_event
from nodeheal.sim.ecs_world import SystemEvent
from nodeheal.sim.kube import KubeWorld
from tests.integration.remediator.harness import (
    CLUSTER,
    Deployed,
    Probes,
    add_inventory,
    audit_records,
    diagnosis,
    judge_budgets,
    make_settings,
    mirrored,
    publish_diagnosis,
    start_service,
    wait_for,
    wait_for_record,
)

pytestmark = pytest.mark.nats


async def _one_slot_pool(deployed: Deployed, *, rack: str | None = None, **over: Any) -> RemediatorSettings:
    """n1 and n2 (Alibaba instances i-n1, i-n2) in pool p of zone z1 (and `rack`), whose budget is one node;
    the remediator's settings for it as deployed (its role's credential; no storm guard in the way)."""
    nc, topology_ready = deployed.nc, deployed.admin
    for node in ("n1", "n2"):
        await add_inventory(
            nc, topology_ready, node, zone="z1", rack=rack, node_pool="p", cloud="alibaba", instance_id=f"i-{node}"
        )
    values: dict[str, Any] = {
        "verify_timeout_s": 20,
        "storm_threshold_pct": 100,
        "storm_min_unhealthy": 100,
        "pool_budget": {"max_count": 1},
        **over,
    }
    return make_settings(deployed.remediator, **values)


async def test_a_node_handed_to_a_person_and_repaired_again_goes_back_to_the_person(
    deployed: Deployed, world: KubeWorld, ecs: EcsEmulator
) -> None:
    """Episode A cordons n1 and, its ladder spent, hands it to a person (the pool's only slot goes back).
    Episode B of the same node reboots it (a capacity action: nodeheal holds n1 again) and verifies it,
    but n1 stays cordoned for the person. B must say so (a hand-over record) when it gives the slot back;
    before, it released the slot silently, n2 took it, and the referee counted two nodes nodeheal held in a
    pool whose budget is one. Judged by the demo's referee, from AUDIT and the Kubernetes emulator's log."""
    nc, topology_ready = deployed.nc, deployed.admin
    settings = await _one_slot_pool(deployed, rack="r1", kube_url=world.url, ecs_endpoint=ecs.endpoint)
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
    assert deployed.violations() == []


async def test_a_host_event_handed_a_node_its_escalated_episode_gives_back_says_so(deployed: Deployed) -> None:
    """The mechanism of the one budget exceedance of the 2,000-node `--pool-budget 1 --chaos` demo (before the
    slot invariant), reproduced: a host event's episode of n1 escalated (its early accept was quarantined: n1
    had just been rebooted), n1 was handed to a person; then a diagnosis ladder cordoned n1 again (nodeheal
    holds it again) and handed it to the still-pending host event (the slot re-tagged to the event's
    episode). When the event ended, the maintenance loop gave the slot back because that episode had
    escalated — without a hand-over after the new cordon, so n2 took the pool's only slot while n1 stayed
    cordoned: the referee counted two nodes nodeheal held in a pool whose budget is one. Real remediator, ECS
    emulator through the SDK, events through the real Alibaba normalizer, judged by the demo's referee."""
    nc, topology_ready = deployed.nc, deployed.admin
    ecs_world = EcsWorld(clock=SystemClock(), reboot_duration=timedelta(seconds=1))
    n1 = ecs_world.add_instance("i-n1", region_id="cn-hangzhou")
    ecs_world.add_instance("i-n2", region_id="cn-hangzhou")
    async with KubeWorld() as world, EcsEmulator(ecs_world, tick_interval_s=0.1) as ecs:
        for node in ("n1", "n2"):
            world.add_node(node, zone="z1", node_pool="p")
        settings = (
            await _one_slot_pool(
                deployed,
                kube_url=world.url,
                ecs_endpoint=ecs.endpoint,
                flap_reboots=1,  # one reboot a day: the host event's early accept right after ours is quarantined
                cloud_drain_lead_s=7200.0,  # the event an hour away is prepared for at once
                host_reboot_guard_s=7200.0,  # ... and the ladder's own reboot gives way to it
            )
        ).model_copy(update={"maintenance_interval_s": 0.2})
        events: list[SystemEvent] = []

        def shown() -> list[CloudSystemEvent]:
            rendered = [render_event(ecs_world, ev) for ev in events]
            body = {"InstanceSystemEventSet": {"InstanceSystemEventType": rendered}}
            ctx = NormalizeContext(observed_at=datetime.now(tz=UTC), cluster=CLUSTER, node="n1")
            return normalize_api(body, ctx) if rendered else []

        service = await start_service(settings)
        try:
            async with (
                mirrored(nc, topology_ready, shown),
                Probes(nc, topology_ready, "n1", boot_id=lambda: f"boot-{n1.boot_count}"),
                Probes(nc, topology_ready, "n2"),
            ):
                # our own reboot of n1, verified (it comes back with a new boot id)
                await publish_diagnosis(nc, topology_ready, diagnosis("n1", ["reboot"], episode="ep-0"))
                await wait_for_record(nc, topology_ready, node="n1", action="reboot", phase="verified")
                # the platform schedules a host reboot an hour away: cordon, drain, early accept quarantined
                events.append(
                    ecs_world.publish_event(
                        "i-n1", "SystemMaintenance.Reboot", not_before=datetime.now(tz=UTC) + timedelta(hours=1)
                    )
                )
                cloud = f"cloud:alibaba:{events[0].event_id}"
                await wait_for_record(nc, topology_ready, node="n1", episode_id=cloud, action="escalate")
                # a new fault of n1: its ladder cordons n1 again and hands it to the pending host event
                await publish_diagnosis(nc, topology_ready, diagnosis("n1", ["cordon", "reboot"], episode="ep-d"))
                await wait_for_record(
                    nc, topology_ready, node="n1", episode_id="ep-d", action="wait_for_cloud_event", phase="succeeded"
                )
                ledger = Ledger(await nc.jetstream().key_value(f"{topology_ready.bucket_prefix}-control"))
                held = await ledger.slot_of("n1")
                assert held is not None and held.episode == cloud  # held for the host event
                ecs_world.cancel_event(events[0].event_id)  # the platform drops the event

                async def given_back() -> bool:
                    return await ledger.slot_of("n1") is None

                await wait_for(given_back, what="n1's slot given back when the host event ended")
                await publish_diagnosis(nc, topology_ready, diagnosis("n2", ["cordon"], episode="ep-n2"))
                await wait_for_record(nc, topology_ready, node="n2", action="cordon", phase="succeeded")
        finally:
            await service.stop()
        records = await audit_records(nc, topology_ready)
        assert world.cordoned_nodes() == ["n1", "n2"]  # n1 left cordoned for a person; n2 cordoned by nodeheal
        assert [c.params["InstanceId"] for c in ecs.calls if c.action == "RebootInstance"] == ["i-n1"]  # ep-0's
        judged = judge_budgets(world, records, pools={"n1": "p", "n2": "p"}, limit=1)
    assert judged["budget_exceedances"] == 0, judged
    back = [r for r in records if r.node == "n1" and r.episode_id == cloud and r.action == "escalate"]
    assert any("still cordoned" in r.reason and "episode ep-d" in r.reason for r in back), back
    assert deployed.violations() == []


async def test_a_ladder_out_of_deliveries_hands_its_cordoned_node_to_a_person(
    deployed: Deployed, world: KubeWorld
) -> None:
    """n1's ladder cordons it, then its drain is held back by the disruption rate on every delivery. On the
    last delivery (`max_deliver`) JetStream will not bring the diagnosis back: before, the node stayed
    cordoned with its slot held until `slot_hold_s` (1 h) expired it, and nobody was told. Now the ladder
    ends with the node handed to a person (an `escalate` record, the slot given back), which is what the
    referee needs to stop counting it against the pool."""
    nc, topology_ready = deployed.nc, deployed.admin
    await add_inventory(nc, topology_ready, "n1", zone="z1", node_pool="p")
    settings = make_settings(
        deployed.remediator,
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
        ledger = service.remediator.ledger  # type: ignore[union-attr]

        async def slot_given_back() -> bool:
            return await ledger.slot_of("n1") is None

        # the hand-over is recorded first, then the slot is given back (after its Kubernetes event): a moment
        await wait_for(slot_given_back, timeout=10.0, what="n1's slot given back after the hand-over")
    finally:
        await service.stop()
    assert "gave up" in handed.reason and "delivery 3 of 3" in handed.reason and "left it cordoned" in handed.reason
    records = await audit_records(nc, topology_ready)
    assert [r.phase for r in records if r.action == "drain"].count("blocked") == 1  # recorded once, retried 3x
    assert world.cordoned_nodes() == ["n1"]  # left for the person, not uncordoned unverified
    judged = judge_budgets(world, records, pools={"n1": "p"}, limit=1)
    assert judged["handed_to_people"]["by_pool_at_end"] == {"p": 1}
    assert deployed.violations() == []


async def test_a_crashed_holders_expired_slot_is_given_back_with_a_record(deployed: Deployed, world: KubeWorld) -> None:
    """Replica r1 cordons n1 and dies with the drain held back; its diagnosis never comes back (gone from the
    stream). r2's maintenance loop finds the slot past `slot_hold_s` and gives it back — with the hand-over
    on record, as every release is (before, the slot was dropped from the ledger silently: the node stayed
    cordoned and the audit trail said nodeheal still held it)."""
    nc, topology_ready = deployed.nc, deployed.admin
    await add_inventory(nc, topology_ready, "n1", zone="z1", node_pool="p")

    def settings(instance: str) -> RemediatorSettings:
        return make_settings(
            deployed.remediator,
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
        await wait_for(lambda: _released(ledger, "n1"), timeout=10.0, what="n1's slot given back after the record")
    finally:
        await second.stop()
    assert handed.actor == "r2" and "expired" in handed.reason
    assert handed.reason.startswith("escalated to a person") and handed.episode_id == "ep-a"
    assert world.cordoned_nodes() == ["n1"]
    assert deployed.violations() == []


async def test_a_node_that_leaves_the_fleet_mid_ladder_gives_its_slot_back_with_a_record(
    deployed: Deployed, world: KubeWorld
) -> None:
    """n1's ladder cordons it and waits (its drain held back by the disruption rate); then n1 leaves the
    fleet (its inventory record is deleted: released, decommissioned). Its slot goes back at once, with the
    hand-over on record (n1 is still cordoned) — before, the ladder stopped as "left the fleet" and the slot
    stayed held until `slot_hold_s`, blocking the pool."""
    nc, topology_ready = deployed.nc, deployed.admin
    await add_inventory(nc, topology_ready, "n1", zone="z1", node_pool="p")
    settings = make_settings(
        deployed.remediator,
        kube_url=world.url,
        storm_threshold_pct=100,
        storm_min_unhealthy=100,
        disruptive_per_minute=0,
    )
    service = await start_service(settings)
    ledger = Ledger(await nc.jetstream().key_value(f"{topology_ready.bucket_prefix}-control"))
    try:
        await publish_diagnosis(nc, topology_ready, diagnosis("n1", ["cordon", "drain"], episode="ep-a"))
        await wait_for_record(nc, topology_ready, node="n1", action="drain", phase="blocked")
        assert await ledger.slot_of("n1") is not None
        inventory = await nc.jetstream().key_value(f"{topology_ready.bucket_prefix}-inventory")
        await inventory.delete(inventory_key(CLUSTER, "n1"))
        handed = await wait_for_record(nc, topology_ready, node="n1", action="escalate", phase="succeeded")
        await wait_for(lambda: _released(ledger, "n1"), timeout=10.0, what="n1's slot given back after the record")
    finally:
        await service.stop()
    assert "left the fleet" in handed.reason and "still cordoned" in handed.reason
    records = await audit_records(nc, topology_ready)
    assert [r.phase for r in records if r.action == "drain"] == ["blocked"]  # never drained after it left
    assert deployed.violations() == []


async def test_stream_readers_are_deleted_after_use(deployed: Deployed, world: KubeWorld, ecs: EcsEmulator) -> None:
    """Each reboot reads the node's probes twice (the boot id before, the verification after), each time
    through an ephemeral consumer on PROBES; nats-py's unsubscribe leaves it on the server for its inactive
    threshold (60 s), so a storm of ladders piled up thousands of them and met "maximum consumers limit
    reached". They are deleted as soon as the reading is done."""
    nc, topology_ready = deployed.nc, deployed.admin
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
        deployed.remediator,
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
    assert deployed.violations() == []


async def _released(ledger: Ledger, node: str) -> bool:
    """The slot is given back a moment after the hand-over record (the record comes first)."""
    return await ledger.slot_of(node) is None


async def test_a_ladder_waiting_for_a_budget_slot_outlives_the_diagnosis_age_bound(
    deployed: Deployed, world: KubeWorld, ecs: EcsEmulator
) -> None:
    """n1 holds the pool's only slot (cordoned, rebooted, its verification waits out `verify_timeout_s`);
    n2's ladder is blocked by the budget, and by the time the slot comes back its diagnosis is older than
    `max_diagnosis_age_s`. The age bound is for acting on an old signal: n2's ladder began on a fresh one (its
    blocked step is on record), so it carries on and cordons n2. Before, the stale diagnosis was refused and
    n2 handed to a person without a repair (seen in a 300-node chaos demo: a `power_loss` drain held by the
    rack budget for 300 s)."""
    nc, topology_ready = deployed.nc, deployed.admin
    settings = await _one_slot_pool(
        deployed, kube_url=world.url, ecs_endpoint=ecs.endpoint, verify_timeout_s=6, max_diagnosis_age_s=2
    )
    service = await start_service(settings)
    try:
        await publish_diagnosis(nc, topology_ready, diagnosis("n1", ["cordon", "reboot"], episode="ep-1"))
        await wait_for_record(nc, topology_ready, node="n1", action="cordon", phase="succeeded")
        first = diagnosis("n2", ["cordon"], episode="ep-2")
        await publish_diagnosis(nc, topology_ready, first)
        await wait_for_record(nc, topology_ready, node="n2", action="cordon", phase="blocked")
        # the diagnoser updates the episode while it waits (a fleet finding, a new fingerprint): the update is
        # identified later, and what its predecessor began is still what it carries on
        await asyncio.sleep(1.0)
        n2 = diagnosis("n2", ["cordon"], episode="ep-2", reason="updated: rack finding")
        await publish_diagnosis(nc, topology_ready, n2)
        started = await wait_for_record(nc, topology_ready, node="n2", action="cordon", phase="started", timeout=40)
    finally:
        await service.stop()
    records = await audit_records(nc, topology_ready)
    assert (started.time - n2.identified_at).total_seconds() > 2  # past the age bound when it acted
    assert started.diagnosis_id == n2.id
    assert not [r for r in records if r.node == "n2" and r.phase == "skipped"], "n2's diagnosis was refused"
    assert "n2" in world.cordoned_nodes()  # the cordon happened, at the Kubernetes emulator
    judged = judge_budgets(world, records, pools={"n1": "p", "n2": "p"}, limit=1)
    assert judged["budget_exceedances"] == 0, judged
    assert deployed.violations() == []


async def test_a_ladder_held_only_by_a_pause_is_not_acted_on_past_the_age_bound(
    deployed: Deployed, world: KubeWorld, ecs: EcsEmulator
) -> None:
    """A pause holds n1's ladder before its first step; its diagnosis ages past `max_diagnosis_age_s`. A
    ladder held back only by a pause (or the storm guard) has not begun on a fresh signal: once stale it is
    refused as before, not carried on to its last delivery and handed to a person one node at a time."""
    nc, topology_ready = deployed.nc, deployed.admin
    from nodeheal.remediator.control import write_pause

    settings = (
        await _one_slot_pool(deployed, kube_url=world.url, ecs_endpoint=ecs.endpoint, max_diagnosis_age_s=2)
    ).model_copy(update={"max_deliver": 40})
    control = await nc.jetstream().key_value(f"{topology_ready.bucket_prefix}-control")
    await write_pause(control, paused=True, reason="change freeze", by="pytest")
    service = await start_service(settings)
    try:
        await publish_diagnosis(nc, topology_ready, diagnosis("n1", ["cordon"], episode="ep-p"))
        blocked = await wait_for_record(nc, topology_ready, node="n1", action="cordon", phase="blocked")
        assert any(c.name == "pause" and not c.passed for c in blocked.checks)
        refused = await wait_for_record(nc, topology_ready, node="n1", phase="skipped", timeout=30)
    finally:
        await service.stop()
        await write_pause(control, paused=False, reason="", by="pytest")
    assert "identified" in refused.reason and "bound 2s" in refused.reason, refused.reason
    records = await audit_records(nc, topology_ready)
    assert not [r for r in records if r.node == "n1" and r.action == "escalate"], "handed over one by one"
    assert world.cordoned_nodes() == []
    assert deployed.violations() == []


async def test_a_slot_keeps_counting_while_its_ladder_waits_for_approval_past_the_hold(
    deployed: Deployed, world: KubeWorld, ecs: EcsEmulator
) -> None:
    """n1's ladder cordons it (the pool's only slot) and then waits for a person's approval of its redeploy —
    longer than `slot_hold_s`. Meanwhile n2 of the same pool is diagnosed. n2 must wait until n1's ladder ends
    (approved, redeployed, verified, uncordoned): before, n1's slot stopped counting `slot_hold_s` after the
    cordon although its ladder was alive, and n2 was cordoned beside it. The slot is renewed while its ladder
    lives; `slot_hold_s` is for a holder that died. Counted at the Kubernetes emulator."""
    nc, topology_ready = deployed.nc, deployed.admin
    settings = (
        await _one_slot_pool(deployed, kube_url=world.url, ecs_endpoint=ecs.endpoint, slot_hold_s=2.0)
    ).model_copy(update={"maintenance_interval_s": 0.2})  # the stale-slot reaper looks often

    def boot() -> str:
        redeployed = any(c.action == "RedeployInstance" and c.params.get("InstanceId") == "i-n1" for c in ecs.calls)
        return "boot-2" if redeployed else "boot-1"

    ledger = Ledger(await nc.jetstream().key_value(f"{topology_ready.bucket_prefix}-control"))
    service = await start_service(settings)
    try:
        async with Probes(nc, topology_ready, "n1", boot_id=boot), Probes(nc, topology_ready, "n2"):
            await publish_diagnosis(nc, topology_ready, diagnosis("n1", ["cordon", "redeploy"], episode="ep-a"))
            waiting = await wait_for_record(nc, topology_ready, node="n1", action="redeploy", phase="awaiting_approval")
            await asyncio.sleep(5.0)  # two and a half holds pass while the ladder waits for a person
            await publish_diagnosis(nc, topology_ready, diagnosis("n2", ["cordon"], episode="ep-b"))

            async def n2_decided() -> bool:
                return any(
                    r.node == "n2" and r.action == "cordon" and r.phase in ("blocked", "started")
                    for r in await audit_records(nc, topology_ready)
                )

            await wait_for(n2_decided, what="n2's cordon blocked or started")
            assert world.cordoned_nodes() == ["n1"]  # n2 not cordoned while n1's ladder waits
            held = await ledger.slot_of("n1")
            assert held is not None and held.until > datetime.now(tz=UTC), held  # renewed: still counting
            blocked = await wait_for_record(nc, topology_ready, node="n2", action="cordon", phase="blocked")
            assert any(c.name == "budget.node_pool" and not c.passed for c in blocked.checks), blocked.checks
            control = await nc.jetstream().key_value(f"{topology_ready.bucket_prefix}-control")
            await write_approval(control, action_id=waiting.action_id, by="bob")
            await wait_for_record(nc, topology_ready, node="n1", action="redeploy", phase="verified", timeout=30)
            await wait_for_record(nc, topology_ready, node="n2", action="cordon", phase="succeeded", timeout=40)
    finally:
        await service.stop()
    effects = [(node, effect) for _, node, effect in sorted(world.effects) if effect in ("cordon", "uncordon")]
    assert effects == [("n1", "cordon"), ("n1", "uncordon"), ("n2", "cordon")], effects
    judged = judge_budgets(world, await audit_records(nc, topology_ready), pools={"n1": "p", "n2": "p"}, limit=1)
    assert judged["budget_exceedances"] == 0, judged
    assert deployed.violations() == []
