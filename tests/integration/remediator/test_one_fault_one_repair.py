"""Issue 13 regressions on a real nats-server through the real remediator service: one ladder per fault
episode, verification by the detector's rules with a new boot id, every gate at every step, the lease
re-checked after a wait. Side effects are counted at the emulators (ECS API calls, Kubernetes patches).

As deployed (the `deployed` fixture): the server runs deploy/nats/natsauth.py's per-role authorization and the
remediator connects under its role's credential and inbox; the test writes diagnoses, probes, inventory and
other holders' leases as `admin` (people's CLI, standing in for the diagnoser and the agents: no node command is
sent here) and checks the server logged no permission violation."""

from __future__ import annotations

import asyncio

import pytest

from nodeheal.remediator.control import storm_key, storm_value, write_approval
from nodeheal.remediator.ledger import Ledger
from nodeheal.schemas.diagnosis import Diagnosis
from nodeheal.schemas.inventory import inventory_key
from nodeheal.sim.ecs_api import EcsEmulator
from nodeheal.sim.kube import KubeWorld
from tests.integration.remediator.harness import (
    CLUSTER,
    Deployed,
    Probes,
    add_inventory,
    audit_records,
    diagnosis,
    make_settings,
    publish_diagnosis,
    short_leases,
    start_service,
    wait_for,
    wait_for_record,
)

pytestmark = pytest.mark.nats


def reboots(ecs: EcsEmulator, instance: str) -> int:
    return sum(
        1
        for c in ecs.calls
        if c.action in ("RebootInstance", "RedeployInstance") and c.params.get("InstanceId") == instance
    )


async def test_an_updated_diagnosis_never_reboots_a_node_twice_and_a_reboot_needs_a_new_boot_id(
    deployed: Deployed, world: KubeWorld, ecs: EcsEmulator
) -> None:
    nc, admin = deployed.nc, deployed.admin
    for node in ("n1", "n2"):
        await add_inventory(nc, admin, node, zone="z1", cloud="alibaba", instance_id=f"i-{node}")
    service = await start_service(make_settings(deployed.remediator, kube_url=world.url, ecs_endpoint=ecs.endpoint))
    try:
        async with Probes(nc, admin, "n1") as n1, Probes(nc, admin, "n2"):
            first = diagnosis("n1", ["cordon", "reboot"], episode="ep-n1")
            await publish_diagnosis(nc, admin, first)
            await asyncio.wait_for(
                ecs.wait_for_call("RebootInstance", where=lambda c: c.params.get("InstanceId") == "i-n1"), timeout=20
            )
            n1.boot_id = "boot-2"  # the machine came back
            verified = await wait_for_record(nc, admin, phase="verified", node="n1")
            assert verified.boot_id == "boot-2" and "new boot id boot-2" in verified.reason
            await wait_for_record(nc, admin, action="uncordon", phase="succeeded", node="n1")
            # a fleet finding gives the open diagnosis a new id: same episode, amended ladder
            update = diagnosis("n1", ["cordon", "drain", "reboot", "redeploy"], episode="ep-n1")
            await publish_diagnosis(nc, admin, update)
            skipped = await wait_for_record(nc, admin, diagnosis_id=update.id, phase="skipped")
            assert "verified healthy" in skipped.reason

            # n2: healthy probes, but the boot id never changes after the reboot: never verified
            await publish_diagnosis(nc, admin, diagnosis("n2", ["reboot"], episode="ep-n2"))
            failed = await wait_for_record(nc, admin, node="n2", action="reboot", phase="failed")
            assert "boot id still boot-1" in failed.reason
            await wait_for_record(nc, admin, node="n2", action="escalate", phase="succeeded")
    finally:
        await service.stop()
    assert reboots(ecs, "i-n1") == 1  # one fault, one reboot (counted at the ECS emulator)
    assert not world.is_cordoned("n1")
    records = await audit_records(nc, admin)
    assert not [r for r in records if r.diagnosis_id == update.id and r.phase in ("intent", "started")]
    assert not [r for r in records if r.node == "n2" and r.phase == "verified"]
    assert deployed.violations() == []


