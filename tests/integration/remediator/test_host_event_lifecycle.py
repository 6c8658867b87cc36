"""Host events whose life does not go straight from the notice to the end: a replica gone between the
verification and the uncordon, two events of one node close together, an event the cloud moves later after
the drain. On a real nats-server with the deployed per-role authorization (the remediator under its role's
credential and inbox, the dead replica's AUDIT record written under it too: admin may not write AUDIT) through
the real remediator service; CLOUD gets what the cloud-events
pollers publish (normalized events), the node's side effects are counted at the Kubernetes emulator."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from nats.aio.client import Client

from nodeheal.cloud_events.normalize.ledger import reschedule_message_id
from nodeheal.remediator import planner
from nodeheal.remediator.ledger import Ledger
from nodeheal.runtime.connect import connect
from nodeheal.runtime.jetstream import publish_model
from nodeheal.runtime.settings import NatsSettings
from nodeheal.schemas.audit import RemediationRecord
from nodeheal.schemas.cloud import CloudSystemEvent
from nodeheal.schemas.ids import deterministic_id
from nodeheal.schemas.subjects import audit_subject, cloud_subject
from nodeheal.sim.kube import KubeWorld
from tests.integration.remediator.harness import (
    CLUSTER,
    Deployed,
    Probes,
    add_inventory,
    audit_records,
    make_settings,
    start_service,
    wait_for,
    wait_for_record,
)

pytestmark = pytest.mark.nats

LEAD_S = 120.0
"""The drain lead: an event `SOON` away is prepared for at once, one `LATER` away is not."""
SOON = timedelta(seconds=60)
LATER = timedelta(hours=3)


def host_event(
    node: str, event_id: str, *, phase: str = "scheduled", not_before: datetime, seen: datetime | None = None
) -> CloudSystemEvent:
    """What the Alibaba poller publishes of a SystemMaintenance.Reboot of `node`'s machine."""
    return CloudSystemEvent(
        cluster=CLUSTER,
        node=node,
        cloud="alibaba",
        channel="api_history",
        provider_event_id=event_id,
        provider_event_type="SystemMaintenance.Reboot",
        action="reboot",
        cause="planned_maintenance",
        phase=phase,  # type: ignore[arg-type]
        is_terminal=phase in ("completed", "canceled", "avoided", "failed"),
        instance_id=f"i-{node}",
        observed_at=seen or datetime.now(tz=UTC),
        not_before=not_before,
    )


async def publish_cloud(nc: Client, nats: NatsSettings, ev: CloudSystemEvent, *, rescheduled: bool = False) -> None:
    """As the cloud-events sink publishes it: a reschedule (the same phase, a new start) under a message id of
    its own (`reschedule_message_id`), so the stream's duplicate window does not take it for the first report."""
    msg_id = reschedule_message_id(ev.model_copy(update={"id": ev.dedup_id})) if rescheduled else ev.dedup_id
    await nc.jetstream().publish(
        cloud_subject(ev.cluster, ev.node, prefix=nats.prefix), ev.to_json(), headers={"Nats-Msg-Id": msg_id}
    )


async def slot_of(nc: Client, nats: NatsSettings, node: str) -> object:
    ledger = Ledger(await nc.jetstream().key_value(f"{nats.bucket_prefix}-control"))
    return await ledger.slot_of(node)


def effects(world: KubeWorld, node: str) -> list[str]:
    return [effect for _, n, effect in world.effects if n == node]


