"""Issue 13 regressions of node commands on a real nats-server with the deployed per-role authorization,
through the real remediator service (under its role's credential) and the real node agent code (under the
node's own minted credential); side effects counted where they happen (the simulated node's systemctl, the
fake node's systemctl log):

- a descriptor leak on a simulated node (the demo's `fd_leak`): the agent reads /proc through the host
  interface, names the leaking process, and `restart_service fd-holder` restarts *that* unit; verified.
- the remediator SIGKILLed between sending a node command and recording its result, the node agent
  restarted too: the restarted remediator re-sends the command with the same action id, the agent
  answers from its stored result, the command ran exactly once and the step completes.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from nodeheal.agent.app import NodeAgent
from nodeheal.diagnoser.rules import ladder_for
from nodeheal.schemas.diagnosis import Diagnosis
from nodeheal.schemas.ids import new_id
from nodeheal.sim.clock import ManualClock
from nodeheal.sim.ecs_api import EcsEmulator, EcsWorld
from nodeheal.sim.engine import FleetSimulator, SimTimings
from nodeheal.sim.fleet import FleetSpec
from nodeheal.sim.kube import KubeWorld
from tests.integration.deploy.natsauth_loader import agent_nats, per_role_server, role_nats, violations
from tests.integration.remediator.harness import (
    CLUSTER,
    Deployed,
    audit_records,
    diagnosis,
    make_settings,
    publish_diagnosis,
    real_agent_with_a_dead_kubelet,
    short_leases,
    start_service,
    wait_for_record,
)
from tests.integration.remediator.test_kill_points import _remediator
from tests.unit.cloud_events.agent_fakenode import statvfs_with

pytestmark = pytest.mark.nats


@pytest.fixture
async def ecs() -> AsyncIterator[EcsEmulator]:
    world = EcsWorld(clock=ManualClock(), reboot_duration=timedelta(seconds=1))
    world.add_instance("i-k1", region_id="cn-hangzhou")
    async with EcsEmulator(world) as emu:
        yield emu


async def test_a_descriptor_leak_restarts_the_unit_that_holds_the_descriptors(
    deployed: Deployed, tmp_path: Path
) -> None:
    """As deployed: the remediator under its role's credential and inbox, each simulated node's agent code
    speaking through a connection under that node's own minted credential (its probes, its commands, its
    replies); admin stands in for the prober."""
    nc, topology_ready = deployed.nc, deployed.admin
    sim = FleetSimulator(
        spec=FleetSpec(nodes=3, cluster=CLUSTER),
        settings=topology_ready,
        timings=SimTimings(probe_interval_s=0.3),
        work_dir=tmp_path,
    )
    node = next(iter(sim.nodes.values()))
    await sim.publish_inventory(await nc.jetstream().key_value(f"{topology_ready.bucket_prefix}-inventory"))
    async with KubeWorld() as world:
        for name in sim.nodes:
            world.add_node(name, zone="z1")
        agents = contextlib.AsyncExitStack()
        service = None
        try:
            agent_nc = {name: await agents.enter_async_context(deployed.agent_connection(name)) for name in sim.nodes}
            await sim.start(prober_nc=nc, agent_nc=agent_nc)
            service = await start_service(make_settings(deployed.remediator, kube_url=world.url))
            node.fd_allocated = int(node.fd_max * 0.97)  # what the demo's fd_leak fault does
            d = Diagnosis(
                cluster=CLUSTER,
                node=node.name,
                anomaly_ids=(f"anomaly-{new_id()}",),
                category="software",
                cause="fd_exhaustion",
                confidence=0.9,
                recommended=ladder_for("fd_exhaustion", "software"),
                identified_at=datetime.now(tz=UTC),
            )
            await publish_diagnosis(nc, topology_ready, d)
            verified = await wait_for_record(nc, topology_ready, node=node.name, phase="verified", timeout=30)
        finally:
            if service is not None:
                await service.stop()
            await sim.stop()
            await agents.aclose()
    commands = [c for c in sim.executed_commands() if c["node"] == node.name]
    assert [(c["command"], c["target"], c["ok"]) for c in commands] == [("restart_service", "fd-holder", True)]
    assert "(ops-agent) holds" in str(commands[0]["detail"])  # the holder, named by the agent from /proc
    assert node.restarts == {"ops-agent": 1}  # that unit, not a guessed kubelet
    assert verified.action == "restart_service"
    records = [r for r in await audit_records(nc, topology_ready) if r.node == node.name]
    assert [r for r in records if r.action == "escalate"] == []
    assert deployed.violations() == []


async def test_killed_between_command_and_result_the_command_is_resent_and_runs_once(
    ecs: EcsEmulator, tmp_path: Path
) -> None:
    """As deployed: the server runs deploy/nats/natsauth.py's per-role authorization, both remediator processes
    connect with the remediator role's credential and inbox, and the agent is the real code under the node's
    own minted credential, so the re-sent request is answered (from the agent's state directory) on the
    restarted replica's own inbox only as the deployed permissions allow."""
    name = "k2-resend"
    async with per_role_server(tmp_path, "remediator", nodes=((CLUSTER, name),)) as (server, nc, admin):
        await short_leases(nc, admin)  # a dead holder ages out fast
        fake, settings = real_agent_with_a_dead_kubelet(agent_nats(tmp_path, server.url, CLUSTER, name), name, tmp_path)
        disk = statvfs_with({"root": (50, 10)})
        role = role_nats(tmp_path, server.url, "remediator")
        as_role = {"NATS__CREDS_FILE": str(role.creds_file), "NATS__INBOX_PREFIX": role.inbox_prefix}

        async def run_agent() -> tuple[NodeAgent, asyncio.Task[None]]:
            agent = NodeAgent(settings, statvfs=disk)  # type: ignore[arg-type]
            await agent.start()
            return agent, asyncio.create_task(agent.run_probes())

        async def stop_agent(agent: NodeAgent, task: asyncio.Task[None]) -> None:
            await agent.stop()
            await task

        async with KubeWorld() as world:
            world.add_node(name, zone="z1")
            agent, probes = await run_agent()
            first = _remediator(admin, world.url, ecs, kill_at="between_action_and_result", **as_role)
            second = None
            try:
                await publish_diagnosis(nc, admin, diagnosis(name, [("restart_service", "kubelet"), "escalate"]))
                assert await asyncio.to_thread(first.wait, 60) == -9  # it died after the command, before its result
                assert fake.restarts_logged() == ["kubelet.service"]
                await stop_agent(agent, probes)  # the agent restarts too: only its state directory remembers
                agent, probes = await run_agent()
                second = _remediator(admin, world.url, ecs, kill_at=None, **as_role)
                verified = await wait_for_record(nc, admin, node=name, phase="verified", timeout=60)
            finally:
                await stop_agent(agent, probes)
                for proc in (first, second):
                    if proc is not None and proc.poll() is None:
                        proc.terminate()
                        await asyncio.to_thread(proc.wait, 10)
        records = [r for r in await audit_records(nc, admin) if r.node == name and r.action_id == verified.action_id]
    assert fake.restarts_logged() == ["kubelet.service"]  # executed exactly once
    assert agent.executor.replayed == 1 and agent.executor.executed == 0  # asked again, answered from disk
    assert [r.phase for r in records].count("started") == 1
    done = [r for r in records if r.phase == "succeeded"]
    assert len(done) == 1 and done[0].actor == "replica-restarted" and "re-sent" in done[0].reason
    assert verified.actor == "replica-restarted" and verified.action == "restart_service"
    assert violations(tmp_path) == []
