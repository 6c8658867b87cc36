"""An episode that fires and resolves entirely while no diagnoser runs (the old pod was killed and the next
one waits out the singleton's TTL) still gets its verdict, through the real diagnoser on a real nats-server:
the new process's rebuild sees both ends of it, judges it as it stood before it ended (with the crash report
that explains it) and says it once, `resolved` and `recovered` — the remediator does not act on a node that
is already back (`Runner.handle` settles a resolved diagnosis; nothing of ours is out on the node, so nothing
is done). Its crash counts once in the fleet rates; an episode said before the restart is not said again."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from nats.aio.client import Client

from nodeheal.diagnoser.handlers import DiagnoserRuntime
from nodeheal.diagnoser.settings import DiagnoserSettings
from nodeheal.runtime.jetstream import publish_model
from nodeheal.runtime.settings import NatsSettings
from nodeheal.schemas.diagnosis import Diagnosis
from nodeheal.schemas.inventory import inventory_key
from nodeheal.schemas.subjects import crash_subject, diagnosis_subject
from tests.integration.deploy.natsauth_loader import RoleServer, violations
from tests.integration.diagnoser.crashes import pstore_lines, pstore_report, put_inventory
from tests.integration.diagnoser.test_diagnoser_service import actions, read_stream, send, wait_for_diagnosis
from tests.unit.diagnoser.scenarios import CLUSTER, OOPS_A, anomaly, inventory

pytestmark = pytest.mark.nats

MODELS = {"n1": "ecs.ebmg7.32xlarge", "n2": "ecs.ebmc7.32xlarge", "n3": "ecs.ebmg7.32xlarge"}


def runtime(settings: NatsSettings, nc: Client, *, instance: str) -> DiagnoserRuntime:
    config = DiagnoserSettings(nats=settings, cluster=CLUSTER, tick_s=0.1, fetch_timeout_s=0.3, instance=instance)
    return DiagnoserRuntime(settings=config, nc=nc)


async def diagnoses(nc: Client, settings: NatsSettings, node: str) -> list[Diagnosis]:
    stream = f"{settings.stream_prefix}DIAGNOSES"
    subject = diagnosis_subject(CLUSTER, node, prefix=settings.prefix)
    return [Diagnosis.model_validate_json(b) for b in await read_stream(nc, stream, subject)]


async def started(deployed: RoleServer, *, instance: str) -> DiagnoserRuntime:
    """One diagnoser process, started under the role's credential on a connection of its own."""
    service = runtime(deployed.role, await deployed.role_nc(instance), instance=instance)
    await service.start()
    return service


async def test_an_episode_that_ended_while_no_diagnoser_ran_is_diagnosed_and_not_acted_on(deployed: RoleServer) -> None:
    nc, settings = deployed.nc, deployed.settings  # the test stands in for the detector and the cloud events, as admin
    await put_inventory(nc, settings, MODELS)
    first = await started(deployed, instance="diagnoser-a")
    await first.stop()  # the pod is gone; its key is given back (the wait itself is the singleton's tests')

    # while no diagnoser runs: n1 crashes on a kernel bug (reboot + pstore report) and is back 20 s later;
    # n2 logs a kernel oops that resolves a minute later
    t = datetime.now(tz=UTC) - timedelta(minutes=2)
    lines = pstore_lines("softlockup")
    await send(nc, settings, anomaly("n1", "unexpected_reboot", at=t))
    report = pstore_report("n1", "boot-a", lines[1:], header=lines[0], at=t)
    await publish_model(nc.jetstream(), crash_subject(CLUSTER, "n1", prefix=settings.prefix), report, msg_id="cr-n1")
    await send(nc, settings, anomaly("n1", "unexpected_reboot", status="resolved", at=t + timedelta(seconds=20)))
    await send(nc, settings, anomaly("n2", "kernel_fault", subject="crash", lines=OOPS_A, at=t))
    await send(
        nc, settings, anomaly("n2", "kernel_fault", subject="crash", status="resolved", at=t + timedelta(minutes=1))
    )

    second = await started(deployed, instance="diagnoser-b")  # another pod
    try:
        n1 = await wait_for_diagnosis(nc, settings, "n1", lambda d: True)
        n2 = await wait_for_diagnosis(nc, settings, "n2", lambda d: True)
        assert second.rebuilt is not None and len(second.rebuilt.recovered) == 2
        fault_events = dict(second.diagnoser.fleet.fault_events)
    finally:
        await second.stop()

    assert n1.cause == "soft_lockup" and n1.category == "kernel"
    assert any(e.kind == "crash_report" for e in n1.evidence)
    assert n1.crash_signature is not None
    assert n2.cause == "kernel_oops_null_deref"
    for d in (n1, n2):
        # what the remediator reads: a resolved diagnosis runs no ladder (runner.handle → _settle)
        assert d.resolved and d.recovered
        assert actions(d) == ["none"]
        assert not d.replay
    assert [d.id for d in await diagnoses(nc, settings, "n1")] == [n1.id]  # said once
    # the crash counts once in the fleet rates: under the episode, its stand-alone count taken over
    n1_events = [k for k, (node, _, _) in fault_events.items() if node == f"{CLUSTER}/n1"]
    assert n1_events and all(k.startswith(f"{n1.anomaly_ids[0]}|") for k in n1_events)
    assert not [k for k in fault_events if k.startswith("crash:")]

    third = await started(deployed, instance="diagnoser-c")  # a later restart says nothing again
    try:
        assert third.rebuilt is not None and third.rebuilt.recovered == []
        again = dict(third.diagnoser.fleet.fault_events)
    finally:
        await third.stop()
    assert [d.id for d in await diagnoses(nc, settings, "n1")] == [n1.id]
    assert [d.id for d in await diagnoses(nc, settings, "n2")] == [n2.id]
    assert sorted(again) == sorted(fault_events)  # read back as counted, once
    assert violations(deployed.dir) == []


