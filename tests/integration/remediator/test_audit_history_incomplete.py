"""A node's AUDIT history read only in part must never be acted on: a redelivered diagnosis whose repair was
done and verified does not reboot the node again when the history read times out. Real nats-server, the real remediator service; side effects counted at the ECS emulator
(its log of the API calls it received) and at the Kubernetes emulator (its log of effects)."""

from __future__ import annotations

import asyncio

import pytest
from nats.aio.client import Client
from nats.errors import TimeoutError as NatsTimeoutError
from nats.js.client import JetStreamContext

from nodeheal.runtime.jetstream import publish_model
from nodeheal.runtime.settings import NatsSettings
from nodeheal.schemas.diagnosis import Diagnosis
from nodeheal.schemas.subjects import diagnosis_subject
from nodeheal.sim.ecs_api import EcsEmulator
from nodeheal.sim.kube import KubeWorld
from tests.integration.remediator.harness import (
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


def reboots(ecs: EcsEmulator, instance: str) -> int:
    return sum(1 for c in ecs.calls if c.action == "RebootInstance" and c.params.get("InstanceId") == instance)


def cordons(world: KubeWorld, node: str) -> int:
    return sum(1 for _, name, effect in world.effects if name == node and effect == "cordon")


def time_out_next_read(js: JetStreamContext, *, stream: str) -> list[int]:
    """Arm with `armed.append(1)`: the first fetch of the next reader `js` opens on `stream` raises what nats-py's
    `fetch` raises when nothing came within its timeout (a server still recovering from a restart, a read slower
    than the reader's wait); the reader's later fetches are real."""
    armed: list[int] = []
    subscribe = js.pull_subscribe

    async def observed(*args: object, **kwargs: object) -> JetStreamContext.PullSubscription:
        sub = await subscribe(*args, **kwargs)  # type: ignore[arg-type]
        if kwargs.get("stream") != stream or not armed:
            return sub
        armed.pop()
        fetch = sub.fetch
        first = [True]

        async def late(*a: object, **kw: object) -> object:
            if first[0]:
                first[0] = False
                raise NatsTimeoutError
            return await fetch(*a, **kw)  # type: ignore[arg-type]

        sub.fetch = late  # type: ignore[method-assign]
        return sub

    js.pull_subscribe = observed  # type: ignore[method-assign]
    return armed


async def redeliver(nc: Client, nats: NatsSettings, d: Diagnosis, *, tag: str) -> None:
    """The same diagnosis again, as JetStream redelivers it when its ack was lost (a server restart): another
    stream message (a new Nats-Msg-Id), the same content."""
    await publish_model(
        nc.jetstream(), diagnosis_subject(d.cluster, d.node, prefix=nats.prefix), d, msg_id=f"{d.id}:{tag}"
    )


async def test_a_redelivered_diagnosis_whose_history_read_times_out_does_not_reboot_again(
    topology_ready: NatsSettings, nc: Client, world: KubeWorld, ecs: EcsEmulator
) -> None:
    """Before, the history reader returned what it had on its first fetch time-out (nothing): the ladder saw no
    phase, cordoned and rebooted the verified node again, and AUDIT dropped the step's `intent` and `started` as
    duplicates (same Nats-Msg-Id) — two RebootInstance calls, one in AUDIT. Now the read raises, the diagnosis
    is retried, and the next read finds the episode verified."""
    await add_inventory(nc, topology_ready, "n1", zone="z1", cloud="alibaba", instance_id="i-n1")
    service = await start_service(make_settings(topology_ready, kube_url=world.url, ecs_endpoint=ecs.endpoint))
    assert service.remediator is not None
    armed = time_out_next_read(service.remediator.audit.js, stream=f"{topology_ready.stream_prefix}AUDIT")
    try:
        async with Probes(nc, topology_ready, "n1") as n1:
            d = diagnosis("n1", ["cordon", "reboot"], episode="ep-n1")
            await publish_diagnosis(nc, topology_ready, d)
            await asyncio.wait_for(
                ecs.wait_for_call("RebootInstance", where=lambda c: c.params.get("InstanceId") == "i-n1"), timeout=20
            )
            n1.boot_id = "boot-2"  # the machine came back
            await wait_for_record(nc, topology_ready, phase="verified", node="n1")
            await wait_for_record(nc, topology_ready, action="uncordon", phase="succeeded", node="n1")

            armed.append(1)
            await redeliver(nc, topology_ready, d, tag="redelivered")

            async def settled() -> bool:
                records = await audit_records(nc, topology_ready)
                skipped = any(r.diagnosis_id == d.id and r.phase == "skipped" for r in records)
                return skipped or reboots(ecs, "i-n1") > 1

            await wait_for(settled, what="the redelivered diagnosis settled")
    finally:
        await service.stop()
    assert not armed, "the history read was never made to time out"
    assert reboots(ecs, "i-n1") == 1  # one fault, one reboot (counted at the ECS emulator)
    assert cordons(world, "n1") == 1
    records = await audit_records(nc, topology_ready)
    skipped = [r for r in records if r.diagnosis_id == d.id and r.phase == "skipped"]
    assert skipped and "verified healthy" in skipped[0].reason