async def test_a_host_event_verified_but_not_uncordoned_is_uncordoned_by_the_next_tick(
    deployed: Deployed,
) -> None:
    """The replica that verified the node after the host event died before its uncordon (a SIGKILL, AUDIT
    unavailable for the uncordon's intent, a lost lease at the fence): AUDIT holds the episode's cordon,
    drain and `verified`, the ledger its slot, CLOUD the event completed. The next tick uncordons the node
    under the episode's uncordon id and gives the slot back; it does not hand a healthy node to a person
    ("still cordoned … nodeheal is done with it", before)."""
    nc, topology_ready = deployed.nc, deployed.admin
    node = "h4"
    async with KubeWorld() as world:
        world.add_node(node, zone="z1")
        world.add_pod("web-h4", node=node)
        await add_inventory(nc, topology_ready, node, zone="z1", cloud="alibaba", instance_id=f"i-{node}")
        not_before = datetime.now(tz=UTC) + SOON
        pending = host_event(node, "e-h4", not_before=not_before)
        episode = planner.cloud_episode(pending)
        settings = make_settings(deployed.remediator, kube_url=world.url, cloud_drain_lead_s=LEAD_S).model_copy(
            update={"maintenance_interval_s": 0.2}
        )
        async with Probes(nc, topology_ready, node, boot_id="boot-1"):
            service = await start_service(settings)  # the replica that drains, verifies and dies
            try:
                await publish_cloud(nc, topology_ready, pending)
                await wait_for_record(nc, topology_ready, node=node, action="drain", phase="succeeded")
            finally:
                await service.stop()
        assert world.is_cordoned(node)
        # the platform ran the reboot; that replica saw it, verified the node and died before its uncordon
        await publish_cloud(nc, topology_ready, host_event(node, "e-h4", phase="completed", not_before=not_before))
        wait = planner.action_id(diagnosis_id=episode, action="wait_for_cloud_event", target="e-h4")
        verified = RemediationRecord(
            cluster=CLUSTER,
            node=node,
            action_id=wait,
            action="wait_for_cloud_event",
            target="e-h4",
            phase="verified",
            reason="healthy, new boot id boot-2",
            actor="replica-killed",
            diagnosis_id=deterministic_id(episode, prefix="diag-cloud-"),  # the maintenance diagnosis's
            cause="cloud_reboot",
            rung=3,
            episode_id=episode,
            boot_id="boot-2",
        )
        subject = audit_subject(CLUSTER, node, prefix=topology_ready.prefix)
        killed = await connect(deployed.remediator, name="replica-killed")  # only the remediator writes AUDIT
        try:
            await publish_model(killed.jetstream(), subject, verified, msg_id=f"{wait}:verified")
        finally:
            await killed.close()
        assert await slot_of(nc, topology_ready, node) is not None  # still held under the episode
        async with Probes(nc, topology_ready, node, boot_id="boot-2"):
            service = await start_service(settings)  # the next replica
            try:

                async def ended() -> bool:
                    return any(
                        r.node == node and (r.action == "escalate" or (r.action == "uncordon" and r.phase != "intent"))
                        for r in await audit_records(nc, topology_ready)
                    )

                await wait_for(ended, what="the episode's end (an uncordon or a hand-over)")
                await wait_for(lambda: _no_slot(nc, topology_ready, node), what="the slot given back")
            finally:
                await service.stop()
        records = [r for r in await audit_records(nc, topology_ready) if r.node == node]
        assert [r for r in records if r.action == "escalate"] == []  # nobody paged for a healthy node
        uncordon = [r for r in records if r.action == "uncordon"]
        assert [r.phase for r in uncordon] == ["intent", "started", "succeeded"]
        assert {r.episode_id for r in uncordon} == {episode}
        assert uncordon[0].action_id == planner.action_id(diagnosis_id=episode, action="uncordon", target=None)
        assert effects(world, node) == ["cordon", "evict:default/web-h4", "uncordon"]
        assert not world.is_cordoned(node)
    assert deployed.violations() == []


async def _no_slot(nc: Client, nats: NatsSettings, node: str) -> bool:
    return await slot_of(nc, nats, node) is None


