"""A zone or rack going dark node by node: its down-spike finding is raised with the first nodes and said
again (same finding id) as more go dark, naming every node; a restarted diagnoser reads the grown finding
back from DIAGNOSES and neither says it again nor forgets the later nodes. Before, the finding kept the
nodes it was raised with for its whole episode."""

from __future__ import annotations

import asyncio
import itertools
from datetime import UTC, datetime, timedelta

import pytest
from nats.aio.client import Client

from nodeheal.diagnoser.handlers import DiagnoserRuntime
from nodeheal.diagnoser.settings import DiagnoserSettings
from nodeheal.runtime.settings import NatsSettings
from nodeheal.schemas.finding import FleetFinding
from nodeheal.schemas.inventory import inventory_key
from nodeheal.schemas.subjects import finding_subject
from tests.integration.deploy.natsauth_loader import RoleServer, violations
from tests.integration.diagnoser.test_diagnoser_service import read_stream, send
from tests.unit.diagnoser.scenarios import CLUSTER, anomaly, inventory

pytestmark = pytest.mark.nats

RACK = ("down_spike", "rack", "rg", "down")


async def _findings(nc: Client, nats: NatsSettings) -> list[FleetFinding]:
    raw = await read_stream(nc, f"{nats.stream_prefix}DIAGNOSES", finding_subject(prefix=nats.prefix))
    return [FleetFinding.model_validate_json(b) for b in raw]


async def _rack_naming(nc: Client, nats: NatsSettings, count: int) -> list[FleetFinding]:
    deadline = asyncio.get_running_loop().time() + 20
    while True:
        said = [f for f in await _findings(nc, nats) if (f.kind, f.dimension, f.value) == RACK[:3]]
        if said and len(said[-1].affected_nodes) >= count:
            return said
        assert asyncio.get_running_loop().time() < deadline, [len(f.affected_nodes) for f in said]
        await asyncio.sleep(0.2)


async def test_a_growing_rack_finding_is_said_again_and_read_back_after_a_restart(
    deployed: RoleServer,
) -> None:
    nc, topology_ready = deployed.nc, deployed.settings  # the test stands in for the detector, as admin
    kv = await nc.jetstream().key_value(f"{topology_ready.bucket_prefix}-inventory")
    for i in range(8):
        await kv.put(inventory_key(CLUSTER, f"g{i}"), inventory(f"g{i}", rack="rg", zone="zg").to_json())
    settings = DiagnoserSettings(
        nats=deployed.role,
        cluster=CLUSTER,
        tick_s=0.1,
        node_down_hold_s=1.0,
        correlation_interval_s=0.3,
        fetch_timeout_s=0.3,
    )
    t = datetime.now(tz=UTC)
    first = DiagnoserRuntime(settings=settings, nc=await deployed.role_nc("first"))
    await first.start()
    try:
        for i in range(4):
            await send(nc, topology_ready, anomaly(f"g{i}", "node_down", at=t + timedelta(milliseconds=100 * i)))
        raised = (await _rack_naming(nc, topology_ready, 4))[0]
        for i in (4, 5):
            await send(nc, topology_ready, anomaly(f"g{i}", "node_down", at=t + timedelta(seconds=1, milliseconds=i)))
        said = await _rack_naming(nc, topology_ready, 6)
    finally:
        await first.stop()
    grown = said[-1]
    sizes = [len(f.affected_nodes) for f in said]
    # raised once, then said again only when it grew (g4 and g5 may land in one correlation run or in two)
    assert sizes[-1] == 6 and len(said) >= 2
    assert all(a < b for a, b in itertools.pairwise(sizes)), sizes
    assert grown.finding_id == raised.finding_id and not grown.cleared
    assert {n.rsplit("/", 1)[-1] for n in grown.affected_nodes} == {f"g{i}" for i in range(6)}

    second = DiagnoserRuntime(settings=settings, nc=await deployed.role_nc("second"))
    await second.start()
    try:
        assert second.diagnoser.fleet.findings[RACK].affected_nodes == grown.affected_nodes
        await asyncio.sleep(1.5)  # several correlation runs of the restarted process
    finally:
        await second.stop()
    # the restarted process neither says it again nor raises it anew
    assert len([f for f in await _findings(nc, topology_ready) if (f.kind, f.dimension, f.value) == RACK[:3]]) == len(
        said
    )
    assert violations(deployed.dir) == []