async def test_every_disruptive_step_passes_the_rate_gate_and_a_node_blocked_to_its_last_delivery_is_escalated(
    deployed: Deployed, world: KubeWorld, ecs: EcsEmulator
) -> None:
    """The reboot after the drain is held back by the disruption rate (one disruptive start a minute). The
    diagnosis grows older than `max_diagnosis_age_s` while it waits: its ladder began on a fresh signal, so it
    is not refused as stale; it waits until its last delivery (`max_deliver`) and then the still-sick, cordoned
    node is handed to a person with its slot, never rebooted past the rate."""
    nc, admin = deployed.nc, deployed.admin
    await add_inventory(nc, admin, "n3", zone="z1", cloud="alibaba", instance_id="i-n3")
    settings = make_settings(
        deployed.remediator,
        kube_url=world.url,
        ecs_endpoint=ecs.endpoint,
        disruptive_per_minute=1,  # the drain uses the minute's only disruptive start
        max_diagnosis_age_s=1.0,
    ).model_copy(update={"max_deliver": 8})  # 8 deliveries 0.5 s apart: past the age bound, inside the minute
    service = await start_service(settings)
    try:
        async with Probes(nc, admin, "n3", kubelet="failed"):
            d = diagnosis("n3", ["cordon", "drain", "reboot"])
            await publish_diagnosis(nc, admin, d)
            blocked = await wait_for_record(nc, admin, node="n3", action="reboot", phase="blocked")
            assert any(c.name == "rate" and not c.passed for c in blocked.checks)
            assert world.is_cordoned("n3")
            ledger = Ledger(await nc.jetstream().key_value(f"{admin.bucket_prefix}-control"))
            assert (await ledger.slot_of("n3")) is not None  # held while the node is cordoned
            escalated = await wait_for_record(nc, admin, node="n3", action="escalate", phase="succeeded", timeout=30)
            assert "gave up" in escalated.reason and "left it cordoned" in escalated.reason
            await wait_for(lambda: _no_slot(ledger, "n3"), what="slot handed over with the node")
    finally:
        await service.stop()
    assert reboots(ecs, "i-n3") == 0
    records = await audit_records(nc, admin)
    assert not [r for r in records if r.node == "n3" and r.action == "reboot" and r.phase == "intent"]
    assert not [r for r in records if r.node == "n3" and r.phase == "skipped"], "refused as stale mid-ladder"
    # the same block on every delivery is one record: AUDIT says what the step waits for, not each retry
    assert len([r for r in records if r.node == "n3" and r.action == "reboot" and r.phase == "blocked"]) == 1
    assert deployed.violations() == []


async def _no_slot(ledger: Ledger, node: str) -> bool:
    return await ledger.slot_of(node) is None


async def test_the_lease_is_checked_again_after_the_approval_wait(
    deployed: Deployed, world: KubeWorld, ecs: EcsEmulator
) -> None:
    nc, admin = deployed.nc, deployed.admin
    await add_inventory(nc, admin, "n4", zone="z1", cloud="alibaba", instance_id="i-n4")
    service = await start_service(make_settings(deployed.remediator, kube_url=world.url, ecs_endpoint=ecs.endpoint))
    js = nc.jetstream()
    try:
        d = diagnosis("n4", ["redeploy"])
        await publish_diagnosis(nc, admin, d)
        waiting = await wait_for_record(nc, admin, node="n4", phase="awaiting_approval")
        leases = await js.key_value(f"{admin.bucket_prefix}-leases")
        key = inventory_key(CLUSTER, "n4")
        # another holder takes the node while the approval is pending (our lease expired meanwhile)
        await leases.delete(key)
        await leases.create(key, b'{"holder": "intruder"}')
        control = await js.key_value(f"{admin.bucket_prefix}-control")
        await write_approval(control, action_id=waiting.action_id, by="alice")
        await asyncio.sleep(2.0)  # give a wrong remediator time to act (the assertion is that it did not)
    finally:
        await service.stop()
    assert reboots(ecs, "i-n4") == 0  # fenced: approval arrived, but the node was no longer ours
    records = await audit_records(nc, admin)
    assert not [r for r in records if r.node == "n4" and r.phase in ("intent", "started")]
    assert deployed.violations() == []


