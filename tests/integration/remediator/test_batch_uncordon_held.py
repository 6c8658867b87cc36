"""`nodeheal batch uncordon` leaves alone the nodes a live ladder holds (its budget slot in the ledger, or its
lease) unless `--force`, and says which episode holds them. Through the CLI entry point (under the `admin`
credential an operator uses), the real remediator under its role's credential on a real nats-server with the
deployed per-role authorization, the Kubernetes emulator."""

from __future__ import annotations

import asyncio

import pytest
from click.testing import CliRunner, Result
from nats.aio.client import Client

from nodeheal.cli.main import cli
from nodeheal.runtime.settings import NatsSettings
from nodeheal.sim.kube import KubeWorld
from tests.integration.remediator.harness import (
    CLUSTER,
    Deployed,
    add_inventory,
    diagnosis,
    make_settings,
    publish_diagnosis,
    start_service,
    wait_for_record,
)

pytestmark = pytest.mark.nats

NODES = ("b1", "b2")


async def _submitted(nc: Client, settings: NatsSettings) -> int:
    return (await nc.jetstream().stream_info(f"{settings.stream_prefix}DIAGNOSES")).state.messages


async def test_batch_uncordon_refuses_a_node_a_live_ladder_holds_unless_forced(
    deployed: Deployed, bare_world: KubeWorld
) -> None:
    """Episode ep-a's ladder cordons b1 and waits (its drain held back by the disruption rate): b1 holds a
    budget slot. `nodeheal batch uncordon` of the pool refuses, naming ep-a, and submits nothing; b1 stays
    cordoned. With --force it is submitted and b1 is uncordoned. Before, the batch uncordoned b1 under the
    ladder's feet."""
    nc, topology_ready = deployed.nc, deployed.admin
    for node in NODES:
        bare_world.add_node(node, zone="z1", node_pool="bp")
        await add_inventory(nc, topology_ready, node, zone="z1", node_pool="bp")
    settings = make_settings(
        deployed.remediator,
        kube_url=bare_world.url,
        storm_threshold_pct=100,
        storm_min_unhealthy=100,
        disruptive_per_minute=0,
    )
    service = await start_service(settings)
    try:
        await publish_diagnosis(nc, topology_ready, diagnosis("b1", ["cordon", "drain"], episode="ep-a"))
        await wait_for_record(nc, topology_ready, node="b1", action="drain", phase="blocked")
        assert bare_world.cordoned_nodes() == ["b1"]
        refused = await _batch_uncordon(deployed, bare_world)
        assert refused.exit_code == 1, refused.output
        assert "1 of the 2 node(s) are held by a live ladder" in refused.output
        assert "b1: episode ep-a holds its budget slot" in refused.output and "--force" in refused.output
        assert await _submitted(nc, topology_ready) == 1  # ep-a's own diagnosis only
        assert bare_world.cordoned_nodes() == ["b1"]
        forced = await _batch_uncordon(deployed, bare_world, "--force")
        assert forced.exit_code == 0, forced.output
        assert bare_world.cordoned_nodes() == []
    finally:
        await service.stop()
    assert deployed.violations() == []


async def _batch_uncordon(deployed: Deployed, world: KubeWorld, *extra: str) -> Result:
    """The CLI as an operator runs it: the `admin` credential."""
    settings = deployed.admin
    args = ["batch", "uncordon", "--selector", "nodeheal.io/node-pool=bp", "--max-parallel", "2", "--json"]
    args += ["--nats-url", settings.url, "--prefix", settings.prefix, "--stream-prefix", settings.stream_prefix]
    args += ["--bucket-prefix", settings.bucket_prefix, "--kube-url", world.url, "--cluster", CLUSTER, *extra]
    args += deployed.cli_creds()
    return await asyncio.to_thread(CliRunner().invoke, cli, args)
