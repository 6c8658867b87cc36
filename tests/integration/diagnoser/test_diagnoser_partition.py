"""A 40-node rack that goes dark over time, through the diagnoser service on a real nats-server
(issue 13 item 8): the anomalies arrive over ~60 s scaled by 0.1 (6 s; the hold settings scaled the
same way), the rack is one partition and none of its nodes gets a crash or a reboot ladder; a lone
dark node elsewhere is a crash. The unscaled 10 s / 60 s / 150 s spreads are in
tests/unit/diagnoser/test_domain_hold.py."""

from __future__ import annotations

import asyncio
import random
from datetime import UTC, datetime, timedelta

import pytest

from nodeheal.diagnoser.handlers import DiagnoserRuntime
from nodeheal.diagnoser.settings import DiagnoserSettings
from nodeheal.schemas import Diagnosis
from nodeheal.schemas.inventory import inventory_key
from nodeheal.schemas.subjects import wildcard
from tests.integration.deploy.natsauth_loader import RoleServer, violations
from tests.integration.diagnoser.test_diagnoser_service import read_stream, send
from tests.unit.diagnoser.scenarios import CLUSTER, anomaly, inventory

pytestmark = pytest.mark.nats

SCALE = 0.1


async def test_a_rack_going_dark_over_a_minute_is_one_partition(deployed: RoleServer) -> None:
    nc, topology_ready = deployed.nc, deployed.settings  # the test stands in for the detector, as admin
    js = nc.jetstream()
    kv = await js.key_value(f"{topology_ready.bucket_prefix}-inventory")
    rack = [f"a{i}" for i in range(40)]
    for node in rack:
        await kv.put(inventory_key(CLUSTER, node), inventory(node, rack="ra", zone="z1").to_json())
    for rack_name in ("rb", "rc", "rd"):  # the zone has other racks that stay up
        for node in [f"{rack_name}{i}" for i in range(40)]:
            await kv.put(inventory_key(CLUSTER, node), inventory(node, rack=rack_name, zone="z1").to_json())
    runtime = DiagnoserRuntime(
        settings=DiagnoserSettings(
            nats=deployed.role,
            cluster=CLUSTER,
            tick_s=0.1,
            fetch_timeout_s=0.3,
            node_down_hold_s=5 * SCALE,
            domain_quiet_s=15 * SCALE,
            domain_hold_max_s=240 * SCALE,
        ),
        nc=await deployed.role_nc("diagnoser"),
    )
    await runtime.start()
    try:
        rng = random.Random(7)
        order = rack[:]
        rng.shuffle(order)
        gap = 60 * SCALE / (len(order) - 1)
        start = asyncio.get_running_loop().time()
        await send(nc, topology_ready, anomaly("rb3", "node_down", at=datetime.now(tz=UTC)))
        for i, node in enumerate(order):
            due = start + i * gap + rng.uniform(-0.4, 0.4) * gap
            await asyncio.sleep(max(0.0, due - asyncio.get_running_loop().time()))
            now = datetime.now(tz=UTC)
            await send(nc, topology_ready, anomaly(node, "node_down", at=now, onset=now - timedelta(seconds=25)))
        seen: list[Diagnosis] = []
        deadline = asyncio.get_running_loop().time() + 30
        while asyncio.get_running_loop().time() < deadline:
            raw = await read_stream(
                nc, f"{topology_ready.stream_prefix}DIAGNOSES", wildcard("diagnosis", prefix=topology_ready.prefix)
            )
            seen = [Diagnosis.model_validate_json(b) for b in raw]
            if {d.node for d in seen} >= {*rack, "rb3"}:
                break
            await asyncio.sleep(0.3)
    finally:
        await runtime.stop()
    in_rack = [d for d in seen if d.node in rack]
    assert {d.node for d in in_rack} == set(rack)
    assert [d for d in in_rack if d.cause == "node_crash" or any(r.action == "reboot" for r in d.recommended)] == []
    assert {d.cause for d in in_rack} == {"rack_partition"} and len(in_rack) == 40  # judged once, together
    assert [(d.node, d.cause) for d in seen if d.node == "rb3"] == [("rb3", "node_crash")]
    assert violations(deployed.dir) == []


async def test_a_rack_whose_second_node_goes_dark_30_s_later_gets_no_crash_across_a_restart(
    deployed: RoleServer,
) -> None:
    """Issue 13: the first dark node of a rack waits (the production hold of 60 s, scaled like the rest)
    for a peer that goes dark 30 s later; the diagnoser is restarted while that verdict is held, and the
    rebuilt service holds it just the same. A lone dark node in another rack is one node_crash."""
    nc, topology_ready = deployed.nc, deployed.settings  # the test stands in for the detector, as admin
    js = nc.jetstream()
    kv = await js.key_value(f"{topology_ready.bucket_prefix}-inventory")
    for rack_name in ("ra", "rb", "rc", "rd"):
        for i in range(10):
            node = f"{rack_name}{i}"
            await kv.put(inventory_key(CLUSTER, node), inventory(node, rack=rack_name, zone="z1").to_json())
    settings = DiagnoserSettings(
        nats=deployed.role,
        cluster=CLUSTER,
        tick_s=0.1,
        fetch_timeout_s=0.3,
        node_down_hold_s=60 * SCALE,
        domain_quiet_s=15 * SCALE,
        domain_hold_max_s=240 * SCALE,
    )
    rack = [f"ra{i}" for i in range(10)]

    async def dark(node: str) -> None:
        now = datetime.now(tz=UTC)
        await send(nc, topology_ready, anomaly(node, "node_down", at=now, onset=now - timedelta(seconds=25 * SCALE)))

    async def diagnoses() -> list[Diagnosis]:
        raw = await read_stream(
            nc, f"{topology_ready.stream_prefix}DIAGNOSES", wildcard("diagnosis", prefix=topology_ready.prefix)
        )
        return [Diagnosis.model_validate_json(b) for b in raw]

    runtime = DiagnoserRuntime(settings=settings, nc=await deployed.role_nc("first"))
    await runtime.start()
    try:
        await dark("rb3")  # a lone crash elsewhere in the zone
        await dark(rack[0])
        await asyncio.sleep(15 * SCALE)
        await runtime.stop()  # restarted while both verdicts are held
        assert await diagnoses() == []
        runtime = DiagnoserRuntime(settings=settings, nc=await deployed.role_nc("second"))
        await runtime.start()
        await asyncio.sleep(15 * SCALE)
        for node in rack[1:]:  # the second node 30 s after the first, then the rest of the switch
            await dark(node)
            await asyncio.sleep(2 * SCALE)
        seen: list[Diagnosis] = []
        deadline = asyncio.get_running_loop().time() + 30
        while asyncio.get_running_loop().time() < deadline:
            seen = await diagnoses()
            if {d.node for d in seen} >= {*rack, "rb3"}:
                break
            await asyncio.sleep(0.3)
    finally:
        await runtime.stop()
    in_rack = [d for d in seen if d.node in rack]
    assert [d.node for d in in_rack if d.cause == "node_crash"] == []
    assert {d.cause for d in in_rack} == {"rack_partition"} and len(in_rack) == len(rack)
    assert [(d.node, d.cause) for d in seen if d.node == "rb3"] == [("rb3", "node_crash")]
    assert violations(deployed.dir) == []