async def test_a_restarted_remediator_keeps_the_storm_in_force(deployed: Deployed, world: KubeWorld) -> None:
    nc, admin = deployed.nc, deployed.admin
    control = await nc.jetstream().key_value(f"{admin.bucket_prefix}-control")
    key = storm_key("zone", "z-storm")
    # what a replica recorded when the storm began (before it was killed)
    await control.put(key, storm_value("zone", "z-storm", unhealthy=4, size=10))
    try:
        service = await start_service(make_settings(deployed.remediator, kube_url=world.url))
        try:
            # the hysteresis survives: the storm ends only below the resume share, not because memory is empty
            assert ("zone", "z-storm") in service.remediator.storms  # type: ignore[union-attr]
        finally:
            await service.stop()
    finally:
        await control.delete(key)
    assert deployed.violations() == []


async def test_a_node_that_recovers_while_its_ladder_waits_is_verified_before_it_is_uncordoned(
    deployed: Deployed, world: KubeWorld, ecs: EcsEmulator
) -> None:
    """The chaos demo's "unresolved" transient kernel faults: the node was cordoned, the next step waited
    for the rate limit, the fault cleared by itself, and the ladder gave the node back — uncordoned
    without a `verified` record, so the episode ended with an action nobody was seen to check (the
    referee and `nodeheal replay` count it unrepaired). The ladder verifies it; the proof is recorded.
    (Which of the remediator's three give-back paths runs here depends on timing — the waiting ladder's
    `_settle_run`, the refused redelivery's or the resolution's `_settle`; each records `verified`.)"""
    nc, admin = deployed.nc, deployed.admin
    await add_inventory(nc, admin, "n5", zone="z1", cloud="alibaba", instance_id="i-n5")
    settings = make_settings(
        deployed.remediator, kube_url=world.url, ecs_endpoint=ecs.endpoint, disruptive_per_minute=1
    )
    service = await start_service(settings)
    try:
        async with Probes(nc, admin, "n5"):
            d = diagnosis("n5", ["cordon", "drain", "reboot"], episode="ep-n5")
            await publish_diagnosis(nc, admin, d)
            await wait_for_record(nc, admin, node="n5", action="reboot", phase="blocked")
            assert world.is_cordoned("n5")
            # the node's recovery reaches the waiting ladder (its view of DIAGNOSES); the resolution names
            # an earlier episode of the node, so only the ladder acts on it (no settle of its own)
            resolved = diagnosis("n5", ["none"], episode="ep-n5-before", resolved=True)
            await publish_diagnosis(nc, admin, resolved)
            back = await wait_for_record(nc, admin, node="n5", action="uncordon", phase="succeeded")
    finally:
        await service.stop()
    records = await audit_records(nc, admin)
    verified = [r for r in records if r.node == "n5" and r.phase == "verified"]
    assert verified and min(r.time for r in verified) <= back.time
    assert reboots(ecs, "i-n5") == 0 and not world.is_cordoned("n5")
    assert deployed.violations() == []


