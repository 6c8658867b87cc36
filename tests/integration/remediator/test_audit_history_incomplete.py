"""A node's AUDIT history read only in part must never be acted on: a redelivered diagnosis whose repair was
done and verified does not reboot the node again when the history read times out, and a step whose `intent`
or `started` AUDIT already holds (its PubAck says duplicate) though the history read did not show it is not
acted on again. Real nats-server with the deployed per-role authorization, the real remediator service under its
role's credential and inbox (AUDIT written only by that role); side effects counted at the ECS emulator
(its log of the API calls it received) and at the Kubernetes emulator (its log of effects)."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

import pytest
from nats.aio.client import Client
from nats.errors import TimeoutError as NatsTimeoutError
from nats.js.client import JetStreamContext

from nodeheal.remediator.audit import AlreadyRecordedError, AuditLog
from nodeheal.runtime.jetstream import publish_model
from nodeheal.runtime.settings import NatsSettings
from nodeheal.schemas.audit import RemediationPhase, RemediationRecord
from nodeheal.schemas.diagnosis import Diagnosis
from nodeheal.schemas.subjects import diagnosis_subject
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
    deployed: Deployed, world: KubeWorld, ecs: EcsEmulator
) -> None:
    """Before, the history reader returned what it had on its first fetch time-out (nothing): the ladder saw no
    phase, cordoned and rebooted the verified node again, and AUDIT dropped the step's `intent` and `started` as
    duplicates (same Nats-Msg-Id) — two RebootInstance calls, one in AUDIT. Now the read raises, the diagnosis
    is retried, and the next read finds the episode verified."""
    nc, topology_ready = deployed.nc, deployed.admin
    await add_inventory(nc, topology_ready, "n1", zone="z1", cloud="alibaba", instance_id="i-n1")
    service = await start_service(make_settings(deployed.remediator, kube_url=world.url, ecs_endpoint=ecs.endpoint))
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
    assert deployed.violations() == []


async def test_an_intent_or_started_record_audit_already_holds_is_refused_as_already_recorded(
    deployed: Deployed,
) -> None:
    """AUDIT answers a record whose Nats-Msg-Id (`<action_id>:<phase>`) it holds with a duplicate PubAck and
    drops it. For an `intent` or `started`, that means an earlier attempt began the step: `record` raises
    instead of returning as if this attempt's record were stored. Other phases stay idempotent."""
    nc, topology_ready = deployed.nc, deployed.admin

    def rec(phase: RemediationPhase) -> RemediationRecord:
        return RemediationRecord(
            cluster="c1", node="n5", action_id="act-dup", action="reboot", phase=phase, reason="test", actor="t"
        )

    async with deployed.remediator_connection() as remediator:  # only the remediator role writes AUDIT
        nats = deployed.remediator
        audit = AuditLog(remediator.jetstream(), stream=f"{nats.stream_prefix}AUDIT", prefix=nats.prefix, timeout_s=5.0)
        acting: tuple[RemediationPhase, ...] = ("intent", "started")
        for phase in acting:
            first = await audit.record(rec(phase))
            with pytest.raises(AlreadyRecordedError) as caught:
                await audit.record(rec(phase))
            assert caught.value.seq == first and caught.value.phase == phase
        await audit.record(rec("succeeded"))
        await audit.record(rec("succeeded"))  # a result recorded again: nothing acts on it, still idempotent
    records = [r for r in await audit_records(nc, topology_ready) if r.action_id == "act-dup"]
    assert [r.phase for r in records] == ["intent", "started", "succeeded"]
    assert deployed.violations() == []


async def test_a_step_audit_holds_but_the_history_did_not_show_is_not_done_again(
    deployed: Deployed, world: KubeWorld, ecs: EcsEmulator
) -> None:
    """The repair and flap windows (the history read) shorter than AUDIT's 10-minute duplicate window: a
    redelivered diagnosis, once its verified repair is older than the windows, sees no phase of its steps. Before,
    it cordoned and rebooted the node again while AUDIT dropped the steps' `intent` and `started` as duplicates
    (two RebootInstance calls, one in AUDIT). Now the duplicate PubAck of the cordon's `intent` stops the step
    before it acts; the diagnosis is retried, and handed to a person on its last delivery."""
    nc, topology_ready = deployed.nc, deployed.admin
    await add_inventory(nc, topology_ready, "n2", zone="z1", cloud="alibaba", instance_id="i-n2")
    window_s = 2.0
    settings = make_settings(
        deployed.remediator,
        kube_url=world.url,
        ecs_endpoint=ecs.endpoint,
        node_repair_window_s=window_s,
        flap_window_s=window_s,
    ).model_copy(update={"max_deliver": 3})
    service = await start_service(settings)
    try:
        async with Probes(nc, topology_ready, "n2") as n2:
            d = diagnosis("n2", ["cordon", "reboot"], episode="ep-n2")
            await publish_diagnosis(nc, topology_ready, d)
            await asyncio.wait_for(
                ecs.wait_for_call("RebootInstance", where=lambda c: c.params.get("InstanceId") == "i-n2"), timeout=20
            )
            n2.boot_id = "boot-2"  # the machine came back
            await wait_for_record(nc, topology_ready, phase="verified", node="n2")
            done = await wait_for_record(nc, topology_ready, action="uncordon", phase="succeeded", node="n2")

            async def out_of_the_window() -> bool:  # the repair's records left the history's window
                return (datetime.now(tz=UTC) - done.time).total_seconds() > window_s + 0.5

            await wait_for(out_of_the_window, what="the repair older than the history window")
            await redeliver(nc, topology_ready, d, tag="redelivered")

            async def settled() -> bool:
                records = await audit_records(nc, topology_ready)
                gave_up = any(r.node == "n2" and r.action == "escalate" and r.phase == "succeeded" for r in records)
                return gave_up or reboots(ecs, "i-n2") > 1

            await wait_for(settled, what="the redelivered diagnosis settled")
    finally:
        await service.stop()
    assert reboots(ecs, "i-n2") == 1  # counted at the ECS emulator
    assert cordons(world, "n2") == 1  # counted at the Kubernetes emulator
    assert not world.is_cordoned("n2")
    records = await audit_records(nc, topology_ready)
    assert len([r for r in records if r.node == "n2" and r.action == "reboot" and r.phase == "started"]) == 1
    (escalated,) = [r for r in records if r.node == "n2" and r.action == "escalate"]
    assert "gave up" in escalated.reason
    assert deployed.violations() == []
