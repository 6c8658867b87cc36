"""An episode handed to a person stays handed over across a remediator restart: the replica started after it
rebuilds the episode from AUDIT (the records of its node within the repair window) and does not act on it again.
Here the ladder's reboot ran (RebootInstance at the ECS emulator) but the node never came back with a new boot id,
so the episode was escalated; the remediator is stopped and a new one started, and the diagnoser's update of the
same episode (the fault still there) reaches the new one. It must be acknowledged without a second reboot or any
other step: no RebootInstance, no new action record. Real remediator service, real nats-server with the deployed
per-role authorization, the ECS emulator through the real SDK."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

import pytest

from nodeheal.remediator import planner
from nodeheal.remediator.handlers import RemediatorService
from nodeheal.remediator.ledger import Ledger
from nodeheal.remediator.settings import RemediatorSettings
from nodeheal.runtime.connect import connect
from nodeheal.runtime.jetstream import publish_model
from nodeheal.schemas.audit import RemediationRecord
from nodeheal.schemas.cloud import CloudSystemEvent
from nodeheal.schemas.subjects import audit_subject
from nodeheal.sim.ecs_api import EcsEmulator
from nodeheal.sim.kube import KubeWorld
from tests.integration.remediator.harness import (
    Deployed,
    Probes,
    add_inventory,
    audit_records,
    diagnosis,
    make_settings,
    publish_diagnosis,
    start_service,
    wait_for,
    wait_for_record,
)
from tests.integration.remediator.test_host_event_lifecycle import (
    LATER,
    LEAD_S,
    SOON,
    host_event,
    publish_cloud,
)

pytestmark = pytest.mark.nats


async def test_an_escalated_episode_is_not_acted_on_again_after_a_restart(
    deployed: Deployed, world: KubeWorld, ecs: EcsEmulator
) -> None:
    nc, admin = deployed.nc, deployed.admin
    await add_inventory(nc, admin, "n3", zone="z1", cloud="alibaba", instance_id="i-n3")
    settings = make_settings(deployed.remediator, kube_url=world.url, ecs_endpoint=ecs.endpoint).model_copy(
        update={"verify_timeout_s": 1.0}
    )
    first = diagnosis("n3", ["reboot"], episode="ep-stuck")
    async with Probes(nc, admin, "n3", boot_id="boot-1"):  # the machine never shows a new boot
        service = await start_service(settings)
        try:
            await publish_diagnosis(nc, admin, first)
            await asyncio.wait_for(ecs.wait_for_call("RebootInstance"), timeout=20)
            escalated = await wait_for_record(nc, admin, node="n3", action="escalate", phase="succeeded")
        finally:
            await service.stop()
        before = await audit_records(nc, admin)
        assert escalated.episode_id == first.episode
        assert [(r.action, r.phase) for r in before if r.action == "reboot"][-1] == ("reboot", "failed")

        # the restart: a new remediator, and the same fault's next diagnosis (same episode, identified later)
        update = diagnosis("n3", ["reboot"], episode="ep-stuck")
        assert update.episode == first.episode and update.id != first.id
        service = await start_service(settings)
        try:
            await publish_diagnosis(nc, admin, update)
            js = nc.jetstream()
            stream = settings.nats.topology().stream(f"{settings.nats.stream_prefix}DIAGNOSES").name

            async def handled() -> bool:
                # the durable has the update delivered and acknowledged: the new replica is done with it
                last = (await js.stream_info(stream)).state.last_seq
                info = await js.consumer_info(stream, settings.durable)
                return info.ack_floor.stream_seq >= last and info.num_ack_pending == 0 and info.num_pending == 0

            await wait_for(handled, what="the update acknowledged by the restarted remediator")
        finally:
            await service.stop()
    after = await audit_records(nc, admin)
    new = [(r.action, r.phase, r.diagnosis_id) for r in after[len(before) :]]
    assert not [n for n in new if n[0] != "none"], new  # no step of the episode was taken again
    assert [c.action for c in ecs.calls] == ["RebootInstance"]
    assert not world.is_cordoned("n3")
    assert deployed.violations() == []


@pytest.mark.parametrize("restart", [False, True], ids=["same-replica", "restarted"])
async def test_a_host_event_escalated_at_its_postponement_is_not_drained_for_again_after_a_restart(
    deployed: Deployed, restart: bool
) -> None:
    """A host event's episode: the node drained for an event due in a minute; the cloud moved it three hours on,
    and the node, not healthy, was handed to a person instead of uncordoned (`postpone_host_event`). Then the
    event comes due again. The person has the node: it is not drained for the event again, by the replica that
    escalated it or by a new one started after it (whose maintenance loop has none of the old one's caches: it
    knows the escalation from AUDIT only). The new replica's tick is seen done when its loop counts the episode
    prepared (`MaintenanceLoop._prepared`: the preparation acknowledged). A second replica's postponement of the
    same move (`postpone_host_event` called again) changes nothing: before, it recorded the move `skipped`, which
    made the escalation one about an older schedule, and the node was drained again when the event came due."""
    nc, admin = deployed.nc, deployed.admin
    node = "h7"
    async with KubeWorld() as world:
        event, episode, settings = await _node_with_a_host_event_soon(deployed, world, node)
        settings = settings.model_copy(update={"verify_timeout_s": 1.0})
        service = await start_service(settings)
        try:
            async with Probes(nc, admin, node, healthy=False):  # its kubelet is down all along
                await publish_cloud(nc, admin, event)
                await wait_for_record(nc, admin, node=node, episode_id=episode, action="drain", phase="succeeded")
                later = host_event(node, "e-h7", not_before=datetime.now(tz=UTC) + LATER)
                await publish_cloud(nc, admin, later, rescheduled=True)
                handed = await wait_for_record(
                    nc, admin, node=node, episode_id=episode, action="escalate", phase="succeeded"
                )
                assert "moved to" in handed.reason and "not healthy" in handed.reason, handed.reason
                # a second replica that prepared for the event postpones the same move: the person keeps the node
                remediator = service.remediator
                assert remediator is not None
                assert await remediator.postpone_host_event(later) == "ack"
                if restart:
                    await service.stop()
                    service = await start_service(settings)
                before = [r for r in await audit_records(nc, admin) if r.episode_id == episode]
                # due again in a minute
                await _due_again(deployed, service, host_event(node, "e-h7", not_before=datetime.now(tz=UTC) + SOON))
        finally:
            await service.stop()
        after = [r for r in await audit_records(nc, admin) if r.episode_id == episode]
        assert after == before, [(r.action, r.phase, r.target) for r in after[len(before) :]]
        assert world.is_cordoned(node)  # as the person has it
    assert deployed.violations() == []


async def test_a_second_replicas_postponement_of_a_handed_over_node_leaves_it_cordoned(deployed: Deployed) -> None:
    """A host event's node was drained for the event due in a minute, then handed to a person while the event was
    still pending (here the hand-over `_release_slot` writes when the event's slot expires, recorded by a replica
    since gone, and the slot given back). The cloud moves the event three hours on: every replica that prepared
    for it postpones it once (`MaintenanceLoop`: each keeps its own caches). The first records the postponement
    as skipped (the person has the node); the second, here `postpone_host_event` called again for the same move,
    must not take the person's node back: no verification, no uncordon."""
    nc, admin = deployed.nc, deployed.admin
    node = "h8"
    async with KubeWorld() as world:
        event, episode, settings = await _node_with_a_host_event_soon(deployed, world, node)
        service = await start_service(settings)
        try:
            async with Probes(nc, admin, node):  # healthy: a verification would pass
                await publish_cloud(nc, admin, event)
                drained = await wait_for_record(
                    nc, admin, node=node, episode_id=episode, action="drain", phase="succeeded"
                )
                await _hand_over(deployed, node=node, episode=episode, take=drained)
                later = host_event(node, "e-h8", not_before=datetime.now(tz=UTC) + LATER)
                await publish_cloud(nc, admin, later, rescheduled=True)
                first = await wait_for_record(
                    nc, admin, node=node, episode_id=episode, action="none", target="postponed:0"
                )
                assert first.phase == "skipped"
                remediator = service.remediator
                assert remediator is not None
                assert await remediator.postpone_host_event(later) == "ack"  # the second replica's
        finally:
            await service.stop()
        records = [r for r in await audit_records(nc, admin) if r.episode_id == episode]
        assert not [r for r in records if r.action == "uncordon"], [(r.action, r.phase, r.target) for r in records]
        assert world.is_cordoned(node)  # as the person has it
    assert deployed.violations() == []


