"""One diagnoser process per cluster at a time (its state is in memory), on a real nats-server.

Found by a review: the Deployment's rolling update (maxSurge 1) ran the old and the new process on one durable
together; a node_down the old one took and held (acked, its verdict waiting for rack peers) was never diagnosed
once the old pod stopped, since the detector does not say node_down twice. Now a process waits for the holder of
`singleton.<cluster>` in the diagnoser bucket: a clean stop gives it back at once, a killed holder is taken over
after `singleton_ttl_s`, and a holder that loses it stops consuming."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

import pytest
from nats.aio.client import Client

from nodeheal.diagnoser.handlers import DiagnoserRuntime
from nodeheal.diagnoser.settings import DiagnoserSettings
from nodeheal.runtime.settings import NatsSettings
from nodeheal.schemas.inventory import inventory_key
from tests.integration.deploy.natsauth_loader import RoleServer, violations
from tests.integration.diagnoser.test_diagnoser_service import send, wait_for_diagnosis
from tests.unit.diagnoser.scenarios import CLUSTER, anomaly, inventory

pytestmark = pytest.mark.nats


def _settings(nats: NatsSettings, instance: str) -> DiagnoserSettings:
    return DiagnoserSettings(
        nats=nats,
        cluster=CLUSTER,
        instance=instance,
        tick_s=0.1,
        fetch_timeout_s=0.3,
        node_down_hold_s=3.0,
        singleton_ttl_s=3.0,
    )


async def _put_lone_nodes(nc: Client, nats: NatsSettings, nodes: list[str]) -> None:
    kv = await nc.jetstream().key_value(f"{nats.bucket_prefix}-inventory")
    for i, node in enumerate(nodes):  # one node per rack and zone: each dark node is judged alone
        await kv.put(inventory_key(CLUSTER, node), inventory(node, rack=f"r{i}", zone=f"z{i}").to_json())


async def test_a_rollouts_new_process_waits_for_the_old_one_and_the_held_node_down_is_diagnosed(
    deployed: RoleServer,
) -> None:
    nc, topology_ready = deployed.nc, deployed.settings  # the test stands in for the detector, as admin
    await _put_lone_nodes(nc, topology_ready, ["n0"])
    old = DiagnoserRuntime(settings=_settings(deployed.role, "old"), nc=await deployed.role_nc("old"))
    await old.start()
    new = DiagnoserRuntime(settings=_settings(deployed.role, "surge"), nc=await deployed.role_nc("surge"))
    starting = asyncio.create_task(new.start())  # the surge pod comes up while the old one runs
    try:
        await send(nc, topology_ready, anomaly("n0", "node_down", at=datetime.now(tz=UTC)))
        for _ in range(100):  # the old process took it and holds the verdict (node_down_hold_s)
            ctx = old.diagnoser.fleet.nodes.get(f"{CLUSTER}/n0")
            if ctx is not None and ctx.anomalies:
                break
            await asyncio.sleep(0.05)
        else:
            raise AssertionError("the running process never took the anomaly")
        await asyncio.sleep(0.5)
        assert not starting.done()  # not consuming beside the old process
        ready, why = await new.readiness()
        assert not ready and "waiting for the process holding the singleton (old:" in why, why
        await old.stop()  # the rollout stops the old pod before the verdict was due
        await asyncio.wait_for(starting, timeout=10)  # given back: the new process starts at once
        d = await wait_for_diagnosis(nc, topology_ready, "n0", lambda d: not d.resolved, timeout_s=15.0)
        assert d.cause
    finally:
        if not starting.done():
            starting.cancel()
        await new.stop()
    assert violations(deployed.dir) == []


async def test_a_killed_holder_is_taken_over_and_a_holder_that_lost_it_stops_consuming(
    deployed: RoleServer,
) -> None:
    """A holder that vanished without giving the key back (SIGKILL, a partitioned node) is taken over once it has
    not renewed it for `singleton_ttl_s`; if that holder comes back it finds the key another's and stops."""
    nc, topology_ready = deployed.nc, deployed.settings  # the test stands in for the detector, as admin
    await _put_lone_nodes(nc, topology_ready, ["n1"])
    stale = DiagnoserRuntime(settings=_settings(deployed.role, "stale"), nc=await deployed.role_nc("stale"))
    await stale.start()
    assert stale._keeper is not None
    stale._keeper.cancel()  # its renewals stop, as if the process were frozen or cut off
    successor = DiagnoserRuntime(settings=_settings(deployed.role, "successor"), nc=await deployed.role_nc("successor"))
    try:
        await asyncio.wait_for(successor.start(), timeout=15)
        assert stale.singleton is not None and successor.singleton is not None
        # the stale process wakes up: its next renewal finds the key another's, and it stops consuming
        stale._keeper = asyncio.create_task(stale._keep_singleton(stale.singleton))
        await asyncio.wait_for(stale._keeper, timeout=15)
        assert stale.lost_singleton is not None and "another process took" in stale.lost_singleton
        alive, why = stale.liveness()
        assert not alive and "singleton" in why
        # only the successor diagnoses from now on
        await send(nc, topology_ready, anomaly("n1", "node_down", at=datetime.now(tz=UTC)))
        await wait_for_diagnosis(nc, topology_ready, "n1", lambda d: not d.resolved, timeout_s=15.0)
        assert (
            not stale.diagnoser.fleet.nodes.get(f"{CLUSTER}/n1")
            or not stale.diagnoser.fleet.nodes[f"{CLUSTER}/n1"].anomalies
        )
    finally:
        await stale.stop()
        await successor.stop()
    assert violations(deployed.dir) == []


async def test_a_process_of_the_same_pod_takes_over_at_once(deployed: RoleServer) -> None:
    """A container restart after a SIGKILL (OOM kill, a liveness failure): the pod is the same, its earlier process
    is gone. It takes the key over at once instead of waiting `singleton_ttl_s` — the first chaos demo with the
    singleton lost three faults that fired and ended inside that 30 s wait, never diagnosed."""
    nc, topology_ready = deployed.nc, deployed.settings  # the test stands in for the detector, as admin
    await _put_lone_nodes(nc, topology_ready, ["n2"])
    long_ttl = _settings(deployed.role, "pod-a").model_copy(update={"singleton_ttl_s": 600.0})
    killed = DiagnoserRuntime(settings=long_ttl, nc=await deployed.role_nc("pod-a"))
    await killed.start()
    assert killed._keeper is not None
    killed._keeper.cancel()  # SIGKILLed: no renewal, no release
    await killed.consumers.stop()
    restarted = DiagnoserRuntime(settings=long_ttl, nc=await deployed.role_nc("pod-a"))
    try:
        await asyncio.wait_for(restarted.start(), timeout=60)  # far under the 600 s ttl
        await send(nc, topology_ready, anomaly("n2", "node_down", at=datetime.now(tz=UTC)))
        await wait_for_diagnosis(nc, topology_ready, "n2", lambda d: not d.resolved, timeout_s=15.0)
    finally:
        await restarted.stop()
        await killed.stop()
    assert violations(deployed.dir) == []
