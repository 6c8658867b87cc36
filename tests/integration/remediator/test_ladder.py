"""The remediator end to end: real nats-server, KubeWorld over HTTP, ECS emulator through the real SDK.

As deployed (the `deployed` fixture, or `per_role_server` itself): the server runs deploy/nats/natsauth.py's
per-role authorization, the remediator connects under its role's credential and inbox, a node whose commands the
test sends is served by the real agent code under its own minted credential (restarts counted at the fake node's
systemctl; the commands on the wire seen by an `admin` tap); the test drives and reads as `admin` (people's CLI,
standing in for the diagnoser and, where no agent runs, the agents' probes) and checks the server logged no
permission violation."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime
from pathlib import Path

import pytest

from nodeheal.agent.app import NodeAgent
from nodeheal.remediator.control import write_approval, write_pause
from nodeheal.runtime.connect import connect
from nodeheal.runtime.jetstream import publish_model
from nodeheal.schemas.audit import RemediationRecord
from nodeheal.schemas.cloud import CloudSystemEvent
from nodeheal.schemas.inventory import inventory_key
from nodeheal.schemas.subjects import audit_subject, cloud_subject
from nodeheal.sim.ecs_api import EcsEmulator
from nodeheal.sim.kube import KubeWorld
from tests.integration.deploy.natsauth_loader import agent_nats, per_role_server, role_nats, violations
from tests.integration.remediator.harness import (
    CLUSTER,
    CommandTap,
    Deployed,
    Probes,
    add_inventory,
    audit_records,
    diagnosis,
    make_settings,
    publish_diagnosis,
    real_agent_with_a_dead_kubelet,
    serving_node,
    short_leases,
    start_service,
    wait_for_record,
)
from tests.unit.cloud_events.agent_fakenode import statvfs_with

pytestmark = pytest.mark.nats


async def test_restart_service_verified_with_event_and_fencing(
    deployed: Deployed, world: KubeWorld, tmp_path: Path
) -> None:
    """The node is served by the real agent code under its own credential: it restarts the dead kubelet (counted
    at the node's systemctl) and its probes verify it."""
    nc, admin = deployed.nc, deployed.admin
    tap = await CommandTap().watch(nc, "n1")
    await add_inventory(nc, admin, "n1", zone="z1", cloud="alibaba", instance_id="i-n1")
    async with serving_node(deployed, "n1", tmp_path) as (fake, agent):
        service = await start_service(make_settings(deployed.remediator, kube_url=world.url))
        try:
            await publish_diagnosis(nc, admin, diagnosis("n1", [("restart_service", "kubelet"), "reboot"]))
            verified = await wait_for_record(nc, admin, phase="verified")
        finally:
            await service.stop()
    records = [r for r in await audit_records(nc, admin) if r.action_id == verified.action_id]
    assert [r.phase for r in records] == ["intent", "started", "succeeded", "verified"]
    assert [c.target for c in tap.commands] == ["kubelet"]
    assert tap.commands[0].action_id == verified.action_id
    assert tap.commands[0].lease_revision is not None
    assert fake.restarts_logged() == ["kubelet.service"] and agent.executor.executed == 1  # at the node, once
    assert agent.executor.last_revision == tap.commands[0].lease_revision  # the node's fence
    assert records[0].lease_revision is not None
    assert any(e["reason"] == "NodehealRestartService" for e in world.events_for("n1"))
    assert not world.is_cordoned("n1")
    assert deployed.violations() == []


async def test_ladder_escalates_to_cloud_reboot_through_the_sdk(
    deployed: Deployed, world: KubeWorld, ecs: EcsEmulator, tmp_path: Path
) -> None:
    """The node is served by the real agent code under its own credential; the kubelet's restart fails at the
    node's systemctl; after the reboot the node's own probes show the new boot id."""
    nc, admin = deployed.nc, deployed.admin
    await add_inventory(nc, admin, "n2", zone="z1", cloud="alibaba", instance_id="i-n2")
    async with serving_node(deployed, "n2", tmp_path, fail=True) as (fake, agent):
        service = await start_service(make_settings(deployed.remediator, kube_url=world.url, ecs_endpoint=ecs.endpoint))
        try:
            await publish_diagnosis(nc, admin, diagnosis("n2", [("restart_service", "kubelet"), "reboot"]))
            call = await asyncio.wait_for(ecs.wait_for_call("RebootInstance"), timeout=20)
            # the machine came back: a new boot id (the same boot id would never verify a reboot), its kubelet up
            fake.write("/proc/sys/kernel/random/boot_id", "0f0e0d0c-1111-2222-3333-444455550002\n")
            fake.set_unit("kubelet.service", "active")
            verified = await wait_for_record(nc, admin, phase="verified")
        finally:
            await service.stop()
    assert fake.restart_calls() == ["begin kubelet.service", "end kubelet.service"] and agent.executor.executed == 1
    assert call.params["InstanceId"] == "i-n2"
    assert verified.action == "reboot"
    phases = [(r.action, r.phase) for r in await audit_records(nc, admin)]
    assert ("restart_service", "failed") in phases
    assert phases.index(("restart_service", "failed")) < phases.index(("reboot", "intent"))
    assert [c.action for c in ecs.calls] == ["RebootInstance"]
    assert deployed.violations() == []


async def test_dry_run_writes_the_same_trail_and_touches_nothing(
    deployed: Deployed, world: KubeWorld, ecs: EcsEmulator, tmp_path: Path
) -> None:
    nc, admin = deployed.nc, deployed.admin
    tap = await CommandTap().watch(nc, "n3")
    await add_inventory(nc, admin, "n3", zone="z1", cloud="alibaba", instance_id="i-n3")
    # the node's agent runs (a command sent would be answered and counted); the probes are the test's
    async with serving_node(deployed, "n3", tmp_path, probes=False) as (fake, agent):
        service = await start_service(
            make_settings(deployed.remediator, kube_url=world.url, ecs_endpoint=ecs.endpoint, dry_run=True)
        )
        try:
            async with Probes(nc, admin, "n3"):
                await publish_diagnosis(nc, admin, diagnosis("n3", ["cordon", "drain", "reboot"]))
                await wait_for_record(nc, admin, action="uncordon", phase="succeeded")
        finally:
            await service.stop()
    trail = [(r.action, r.phase) for r in await audit_records(nc, admin)]
    assert trail == [
        ("cordon", "intent"),
        ("cordon", "started"),
        ("cordon", "succeeded"),
        ("drain", "intent"),
        ("drain", "started"),
        ("drain", "succeeded"),
        ("reboot", "intent"),
        ("reboot", "started"),
        ("reboot", "succeeded"),
        ("reboot", "verified"),
        ("uncordon", "intent"),
        ("uncordon", "started"),
        ("uncordon", "succeeded"),
    ]
    assert all(r.dry_run for r in await audit_records(nc, admin))
    assert ecs.calls == []
    assert tap.commands == []
    assert fake.restart_calls() == [] and agent.executor.executed == 0
    assert world.cordoned_nodes() == []
    assert world.events_for("n3") == []
    assert deployed.violations() == []


async def test_stale_and_replayed_diagnoses_are_refused(deployed: Deployed, world: KubeWorld, tmp_path: Path) -> None:
    nc, admin = deployed.nc, deployed.admin
    tap = await CommandTap().watch(nc, "n1")
    async with serving_node(deployed, "n1", tmp_path) as (fake, agent):
        service = await start_service(make_settings(deployed.remediator, kube_url=world.url, max_diagnosis_age_s=60))
        try:
            await publish_diagnosis(nc, admin, diagnosis("n1", [("restart_service", "kubelet")], replay=True))
            await publish_diagnosis(
                nc, admin, diagnosis("n1", [("restart_service", "kubelet")]), headers={"Nodeheal-Replay": "true"}
            )
            await publish_diagnosis(nc, admin, diagnosis("n1", [("restart_service", "kubelet")], age_s=600))
            refused = await wait_for_record(nc, admin, phase="skipped")
        finally:
            await service.stop()
    assert any(c.name == "stale_diagnosis" and not c.passed for c in refused.checks)
    assert tap.commands == []
    assert fake.restart_calls() == [] and agent.executor.executed == 0
    assert [r.phase for r in await audit_records(nc, admin)] == ["skipped"]
    assert deployed.violations() == []


async def test_pause_blocks_and_resume_continues(deployed: Deployed, world: KubeWorld, tmp_path: Path) -> None:
    nc, admin = deployed.nc, deployed.admin
    tap = await CommandTap().watch(nc, "n1")
    control = await nc.jetstream().key_value(f"{admin.bucket_prefix}-control")
    await write_pause(control, paused=True, reason="incident 42", by="alice")
    async with serving_node(deployed, "n1", tmp_path) as (fake, agent):
        service = await start_service(make_settings(deployed.remediator, kube_url=world.url, verify_timeout_s=1))
        try:
            await publish_diagnosis(nc, admin, diagnosis("n1", [("restart_service", "kubelet")]))
            blocked = await wait_for_record(nc, admin, phase="blocked")
            assert "incident 42" in blocked.reason
            assert tap.commands == []
            assert fake.restart_calls() == []
            await write_pause(control, paused=False, reason="", by="alice")
            await wait_for_record(nc, admin, action="restart_service", phase="succeeded")
        finally:
            await service.stop()
    assert len(tap.commands) == 1
    assert fake.restarts_logged() == ["kubelet.service"] and agent.executor.executed == 1  # at the node, once
    assert deployed.violations() == []


async def test_a_pause_longer_than_every_retry_hands_nobody_to_a_person(tmp_path: Path, world: KubeWorld) -> None:
    """An incident pause longer than MAX_DELIVER × RETRY_DELAY_S (12.5 min by default). Before, every paused
    diagnosis was nak'ed each RETRY_DELAY_S and, on its last delivery, given up: each paused node escalated to a
    person at once, a page storm for the pause the operator chose. Now a paused ladder is held (heartbeats, no
    retries counted) and goes on when the pause is lifted.

    As deployed: the server runs deploy/nats/natsauth.py's per-role authorization, the remediator connects as
    its role, the node's command is answered (and the restart verified by its probes) by the real agent code
    under the node's own minted credential (`natsauth.py mint-agent`); the pause and its lifting are written as
    `admin` (people's CLI), which also stands in for the diagnoser. The restart is counted where it happens, at
    the fake node's systemctl, and the server logs no permission violation."""
    async with per_role_server(tmp_path, "remediator", nodes=((CLUSTER, "n1"),)) as (server, nc, admin):
        fake, agent_settings = real_agent_with_a_dead_kubelet(
            agent_nats(tmp_path, server.url, CLUSTER, "n1"), "n1", tmp_path
        )
        agent = NodeAgent(agent_settings, statvfs=statvfs_with({"root": (50, 10)}))  # type: ignore[arg-type]
        await agent.start()
        probes = asyncio.create_task(agent.run_probes())  # its probes verify the restart, as in production
        control = await nc.jetstream().key_value(f"{admin.bucket_prefix}-control")
        await write_pause(control, paused=True, reason="incident 43", by="alice")
        settings = make_settings(role_nats(tmp_path, server.url, "remediator"), kube_url=world.url)
        settings = settings.model_copy(update={"max_deliver": 3})
        service = await start_service(settings)
        try:
            await publish_diagnosis(nc, admin, diagnosis("n1", [("restart_service", "kubelet")]))
            await wait_for_record(nc, admin, phase="blocked")
            await asyncio.sleep(6 * settings.retry_delay_s + settings.ack_wait_s)  # well past 3 deliveries' retries
            records = await audit_records(nc, admin)
            assert [r.phase for r in records] == ["blocked"], [(r.action, r.phase, r.reason) for r in records]
            assert agent.executor.executed == 0 and fake.restarts_logged() == []
            await write_pause(control, paused=False, reason="", by="alice")
            await wait_for_record(nc, admin, action="restart_service", phase="verified", timeout=30)
        finally:
            await service.stop()
            await agent.stop()
            await probes
        records = await audit_records(nc, admin)
    assert fake.restarts_logged() == ["kubelet.service"]  # at the node, by the real agent, once
    assert agent.executor.executed == 1
    assert [(r.action, r.phase) for r in records] == [
        ("restart_service", "blocked"),
        ("restart_service", "intent"),
        ("restart_service", "started"),
        ("restart_service", "succeeded"),
        ("restart_service", "verified"),
    ], [(r.action, r.phase, r.reason) for r in records]
    gave_up = [r.reason for r in records if "gave up" in (r.reason or "")]
    assert not gave_up, gave_up
    assert violations(tmp_path) == []


async def test_redeploy_waits_for_approval(deployed: Deployed, world: KubeWorld, ecs: EcsEmulator) -> None:
    nc, admin = deployed.nc, deployed.admin
    await add_inventory(nc, admin, "n4", zone="z1", cloud="alibaba", instance_id="i-n4")
    service = await start_service(
        make_settings(deployed.remediator, kube_url=world.url, ecs_endpoint=ecs.endpoint, verify_timeout_s=1)
    )
    try:
        await publish_diagnosis(nc, admin, diagnosis("n4", ["redeploy"]))
        waiting = await wait_for_record(nc, admin, phase="awaiting_approval")
        assert f"nodeheal approve {waiting.action_id}" in waiting.reason
        assert ecs.calls == []
        control = await nc.jetstream().key_value(f"{admin.bucket_prefix}-control")
        await write_approval(control, action_id=waiting.action_id, by="bob")
        call = await asyncio.wait_for(ecs.wait_for_call("RedeployInstance"), timeout=20)
        started = await wait_for_record(nc, admin, action="redeploy", phase="intent")
    finally:
        await service.stop()
    assert call.params["InstanceId"] == "i-n4"
    assert any(c.name == "approval" and "bob" in c.detail for c in started.checks)
    assert deployed.violations() == []


@pytest.mark.parametrize("dead_lease", [False, True], ids=["lease-expired", "dead-holders-lease-in-force"])
async def test_a_fix_done_before_a_restart_is_verified_when_its_diagnosis_resolves(
    deployed: Deployed, world: KubeWorld, dead_lease: bool, tmp_path: Path
) -> None:
    """A replica restarted the kubelet and died before verifying it; the node recovered before the
    diagnosis came back, so the new replica gets the resolution: it verifies the restart (a `verified`
    record for that action) and sends no second command. `dead_lease`: the resolution comes while the dead
    replica's lease on the node has not aged out yet (a `nodeheal demo --chaos` run: the remediator was
    SIGKILLed 3 s after its ops-agent restart, the node recovered 26 s later, inside the lease's TTL; the
    resolution and the redelivered diagnosis were both acked as "a ladder holds the node", and the restart
    was never verified). The settle is tried again until the lease is free.

    The killed replica's records are written under the remediator role's credential (nobody else may write
    AUDIT); the node, its kubelet running again, is served by the real agent code under its own credential,
    whose probes verify the restart."""
    nc, admin = deployed.nc, deployed.admin
    tap = await CommandTap().watch(nc, "n3")
    if dead_lease:
        await short_leases(nc, admin)
        leases = await nc.jetstream().key_value(f"{admin.bucket_prefix}-leases")
        held = {"holder": "replica-killed", "node": "n3", "action": "act-restart-before-the-kill"}
        await leases.create(inventory_key(CLUSTER, "n3"), json.dumps(held).encode())
    await add_inventory(nc, admin, "n3", zone="z1", cloud="alibaba", instance_id="i-n3")
    first = diagnosis("n3", [("restart_service", "kubelet"), "reboot"])
    action_id = "act-restart-before-the-kill"
    killed = await connect(deployed.remediator, name="replica-killed")
    for phase in ("intent", "started", "succeeded"):  # what the killed replica left in AUDIT
        record = RemediationRecord(
            cluster=first.cluster,
            node="n3",
            action_id=action_id,
            action="restart_service",
            target="kubelet",
            phase=phase,
            reason="test",
            actor="replica-killed",
            diagnosis_id=first.id,
            episode_id=first.episode,
            rung=0,
            boot_id="boot-1" if phase == "intent" else None,
        )
        subject = audit_subject(first.cluster, "n3", prefix=admin.prefix)
        await publish_model(killed.jetstream(), subject, record, msg_id=f"{action_id}-{phase}")
    await killed.close()
    async with serving_node(deployed, "n3", tmp_path, healthy=True) as (fake, agent):
        service = await start_service(make_settings(deployed.remediator, kube_url=world.url))
        try:
            resolved = first.model_copy(update={"resolved": True, "identified_at": datetime.now(tz=UTC)})
            await publish_diagnosis(nc, admin, resolved)
            verified = await wait_for_record(nc, admin, phase="verified", node="n3")
        finally:
            await service.stop()
    assert verified.action_id == action_id and verified.action == "restart_service"
    assert tap.commands == []  # verified, not done again
    assert fake.restart_calls() == [] and agent.executor.executed == 0
    assert deployed.violations() == []


async def test_a_host_event_announced_during_the_approval_wait_takes_the_redeploy_over(
    deployed: Deployed, world: KubeWorld, ecs: EcsEmulator
) -> None:
    """The ladder was planned before the cloud said anything; while the redeploy waited for a person's approval,
    the cloud announced its own reboot of the host, already under way. Before, the approval released our
    RedeployInstance in the middle of the platform's recovery (the plan was never looked at again). Now the host
    events are read again right before a reboot or redeploy acts: the step is handed to the cloud's event."""
    nc, admin = deployed.nc, deployed.admin
    await add_inventory(nc, admin, "n5", zone="z1", cloud="alibaba", instance_id="i-n5")
    service = await start_service(
        make_settings(deployed.remediator, kube_url=world.url, ecs_endpoint=ecs.endpoint, verify_timeout_s=1)
    )
    try:
        await publish_diagnosis(nc, admin, diagnosis("n5", ["redeploy"]))
        waiting = await wait_for_record(nc, admin, phase="awaiting_approval")
        now = datetime.now(tz=UTC)
        ev = CloudSystemEvent(
            cluster=CLUSTER,
            node="n5",
            cloud="alibaba",
            channel="api_history",
            provider_event_id="e-n5",
            provider_event_type="SystemFailure.Reboot",
            action="reboot",
            cause="host_failure",
            phase="in_progress",
            instance_id="i-n5",
            observed_at=now,
            not_before=now,
        )
        await nc.jetstream().publish(
            cloud_subject(CLUSTER, "n5", prefix=admin.prefix),
            ev.to_json(),
            headers={"Nats-Msg-Id": ev.dedup_id},
        )
        await asyncio.sleep(1.0)  # the view reads it (its follower polls CLOUD)
        control = await nc.jetstream().key_value(f"{admin.bucket_prefix}-control")
        await write_approval(control, action_id=waiting.action_id, by="bob")
        handed = await wait_for_record(nc, admin, action="wait_for_cloud_event", phase="succeeded")
        await asyncio.sleep(1.0)  # a redeploy would come now
    finally:
        await service.stop()
    assert "e-n5" in handed.reason
    assert [c.action for c in ecs.calls] == []
    redeploy = [r.phase for r in await audit_records(nc, admin) if r.action == "redeploy"]
    assert "intent" not in redeploy and "started" not in redeploy, redeploy
    assert deployed.violations() == []


async def test_a_reboot_is_given_its_steps_time_to_come_back(
    deployed: Deployed, world: KubeWorld, ecs: EcsEmulator
) -> None:
    """The diagnoser gives each rung its time (`RecommendedAction.timeout_s`: a reboot 900 s, a redeploy 1800 s: a
    bare-metal machine can take several minutes to POST and boot). Before, the remediator verified every step for
    `VERIFY_TIMEOUT_S` (300 s) whatever the rung said: a machine still booting at 300 s was recorded as a failed
    reboot and the ladder went on to its next rung. Now a step is verified for its own time when that is longer."""
    nc, admin = deployed.nc, deployed.admin
    await add_inventory(nc, admin, "n6", zone="z1", cloud="alibaba", instance_id="i-n6")
    settings = make_settings(deployed.remediator, kube_url=world.url, ecs_endpoint=ecs.endpoint).model_copy(
        update={"verify_timeout_s": 1.0}
    )
    d = diagnosis("n6", ["reboot"])
    d = d.model_copy(
        update={"recommended": (d.recommended[0].model_copy(update={"timeout_s": 10.0}), *d.recommended[1:])}
    )
    boot = "boot-1"
    service = await start_service(settings)
    try:
        async with Probes(nc, admin, "n6", boot_id=lambda: boot):
            await asyncio.sleep(0.5)  # the node's boot id before the reboot is known
            await publish_diagnosis(nc, admin, d)
            await asyncio.wait_for(ecs.wait_for_call("RebootInstance"), timeout=20)
            await asyncio.sleep(3.0)  # longer than VERIFY_TIMEOUT_S: the machine is still booting
            boot = "boot-2"
            verified = await wait_for_record(nc, admin, node="n6", action="reboot", phase="verified")
    finally:
        await service.stop()
    assert verified.boot_id == "boot-2"
    phases = [(r.action, r.phase) for r in await audit_records(nc, admin) if r.node == "n6"]
    assert ("reboot", "failed") not in phases and not any(a == "escalate" for a, _ in phases), phases
    assert [c.action for c in ecs.calls] == ["RebootInstance"]
    assert deployed.violations() == []


@pytest.mark.parametrize("ready", [True, False], ids=["ready-node-escalates", "dark-node-reboots"])
async def test_a_drain_blocked_by_a_disruption_budget(
    deployed: Deployed, world: KubeWorld, ecs: EcsEmulator, ready: bool
) -> None:
    """A drain that a PodDisruptionBudget blocks (HTTP 429 until the drain's time is up) used to be one more failed
    preparation step: the ladder went on to its reboot, which killed the very pods the budget protected. On a node
    that is Ready (its pods serve) the ladder now stops there and hands the node to a person; on a node that is not
    Ready its pods serve nothing already, and the reboot that brings it back still runs."""
    nc, admin = deployed.nc, deployed.admin
    await add_inventory(nc, admin, "n3", zone="z1", cloud="alibaba", instance_id="i-n3")
    world.add_pod("web-1", node="n3", labels={"app": "web"})
    world.add_pdb("web", selector={"app": "web"}, min_available=1)
    world.set_ready("n3", ready)
    service = await start_service(make_settings(deployed.remediator, kube_url=world.url, ecs_endpoint=ecs.endpoint))
    try:
        async with Probes(nc, admin, "n3", boot_id="boot-1"):
            await publish_diagnosis(nc, admin, diagnosis("n3", ["cordon", "drain", "reboot"]))
            if ready:
                escalated = await wait_for_record(nc, admin, node="n3", action="escalate", timeout=30)
                await asyncio.sleep(1.0)  # a reboot would come now
            else:
                await asyncio.wait_for(ecs.wait_for_call("RebootInstance"), timeout=30)
    finally:
        await service.stop()
    phases = [(r.action, r.phase) for r in await audit_records(nc, admin) if r.node == "n3"]
    assert ("drain", "failed") in phases, phases
    if ready:
        assert [c.action for c in ecs.calls] == []
        assert "PodDisruptionBudget" in escalated.reason and "web-1" in escalated.reason, escalated.reason
        assert ("reboot", "intent") not in phases
    else:
        assert [c.action for c in ecs.calls] == ["RebootInstance"]
    assert deployed.violations() == []


async def test_a_reboot_whose_answer_was_lost_is_verified_not_followed_by_a_redeploy(
    deployed: Deployed, world: KubeWorld, ecs: EcsEmulator
) -> None:
    """RebootInstance took effect, but its answer came after the SDK's read timeout. Before, that was a failed
    reboot like any other: the ladder went on to a redeploy of a machine that was rebooting (with approval off, a
    second disruptive action for one fault). Now a reboot with no answer is verified first: the new boot id says
    it ran, and the ladder ends there."""
    nc, admin = deployed.nc, deployed.admin
    await add_inventory(nc, admin, "n2", zone="z1", cloud="alibaba", instance_id="i-n2")
    ecs.world.reply_delays["RebootInstance"] = 2.0
    settings = make_settings(deployed.remediator, kube_url=world.url, ecs_endpoint=ecs.endpoint, approval_required=[])
    settings = settings.model_copy(update={"cloud": settings.cloud.model_copy(update={"request_timeout_s": 0.5})})
    boot = "boot-1"
    service = await start_service(settings)
    try:
        async with Probes(nc, admin, "n2", boot_id=lambda: boot):
            await asyncio.sleep(0.5)  # the node's boot id before the reboot is known
            await publish_diagnosis(nc, admin, diagnosis("n2", ["reboot", "redeploy"]))
            await asyncio.wait_for(ecs.wait_for_call("RebootInstance"), timeout=20)
            boot = "boot-2"  # the machine rebooted
            verified = await wait_for_record(nc, admin, node="n2", action="reboot", phase="verified")
            await asyncio.sleep(1.0)  # a redeploy would come now
    finally:
        await service.stop()
    failed = [r for r in await audit_records(nc, admin) if r.action == "reboot" and r.phase == "failed"]
    assert len(failed) == 1 and "no answer" in failed[0].reason, failed
    assert verified.boot_id == "boot-2"
    assert [c.action for c in ecs.calls] == ["RebootInstance"]
    assert deployed.violations() == []


async def test_a_diagnosis_that_recommends_nothing_is_skipped_not_escalated(
    deployed: Deployed, world: KubeWorld
) -> None:
    """`planned_reboot` (the downtime of our own reboot) recommends only `none`: the remediator records that there
    is nothing to do. Before, the planner's "ladder exhausted" escalated it: a person paged for our own reboot."""
    nc, admin = deployed.nc, deployed.admin
    world.add_node("n-own", zone="z1")
    await add_inventory(nc, admin, "n-own", zone="z1", cloud="alibaba", instance_id="i-own")
    service = await start_service(make_settings(deployed.remediator, kube_url=world.url))
    try:
        ours = diagnosis(
            "n-own", ["none"], category="ops", cause="planned_reboot", reason="downtime caused by our own reboot"
        )
        await publish_diagnosis(nc, admin, ours)
        skipped = await wait_for_record(nc, admin, node="n-own", phase="skipped")
        await publish_diagnosis(nc, admin, diagnosis("n-own", ["cordon"]))  # a later one is still acted on
        await wait_for_record(nc, admin, node="n-own", phase="succeeded")
    finally:
        await service.stop()
    assert skipped.action == "none" and "nothing to repair" in skipped.reason
    records = [r for r in await audit_records(nc, admin) if r.diagnosis_id == ours.id]
    assert [(r.action, r.phase) for r in records] == [("none", "skipped")]
    assert world.is_cordoned("n-own")
    assert deployed.violations() == []


async def test_a_diagnosis_for_another_cluster_is_not_acted_on(deployed: Deployed, world: KubeWorld) -> None:
    """Its lease key and audit history would be another cluster's while the Kubernetes and cloud actions reach this
    cluster's node of that name (a `nodeheal batch` left at its default cluster). Before, it was acted on."""
    nc, admin = deployed.nc, deployed.admin
    service = await start_service(make_settings(deployed.remediator, kube_url=world.url))
    try:
        other = diagnosis("n1", ["cordon"]).model_copy(update={"cluster": "default"})
        await publish_diagnosis(nc, admin, other)
        skipped = await wait_for_record(nc, admin, node="n1", phase="skipped")
    finally:
        await service.stop()
    assert skipped.cluster == "default" and "this remediator serves 'c1'" in skipped.reason
    assert not world.is_cordoned("n1")
    assert deployed.violations() == []