async def test_a_node_settled_on_the_next_episodes_diagnosis_is_verified_under_the_episode_that_acted(
    deployed: Deployed, world: KubeWorld, ecs: EcsEmulator
) -> None:
    """Seed 7's lost `rcu_stall`: the remediator rebooted the node and was stopped before verifying; the
    fault cleared, our own downtime opened the next episode, and the node was verified and given back on
    that episode's resolution — under its diagnosis, so the proof joined the next incident and the first
    ended unverified. The proof and the uncordon are recorded under the diagnosis that acted."""
    nc, admin = deployed.nc, deployed.admin
    await short_leases(nc, admin)  # a dead holder ages out fast
    await add_inventory(nc, admin, "n6", zone="z1", cloud="alibaba", instance_id="i-n6")
    # a long ack wait: the stopped replica's diagnosis comes back only after the next episode is settled
    settings = make_settings(deployed.remediator, kube_url=world.url, ecs_endpoint=ecs.endpoint).model_copy(
        update={"ack_wait_s": 60.0, "verify_timeout_s": 60.0}
    )
    async with Probes(nc, admin, "n6") as probes:
        first = await start_service(settings)
        try:
            acted = diagnosis("n6", ["cordon", "reboot"], episode="ep-n6-a")
            await publish_diagnosis(nc, admin, acted)
            await asyncio.wait_for(
                ecs.wait_for_call("RebootInstance", where=lambda c: c.params.get("InstanceId") == "i-n6"), timeout=20
            )
            await wait_for_record(nc, admin, node="n6", action="reboot", phase="succeeded")
        finally:
            await first.stop()  # between the action and its verification
        probes.boot_id = "boot-2"  # the machine came back
        # our own downtime was the next episode of the node, which resolved with the node back
        await publish_diagnosis(nc, admin, diagnosis("n6", ["none"], episode="ep-n6-b"))
        await publish_diagnosis(nc, admin, diagnosis("n6", ["none"], episode="ep-n6-b", resolved=True))
        second = await start_service(settings)
        try:
            await wait_for_record(nc, admin, node="n6", action="uncordon", phase="succeeded")
        finally:
            await second.stop()
    records = [r for r in await audit_records(nc, admin) if r.node == "n6"]
    given_back = [r for r in records if r.phase == "verified" or r.action == "uncordon"]
    assert given_back and {(r.diagnosis_id, r.episode_id) for r in given_back} == {(acted.id, "ep-n6-a")}
    assert reboots(ecs, "i-n6") == 1 and not world.is_cordoned("n6")
    assert deployed.violations() == []


async def test_a_replica_started_after_the_node_recovered_does_not_repair_it(
    deployed: Deployed, world: KubeWorld, ecs: EcsEmulator
) -> None:
    """A replica acked the node's recovery and died holding the node's reboot diagnosis (waiting for
    capacity or approval). The diagnosis is redelivered to a replica started after `unhealthy_window_s`
    (15 min; 1 s here): its view reads DIAGNOSES back as far as a ladder can wait, not the window alone, so
    it knows the node recovered and reboots nothing."""
    nc, admin = deployed.nc, deployed.admin
    world.add_node("n7", zone="z1")
    await add_inventory(nc, admin, "n7", zone="z1", cloud="alibaba", instance_id="i-n7")
    settings = make_settings(deployed.remediator, kube_url=world.url, ecs_endpoint=ecs.endpoint, unhealthy_window_s=1.0)
    first = await start_service(settings)  # the durable, as the service keeps it
    await first.stop()
    d = diagnosis("n7", ["reboot"], episode="ep-n7")
    await publish_diagnosis(nc, admin, d)
    await publish_diagnosis(nc, admin, diagnosis("n7", ["none"], episode="ep-n7", resolved=True))
    # what the dead replica did: acked the recovery, left the reboot diagnosis unacked
    stream = admin.topology().stream(f"{admin.stream_prefix}DIAGNOSES").name
    held = await nc.jetstream().pull_subscribe_bind("remediator", stream=stream)
    for msg in await held.fetch(2, timeout=5):
        if Diagnosis.model_validate_json(msg.data).resolved:
            await msg.ack()
        else:
            await msg.nak()
    await asyncio.sleep(1.5)  # both are now older than the unhealthy window
    service = await start_service(settings)
    try:
        skipped = await wait_for_record(nc, admin, node="n7", diagnosis_id=d.id, phase="skipped")
    finally:
        await service.stop()
    assert "recovered" in skipped.reason
    assert reboots(ecs, "i-n7") == 0
    assert not world.is_cordoned("n7")
    assert deployed.violations() == []
