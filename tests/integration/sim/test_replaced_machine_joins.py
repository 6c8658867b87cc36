"""A replaced machine leaves and its successor joins the fleet (issue 16): the real remediator on a real
nats-server rotates a machine that crashed on a fatal MCE; nothing is released before `nodeheal approve`;
then one DeleteInstance and one RunInstances reach the ECS emulator through the Alibaba SDK, the old Node
goes away at the Kubernetes emulator (and from the inventory), and the new instance registers as a new
Ready Node whose agent — the real agent code over the simulated host — probes it.

As deployed: the per-role server, the remediator under its credential, the prober under its own, each node's agent
under that node's credential, and the new machine's agent under one minted for its new node name when it joins
(as an operator's `natsauth.py mint-agent` does); `nodeheal approve` with the admin credential (people's CLI).
The test stands in for the diagnoser and the inventory watcher as admin."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import orjson
import pytest
from click.testing import CliRunner
from nats.aio.client import Client
from nats.js.errors import KeyNotFoundError

from nodeheal.cli.main import cli
from nodeheal.runtime.connect import connect
from nodeheal.runtime.settings import NatsSettings
from nodeheal.schemas.inventory import inventory_key
from nodeheal.sim.engine import FleetSimulator, SimTimings
from nodeheal.sim.fleet import FleetSpec
from nodeheal.sim.rotation import NEW_MACHINE_KERNEL, FleetRotation, add_launch_templates
from nodeheal.sim.world import DemoWorld
from tests.integration.deploy.natsauth_loader import (
    connect_agent,
    per_role_server,
    role_nats,
    violations,
)
from tests.integration.remediator.harness import (
    CLUSTER,
    audit_records,
    make_settings,
    mce_crash,
    publish_diagnosis,
    start_service,
    wait_for_record,
)
from tests.support.cli import nats_args

pytestmark = pytest.mark.nats


async def test_an_approved_replacement_leaves_and_joins_the_fleet(tmp_path: Path) -> None:
    directory = tmp_path / "nats"
    directory.mkdir()
    async with per_role_server(directory, "remediator", "prober") as (server, nc, nats):
        await _replacement(tmp_path, directory, server.url, nc, nats)
    assert violations(directory) == []


async def _replacement(tmp_path: Path, directory: Path, url: str, nc: Client, nats: NatsSettings) -> None:
    spec = FleetSpec(nodes=6, cluster=CLUSTER, seed=3)
    timings = SimTimings(probe_interval_s=0.5)
    sim = FleetSimulator(spec=spec, settings=nats, timings=timings, work_dir=tmp_path / "nodes")
    probes: dict[str, list[dict[str, Any]]] = {}
    opened: list[Client] = []

    async def on_probe(msg: Any) -> None:
        body = orjson.loads(msg.data)
        if "boot_id" in body:  # the agent's probe (the prober's has no boot id)
            probes.setdefault(body["node"], []).append(body)

    async def agent(node: str) -> Client:
        """The node's agent connection under its own credential, minted now (for a joining machine: when it
        joins, as an operator's `natsauth.py mint-agent` does for a new node)."""
        conn = await connect_agent(directory, url, CLUSTER, node)
        opened.append(conn)
        return conn

    await nc.subscribe(f"{nats.prefix}.probe.>", cb=on_probe)
    async with DemoWorld(sim=sim, timings=timings, region=spec.region) as world:
        templates = add_launch_templates(world.ecs, region=spec.region, zone=sim.inventory[0].zone or "")
        kv = await nc.jetstream().key_value(f"{nats.bucket_prefix}-inventory")
        await sim.publish_inventory(kv)
        rotation = FleetRotation(
            sim=sim, ecs=world.ecs, kube=world.kube, inventory=kv, connect_agent=agent, domains=world.domains
        )
        remediator = role_nats(directory, url, "remediator")
        settings = make_settings(remediator, kube_url=world.kube_url, ecs_endpoint=world.ecs_endpoint)
        settings.cloud.alibaba_launch_templates = templates
        service = await start_service(settings)
        prober = await connect(role_nats(directory, url, "prober"), name="prober")
        opened.append(prober)
        await sim.start(prober_nc=prober, agent_nc={node: await agent(node) for node in sim.nodes})
        stop = asyncio.Event()

        async def world_loop() -> None:
            while not stop.is_set():
                world.sample()
                await rotation.step()
                await asyncio.sleep(0.1)

        ticking = asyncio.create_task(world_loop())
        old = sorted(sim.nodes)[2]
        old_instance = sim.nodes[old].inv.instance_id
        try:
            await publish_diagnosis(nc, nats, mce_crash(old))
            waiting = await wait_for_record(nc, nats, action="replace", phase="awaiting_approval", timeout=60)
            await asyncio.sleep(1.0)
            assert world.ecs.calls_to("DeleteInstance") == [] and world.ecs.calls_to("RunInstances") == []
            assert world.kube.has_node(old) and world.kube.is_cordoned(old)  # retired, still there
            admin = nats.model_copy(update={"creds_file": str(directory / "admin.creds")})
            approve = ["approve", waiting.action_id, "--by", "alice", *nats_args(admin)]
            result = await asyncio.to_thread(CliRunner().invoke, cli, approve, catch_exceptions=False)
            assert result.exit_code == 0, result.output
            await wait_for_record(nc, nats, action="replace", phase="succeeded", timeout=60)
            for _ in range(100):
                if rotation.joined and probes.get(rotation.joined[0].node):
                    break
                await asyncio.sleep(0.1)
            # the old machine's silence (its agent is gone for good) is diagnosed again: no fault of a machine
            # that left the fleet — nothing is done to it
            await publish_diagnosis(nc, nats, mce_crash(old))
            ghost = await wait_for_record(nc, nats, action="none", phase="skipped", timeout=30)
            assert "left the fleet" in ghost.reason
        finally:
            stop.set()
            await ticking
            await sim.stop()
            await service.stop()
            for conn in opened:
                await conn.close()

        assert [(r.action, r.phase) for r in await audit_records(nc, nats) if r.time > ghost.time] == []
        deletes = world.ecs.calls_to("DeleteInstance")
        runs = world.ecs.calls_to("RunInstances")
        assert [c.params["InstanceId"] for c in deletes] == [old_instance] and len(runs) == 1
        # the old machine is gone: no Node, no inventory record, no longer probed
        assert not world.kube.has_node(old) and old not in sim.nodes
        with pytest.raises(KeyNotFoundError):
            await kv.get(inventory_key(CLUSTER, old))
        # the new one joined: a Ready Node of the pool's zone, probed by the real agent code on its new kernel
        (joined,) = rotation.joined
        assert joined.instance_id in world.ecs.instances and joined.node != old
        node = world.kube.node(joined.node)
        assert {c["type"]: c["status"] for c in node["status"]["conditions"]}["Ready"] == "True"
        assert not node["spec"].get("unschedulable")
        seen = probes.get(joined.node, [])
        assert seen and seen[-1]["kernel_release"] == NEW_MACHINE_KERNEL
        record = json.loads((await kv.get(inventory_key(CLUSTER, joined.node))).value or b"{}")
        assert record["instance_id"] == joined.instance_id
