"""`nodeheal batch` checks its cluster against the inventory bucket before it submits anything, through the
CLI entry point, with the real remediator (cluster c1) on a real nats-server and the Kubernetes emulator.
The CLI runs under the `admin` credential an operator uses, the remediator under its role's, on a server with the
deployed per-role authorization. The remediator refuses a diagnosis for another cluster; before, `--cluster` defaulted to `default`, and a
batch that forgot it published operator diagnoses the remediator only recorded as refused."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

import pytest
from click.testing import CliRunner, Result
from nats.aio.client import Client

from nodeheal.cli.main import cli
from nodeheal.remediator.handlers import RemediatorService
from nodeheal.runtime.settings import NatsSettings
from nodeheal.schemas.inventory import NodeInventory, inventory_key
from nodeheal.sim.kube import KubeWorld
from tests.integration.remediator.harness import CLUSTER, Deployed, add_inventory, make_settings, start_service

pytestmark = pytest.mark.nats

NODES = ("b1", "b2")


@pytest.fixture
async def remediator(deployed: Deployed, bare_world: KubeWorld) -> AsyncIterator[RemediatorService]:
    """b1, b2 in pool bp (in Kubernetes and in the inventory, cluster c1); the remediator of cluster c1, under its
    role's credential on the per-role server."""
    nc, topology_ready = deployed.nc, deployed.admin
    for node in NODES:
        bare_world.add_node(node, zone="z1", node_pool="bp")
        await add_inventory(nc, topology_ready, node, zone="z1", node_pool="bp")
    service = await start_service(make_settings(deployed.remediator, kube_url=bare_world.url))
    try:
        yield service
    finally:
        await service.stop()


async def _batch(deployed: Deployed, world: KubeWorld, *extra: str) -> Result:
    """The CLI as an operator runs it: the `admin` credential."""
    settings = deployed.admin
    args = ["batch", "cordon", "--selector", "nodeheal.io/node-pool=bp", "--max-parallel", "2", "--json"]
    args += ["--nats-url", settings.url, "--prefix", settings.prefix, "--stream-prefix", settings.stream_prefix]
    args += ["--bucket-prefix", settings.bucket_prefix, "--kube-url", world.url, *deployed.cli_creds(), *extra]
    return await asyncio.to_thread(CliRunner().invoke, cli, args)


async def _submitted(nc: Client, settings: NatsSettings) -> int:
    return (await nc.jetstream().stream_info(f"{settings.stream_prefix}DIAGNOSES")).state.messages


async def test_a_cluster_the_inventory_does_not_know_is_refused_before_anything_is_submitted(
    deployed: Deployed, bare_world: KubeWorld, remediator: RemediatorService
) -> None:
    nc, topology_ready = deployed.nc, deployed.admin
    result = await _batch(deployed, bare_world, "--cluster", "default")
    assert result.exit_code == 1, result.output
    assert "knows no cluster 'default'; it knows: c1" in result.output and "--cluster NAME" in result.output
    assert await _submitted(nc, topology_ready) == 0
    assert bare_world.cordoned_nodes() == []
    assert deployed.violations() == []


async def test_without_cluster_the_only_cluster_the_inventory_knows_is_used(
    deployed: Deployed, bare_world: KubeWorld, remediator: RemediatorService
) -> None:
    result = await _batch(deployed, bare_world)
    assert result.exit_code == 0, result.output
    assert f"cluster {CLUSTER}: the only one the inventory knows" in result.stderr
    report = json.loads(result.stdout)
    assert report["cluster"] == CLUSTER and report["summary"] == {"done": 2}
    assert bare_world.cordoned_nodes() == list(NODES)
    assert deployed.violations() == []


async def test_without_cluster_and_two_clusters_known_the_batch_asks_which(
    deployed: Deployed, bare_world: KubeWorld, remediator: RemediatorService
) -> None:
    nc, topology_ready = deployed.nc, deployed.admin
    kv = await nc.jetstream().key_value(f"{topology_ready.bucket_prefix}-inventory")
    await kv.put(inventory_key("c2", "z7"), NodeInventory(cluster="c2", node="z7", zone="z1").to_json())
    result = await _batch(deployed, bare_world)
    assert result.exit_code == 1, result.output
    assert "knows 2 clusters (c1, c2): pass --cluster NAME" in result.output
    assert await _submitted(nc, topology_ready) == 0
    assert deployed.violations() == []


async def test_nodes_the_inventory_does_not_list_in_the_cluster_are_refused(
    deployed: Deployed, bare_world: KubeWorld, remediator: RemediatorService
) -> None:
    nc, topology_ready = deployed.nc, deployed.admin
    bare_world.add_node("x9", zone="z1", node_pool="bp")  # in Kubernetes, not (yet) in the inventory
    result = await _batch(deployed, bare_world, "--cluster", CLUSTER)
    assert result.exit_code == 1, result.output
    assert "1 of the 3 node(s) are not in cluster 'c1' of the inventory" in result.output and "x9" in result.output
    assert "knows clusters: c1" in result.output
    assert await _submitted(nc, topology_ready) == 0
    assert bare_world.cordoned_nodes() == []
    assert deployed.violations() == []