async def test_an_episode_diagnosed_before_the_restart_is_not_diagnosed_again(deployed: RoleServer) -> None:
    nc, settings = deployed.nc, deployed.settings  # the test stands in for the detector and the cloud events, as admin
    await put_inventory(nc, settings, MODELS)
    t = datetime.now(tz=UTC)
    first = await started(deployed, instance="diagnoser-a")
    try:
        await send(nc, settings, anomaly("n3", "kernel_fault", subject="crash", lines=OOPS_A, at=t))
        live = await wait_for_diagnosis(nc, settings, "n3", lambda d: not d.resolved)
    finally:
        await first.stop()
    # it resolves while no diagnoser runs: the new process says the resolution, not a recovered verdict
    await send(
        nc, settings, anomaly("n3", "kernel_fault", subject="crash", status="resolved", at=t + timedelta(seconds=30))
    )
    second = await started(deployed, instance="diagnoser-b")
    try:
        await wait_for_diagnosis(nc, settings, "n3", lambda d: d.resolved)
        assert second.rebuilt is not None and second.rebuilt.recovered == []
    finally:
        await second.stop()
    said = await diagnoses(nc, settings, "n3")
    assert [d.id for d in said if not d.resolved] == [live.id]
    assert [d.recovered for d in said] == [False, False]
    assert violations(deployed.dir) == []


async def test_a_rack_that_dropped_off_and_came_back_while_no_diagnoser_ran_is_said_as_a_partition(
    deployed: RoleServer,
) -> None:
    """Rack r7's four nodes went dark together for 90 s while no diagnoser ran (between a kill and the next
    process). The next process says each as the live one would have, a rack partition (network: no reboot, no
    crash counted), with when it ended; before, each was said as a lone node_crash."""
    nc, settings = deployed.nc, deployed.settings
    kv = await nc.jetstream().key_value(f"{settings.bucket_prefix}-inventory")
    rack = [f"r7n{i}" for i in range(4)]
    for node in rack:
        await kv.put(inventory_key(CLUSTER, node), inventory(node, rack="r7", zone="z7").to_json())
    first = await started(deployed, instance="diagnoser-a")
    await first.stop()
    t = datetime.now(tz=UTC) - timedelta(minutes=3)
    for i, node in enumerate(rack):
        await send(nc, settings, anomaly(node, "node_down", at=t + timedelta(seconds=i)))
    for i, node in enumerate(rack):
        await send(nc, settings, anomaly(node, "node_down", status="resolved", at=t + timedelta(seconds=90 + i)))

    second = await started(deployed, instance="diagnoser-b")
    try:
        said = [await wait_for_diagnosis(nc, settings, node, lambda d: True) for node in rack]
        fault_events = dict(second.diagnoser.fleet.fault_events)
    finally:
        await second.stop()
    assert {(d.cause, d.category) for d in said} == {("rack_partition", "network")}
    assert all(d.recovered and d.resolved and actions(d) == ["none"] for d in said)
    assert [d.ended_at for d in said] == [t + timedelta(seconds=90 + i) for i in range(4)]
    assert not [k for k, (node, _, _) in fault_events.items() if node.split("/")[-1] in rack]  # no crash counted
    assert violations(deployed.dir) == []