async def test_a_host_event_finished_while_another_is_due_keeps_the_node_cordoned_for_it(
    deployed: Deployed,
) -> None:
    """Two host events of one node: C1 has run (the node drained for it, rebooted), and C2 is due within the
    drain lead when the next replica finishes C1. C1 is verified, and the node stays cordoned, its slot handed
    to C2's episode: no uncordon between the two (before, C1's end uncordoned the node and gave its slot back;
    C2's cordon could then be held back by the budget and C2 run on a node serving pods). C2, once it has
    run, is verified and uncordons the node."""
    nc, topology_ready = deployed.nc, deployed.admin
    node = "h6"
    boots = {"n": 1}
    async with KubeWorld() as world:
        world.add_node(node, zone="z1")
        world.add_pod("web-h6", node=node)
        await add_inventory(nc, topology_ready, node, zone="z1", cloud="alibaba", instance_id=f"i-{node}")
        c1_start = datetime.now(tz=UTC) + SOON
        c1 = host_event(node, "e-c1", not_before=c1_start)
        settings = make_settings(deployed.remediator, kube_url=world.url, cloud_drain_lead_s=LEAD_S).model_copy(
            update={"maintenance_interval_s": 0.2}
        )
        async with Probes(nc, topology_ready, node, boot_id=lambda: f"boot-{boots['n']}"):
            service = await start_service(settings)
            try:
                await publish_cloud(nc, topology_ready, c1)
                await wait_for_record(nc, topology_ready, node=node, action="drain", phase="succeeded")
            finally:
                await service.stop()
            boots["n"] += 1  # the platform ran C1
            now = datetime.now(tz=UTC)
            c2_start = now + SOON  # within the lead
            await publish_cloud(nc, topology_ready, host_event(node, "e-c1", phase="completed", not_before=c1_start))
            await publish_cloud(
                nc, topology_ready, host_event(node, "e-c2", not_before=c2_start, seen=now + timedelta(seconds=1))
            )
            c2 = planner.cloud_episode(host_event(node, "e-c2", not_before=c2_start))
            service = await start_service(settings)  # reads all of CLOUD first: its first tick finishes C1
            try:
                await wait_for_record(
                    nc, topology_ready, node=node, episode_id=c2, action="drain", phase="succeeded", timeout=30
                )
                assert world.is_cordoned(node)
                boots["n"] += 1  # the platform ran C2
                await publish_cloud(
                    nc, topology_ready, host_event(node, "e-c2", phase="completed", not_before=c2_start)
                )
                await wait_for_record(nc, topology_ready, node=node, action="uncordon", phase="succeeded", timeout=30)
                await wait_for(lambda: _no_slot(nc, topology_ready, node), what="the slot given back")
            finally:
                await service.stop()
        records = [r for r in await audit_records(nc, topology_ready) if r.node == node]
        c1_episode = planner.cloud_episode(c1)
        held = [r for r in records if r.episode_id == c1_episode and r.action == "uncordon"]
        assert [r.phase for r in held] == ["skipped"]  # kept cordoned for C2
        assert "e-c2" in held[0].reason
        assert [r.phase for r in records if r.episode_id == c1_episode and r.phase == "verified"] == ["verified"]
        verified = [r for r in records if r.episode_id == c2 and r.phase == "verified"]
        assert [r.boot_id for r in verified] == ["boot-3"]  # C2's own reboot seen
        assert [r.episode_id for r in records if r.action == "uncordon" and r.phase == "succeeded"] == [c2]
        assert [r for r in records if r.action == "escalate"] == []
        assert effects(world, node) == ["cordon", "evict:default/web-h6", "uncordon"]  # no uncordon between them
        assert not world.is_cordoned(node)
    assert deployed.violations() == []