async def _node_with_a_host_event_soon(
    deployed: Deployed, world: KubeWorld, node: str
) -> tuple[CloudSystemEvent, str, RemediatorSettings]:
    """`node` with a pod in the Kubernetes emulator and the inventory, a host event of its due within the drain lead
    (`e-<node>`), its episode, and the remediator's settings for the test (a 0.2 s maintenance round)."""
    world.add_node(node, zone="z1")
    world.add_pod(f"web-{node}", node=node)
    await add_inventory(deployed.nc, deployed.admin, node, zone="z1", cloud="alibaba", instance_id=f"i-{node}")
    event = host_event(node, f"e-{node}", not_before=datetime.now(tz=UTC) + SOON)
    settings = make_settings(deployed.remediator, kube_url=world.url, cloud_drain_lead_s=LEAD_S).model_copy(
        update={"maintenance_interval_s": 0.2}
    )
    return event, planner.cloud_episode(event), settings


async def _due_again(deployed: Deployed, service: RemediatorService, event: CloudSystemEvent) -> None:
    """The cloud moves `event` back within the drain lead; returns once the service's maintenance loop looked at it
    (`MaintenanceLoop._prepared`: its preparation acknowledged, whatever it decided)."""
    await publish_cloud(deployed.nc, deployed.admin, event, rescheduled=True)
    loop = service.maintenance
    assert loop is not None
    episode = planner.cloud_episode(event)

    async def looked_at() -> bool:
        return episode in loop._prepared

    await wait_for(looked_at, what="the event due again looked at by the maintenance loop")


