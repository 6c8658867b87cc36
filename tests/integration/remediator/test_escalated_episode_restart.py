"""An episode handed to a person stays handed over across a remediator restart: the replica started after it
rebuilds the episode from AUDIT (the records of its node within the repair window) and does not act on it again.
Here the ladder's reboot ran (RebootInstance at the ECS emulator) but the node never came back with a new boot id,
so the episode was escalated; the remediator is stopped and a new one started, and the diagnoser's update of the
same episode (the fault still there) reaches the new one. It must be acknowledged without a second reboot or any
other step: no RebootInstance, no new action record. Real remediator service, real nats-server with the deployed
per-role authorization, the ECS emulator through the real SDK."""

from __future__ import annotations

import asyncio

import pytest

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