async def test_a_host_event_moved_beyond_the_lead_after_its_drain_is_postponed_and_drained_for_again(
    deployed: Deployed,
) -> None:
    """The node was drained for a host event due in a minute; then the cloud moved the event three hours on.
    The node is verified, the postponement recorded, the node uncordoned and its slot given back (before, it
    stayed cordoned until the slot expired an hour later and a person was paged, and the event, when it came
    due, was never drained for again). When the event comes within the lead again, the node is cordoned and
    drained again (a new round of the episode: new action ids); after it has run, verified and uncordoned.
    The maintenance loop's caches keep no episode of an event that has ended."""
    nc, topology_ready = deployed.nc, deployed.admin
    node = "h5"
    boots = {"n": 1}
    async with KubeWorld() as world:
        world.add_node(node, zone="z1")
        world.add_pod("web-h5", node=node)
        await add_inventory(nc, topology_ready, node, zone="z1", cloud="alibaba", instance_id=f"i-{node}")
        first = datetime.now(tz=UTC) + SOON
        event = host_event(node, "e-h5", not_before=first)
        episode = planner.cloud_episode(event)
        settings = make_settings(deployed.remediator, kube_url=world.url, cloud_drain_lead_s=LEAD_S).model_copy(
            update={"maintenance_interval_s": 0.2}
        )
        service = await start_service(settings)
        try:
            async with Probes(nc, topology_ready, node, boot_id=lambda: f"boot-{boots['n']}"):
                await publish_cloud(nc, topology_ready, event)
                await wait_for_record(nc, topology_ready, node=node, action="drain", phase="succeeded")
                # the cloud moves it three hours on
                later = host_event(node, "e-h5", not_before=datetime.now(tz=UTC) + LATER)
                await publish_cloud(nc, topology_ready, later, rescheduled=True)
                postponed = await wait_for_record(
                    nc, topology_ready, node=node, action="uncordon", phase="succeeded", timeout=30
                )
                assert postponed.episode_id == episode and postponed.target == "postponed:0"
                await wait_for(lambda: _no_slot(nc, topology_ready, node), what="the slot given back")
                assert not world.is_cordoned(node)
                world.add_pod("web-h5b", node=node)  # the node serves again meanwhile
                # ... and back to a minute from now
                again = datetime.now(tz=UTC) + SOON
                await publish_cloud(nc, topology_ready, host_event(node, "e-h5", not_before=again), rescheduled=True)

                async def drained_twice() -> bool:
                    drains = [
                        r
                        for r in await audit_records(nc, topology_ready)
                        if r.node == node and r.action == "drain" and r.phase == "succeeded"
                    ]
                    return len(drains) == 2

                await wait_for(drained_twice, timeout=30, what="a second drain for the event due again")
                assert world.is_cordoned(node)
                boots["n"] += 1  # the platform ran it
                await publish_cloud(nc, topology_ready, host_event(node, "e-h5", phase="completed", not_before=again))

                async def finished() -> bool:
                    ups = [
                        r
                        for r in await audit_records(nc, topology_ready)
                        if r.node == node and r.action == "uncordon" and r.phase == "succeeded"
                    ]
                    return len(ups) == 2

                await wait_for(finished, timeout=30, what="the uncordon after the event ran")
                await wait_for(lambda: _no_slot(nc, topology_ready, node), what="the slot given back")
                loop = service.maintenance
                assert loop is not None

                async def forgotten() -> bool:
                    return episode not in loop._prepared and episode not in loop._postponed

                await wait_for(forgotten, what="the loop's caches let the ended event go")
        finally:
            await service.stop()
        records = [r for r in await audit_records(nc, topology_ready) if r.node == node]
        assert {r.episode_id for r in records} == {episode}
        assert [r for r in records if r.action == "escalate"] == []  # nobody paged
        marks = [r for r in records if r.action == "none"]
        assert [(r.phase, r.target) for r in marks] == [("verified", "postponed:0")]
        assert [r.target for r in records if r.action == "uncordon" and r.phase == "succeeded"] == ["postponed:0", None]
        drains = [r for r in records if r.action == "drain" and r.phase == "succeeded"]
        assert len({r.action_id for r in drains}) == 2  # a new round: its own action ids
        verified = [r for r in records if r.action == "wait_for_cloud_event" and r.phase == "verified"]
        assert [r.boot_id for r in verified] == ["boot-2"]  # a new boot since the second drain
        assert effects(world, node) == [
            "cordon",
            "evict:default/web-h5",
            "uncordon",
            "cordon",
            "evict:default/web-h5b",
            "uncordon",
        ]
    assert deployed.violations() == []
