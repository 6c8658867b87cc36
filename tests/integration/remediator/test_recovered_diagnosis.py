"""A node that crashed and came back while no diagnoser ran is diagnosed after the fact, and the remediator does
nothing to it: the real diagnoser's verdict (`resolved`, `recovered`, ladder `none`) goes through the real
remediator on a real nats-server with the deployed per-role authorization (each service under its role's credential),
and the side effects are counted at the Kubernetes and ECS emulators."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from nats.aio.client import Client

from nodeheal.diagnoser.handlers import DiagnoserRuntime
from nodeheal.diagnoser.settings import DiagnoserSettings
from nodeheal.runtime.connect import connect
from nodeheal.runtime.jetstream import publish_model
from nodeheal.runtime.settings import NatsSettings
from nodeheal.schemas.subjects import crash_subject
from nodeheal.sim.ecs_api import EcsEmulator
from nodeheal.sim.kube import KubeWorld
from tests.integration.deploy.natsauth_loader import per_role_server, role_nats, violations
from tests.integration.diagnoser.crashes import pstore_lines, pstore_report, put_inventory
from tests.integration.diagnoser.test_diagnoser_service import send, wait_for_diagnosis
from tests.integration.remediator.harness import audit_records, make_settings, start_service, wait_for
from tests.unit.diagnoser.scenarios import CLUSTER, anomaly

pytestmark = pytest.mark.nats


def diagnoser(settings: NatsSettings, nc: Client, *, instance: str) -> DiagnoserRuntime:
    config = DiagnoserSettings(nats=settings, cluster=CLUSTER, tick_s=0.1, fetch_timeout_s=0.3, instance=instance)
    return DiagnoserRuntime(settings=config, nc=nc)


async def test_a_node_that_recovered_before_any_diagnoser_saw_it_is_diagnosed_and_left_alone(
    tmp_path: Path, world: KubeWorld, ecs: EcsEmulator
) -> None:
    async with per_role_server(tmp_path, "remediator", "diagnoser") as (server, nc, settings):
        role = role_nats(tmp_path, server.url, "diagnoser")
        diag_nc = await connect(role, name="diagnoser")
        try:
            await _recovered_and_left_alone(
                nc, settings, diag_nc, role, role_nats(tmp_path, server.url, "remediator"), world, ecs
            )
        finally:
            await diag_nc.close()
    assert violations(tmp_path) == []


async def _recovered_and_left_alone(
    nc: Client,
    settings: NatsSettings,
    diag_nc: Client,
    diag_settings: NatsSettings,
    remediator_settings: NatsSettings,
    world: KubeWorld,
    ecs: EcsEmulator,
) -> None:
    await put_inventory(nc, settings, {"n1": "ecs.ebmg7.32xlarge"})
    first = diagnoser(diag_settings, diag_nc, instance="diagnoser-a")
    await first.start()
    await first.stop()
    # no diagnoser runs: n1 crashes on a kernel bug (reboot + pstore report) and is back 20 s later
    t = datetime.now(tz=UTC) - timedelta(minutes=2)
    lines = pstore_lines("softlockup")
    await send(nc, settings, anomaly("n1", "unexpected_reboot", at=t))
    report = pstore_report("n1", "boot-a", lines[1:], header=lines[0], at=t)
    await publish_model(nc.jetstream(), crash_subject(CLUSTER, "n1", prefix=settings.prefix), report, msg_id="cr-n1")
    await send(nc, settings, anomaly("n1", "unexpected_reboot", status="resolved", at=t + timedelta(seconds=20)))

    remediator = await start_service(
        make_settings(remediator_settings, kube_url=world.url, ecs_endpoint=ecs.endpoint).model_copy(
            update={"cluster": CLUSTER}
        )
    )
    try:
        second = diagnoser(diag_settings, diag_nc, instance="diagnoser-b")
        await second.start()
        try:
            d = await wait_for_diagnosis(nc, settings, "n1", lambda d: True)
        finally:
            await second.stop()
        assert d.cause == "soft_lockup" and d.resolved and d.recovered
        js = nc.jetstream()
        stream = f"{settings.stream_prefix}DIAGNOSES"

        async def handled() -> bool:
            info = await js.consumer_info(stream, "remediator")
            return (info.delivered.stream_seq or 0) >= 1 and not info.num_pending and not info.num_ack_pending

        await wait_for(handled, what="the remediator to acknowledge the recovered diagnosis")
    finally:
        await remediator.stop()
    assert not [r for r in await audit_records(nc, settings) if r.node == "n1" and r.phase in ("intent", "started")]
    assert not [e for e in world.effects if e[1] == "n1"]  # nothing cordoned or evicted
    assert not [c for c in ecs.calls if c.params.get("InstanceId") == "i-n1"]  # no reboot, no redeploy