async def _hand_over(deployed: Deployed, *, node: str, episode: str, take: RemediationRecord) -> None:
    """What `Remediator._release_slot` records and does when the event's slot expires with its cordon out: the
    `escalate` record (under the remediator's credential: only it writes AUDIT), then the slot given back."""
    admin = deployed.admin
    record = RemediationRecord(
        cluster=take.cluster,
        node=node,
        action_id=planner.action_id(diagnosis_id=episode, action="escalate", target=f"held:{take.action_id}"),
        action="escalate",
        phase="succeeded",
        rung=0,
        reason=f"escalated to a person: {node} is still cordoned (drain {take.action_id}, episode {episode})",
        actor="replica-gone",
        diagnosis_id=take.diagnosis_id,
        cause="slot_expired",
        episode_id=episode,
    )
    gone = await connect(deployed.remediator, name="replica-gone")
    try:
        subject = audit_subject(take.cluster, node, prefix=admin.prefix)
        await publish_model(gone.jetstream(), subject, record, msg_id=f"{record.action_id}:succeeded")
    finally:
        await gone.close()
    ledger = Ledger(await deployed.nc.jetstream().key_value(f"{admin.bucket_prefix}-control"))
    assert await ledger.release(node=node, now=datetime.now(tz=UTC))


@pytest.mark.parametrize("restart", [False, True], ids=["same-replica", "moved-while-restarting"])
async def test_a_handed_over_host_event_moved_while_the_remediator_restarts_is_drained_for_when_due_again(
    deployed: Deployed, restart: bool
) -> None:
    """The node was drained for a host event due in a minute and handed to a person while the event was pending;
    then the cloud moved the event three hours on, and later back to a minute from now. The escalation was about
    the old schedule: when the event comes due again the node is drained for it again (docs/remediator.md, "Host
    events": an escalation counts only when recorded after the latest postponement). `moved-while-restarting`:
    the move happens while the remediator is replaced by a new one, whose maintenance loop never prepared the
    event (its caches are empty) and whose ledger holds no slot of the episode (the hand-over gave it back)."""
    nc, admin = deployed.nc, deployed.admin
    node = "h9"
    async with KubeWorld() as world:
        event, episode, settings = await _node_with_a_host_event_soon(deployed, world, node)
        service = await start_service(settings)
        try:
            async with Probes(nc, admin, node):
                await publish_cloud(nc, admin, event)
                drained = await wait_for_record(
                    nc, admin, node=node, episode_id=episode, action="drain", phase="succeeded"
                )
                await _hand_over(deployed, node=node, episode=episode, take=drained)
                later = host_event(node, "e-h9", not_before=datetime.now(tz=UTC) + LATER)
                if restart:
                    await service.stop()
                    await publish_cloud(nc, admin, later, rescheduled=True)
                    service = await start_service(settings)
                else:
                    await publish_cloud(nc, admin, later, rescheduled=True)
                    await wait_for_record(nc, admin, node=node, episode_id=episode, target="postponed:0")
                    moved_on = service.maintenance
                    assert moved_on is not None

                    async def postponed() -> bool:
                        return episode not in moved_on._prepared

                    await wait_for(postponed, what="the postponement acknowledged")
                world.add_pod("web-h9b", node=node)  # the person put it back to work meanwhile
                await _due_again(deployed, service, host_event(node, "e-h9", not_before=datetime.now(tz=UTC) + SOON))
        finally:
            await service.stop()
        drains = [
            r
            for r in await audit_records(nc, admin)
            if r.episode_id == episode and r.action == "drain" and r.phase == "succeeded"
        ]
        assert len(drains) == 2, [(r.action_id, r.time) for r in drains]
    assert deployed.violations() == []
