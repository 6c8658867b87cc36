"""Crash history outlives both a restart and the rebuild look-back: it is kept in the diagnoser's KV
bucket, so a second, different crash on one host after a restart is still `heterogeneous_crashes`
(hardware), even when the first crash's anomaly is older than what the new process reads back."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import pytest

from nodeheal.diagnoser.handlers import DiagnoserRuntime
from nodeheal.diagnoser.settings import DiagnoserSettings
from nodeheal.schemas.inventory import inventory_key
from tests.integration.deploy.natsauth_loader import RoleServer, violations
from tests.integration.diagnoser.test_diagnoser_service import send, wait_for_diagnosis
from tests.unit.diagnoser.scenarios import CLUSTER, OOPS_A, OOPS_B, anomaly, inventory

pytestmark = pytest.mark.nats


async def test_crash_history_survives_a_restart_beyond_the_look_back(deployed: RoleServer) -> None:
    nc, topology_ready = deployed.nc, deployed.settings  # the test stands in for the detector, as admin
    js = nc.jetstream()
    kv = await js.key_value(f"{topology_ready.bucket_prefix}-inventory")
    for node in ("h1", "h2"):
        await kv.put(inventory_key(CLUSTER, node), inventory(node, rack="r1").to_json())
    settings = DiagnoserSettings(
        nats=deployed.role, cluster=CLUSTER, tick_s=0.1, fetch_timeout_s=0.3, rebuild_lookback_s=1.0
    )
    t = datetime.now(tz=UTC)
    first = DiagnoserRuntime(settings=settings, nc=await deployed.role_nc("first"))
    await first.start()
    try:
        await send(nc, topology_ready, anomaly("h1", "kernel_fault", subject="crash", lines=OOPS_A, at=t))
        one = await wait_for_diagnosis(nc, topology_ready, "h1", lambda d: not d.resolved)
        assert one.cause == "kernel_oops_null_deref"
        await send(
            nc,
            topology_ready,
            anomaly("h1", "kernel_fault", subject="crash", status="resolved", at=t + timedelta(seconds=1)),
        )
        await wait_for_diagnosis(nc, topology_ready, "h1", lambda d: d.resolved)
    finally:
        await first.stop()
    bucket = await js.key_value(f"{topology_ready.bucket_prefix}-diagnoser")
    assert (await bucket.get("crash.prod-1.h1")).value  # written before the anomaly was acknowledged
    await asyncio.sleep(1.5)  # the first crash is now older than the 1 s look-back of the restart

    second = DiagnoserRuntime(settings=settings, nc=await deployed.role_nc("second"))
    await second.start()
    try:
        assert second.durable is not None and second.rebuilt is not None
        assert second.rebuilt.crash_histories == 1  # the key was listed and read
        ctx = second.diagnoser.fleet.nodes[f"{CLUSTER}/h1"]
        assert not ctx.anomalies  # nothing read back from ANOMALIES...
        assert len(ctx.crashes) == 1  # ...but the crash history is there
        later = t + timedelta(hours=1)
        await send(nc, topology_ready, anomaly("h1", "kernel_fault", subject="crash", lines=OOPS_B, at=later))
        hw = await wait_for_diagnosis(nc, topology_ready, "h1", lambda d: d.cause == "heterogeneous_crashes")
    finally:
        await second.stop()
    assert hw.category == "hardware"
    assert [r.action for r in hw.recommended][:3] == ["cordon", "drain", "redeploy"]
    assert violations(deployed.dir) == []
