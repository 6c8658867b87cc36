"""Budgets, storm guard, leases and a killed replica: the promises an operator relies on most."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys

import pytest
from nats.aio.client import Client

from nodeheal.remediator.actions.kube import KubeActions, build_api_client
from nodeheal.remediator.control import storm_key
from nodeheal.remediator.settings import KubeSettings
from nodeheal.runtime.settings import NatsSettings
from nodeheal.schemas.commands import NodeCommand
from nodeheal.sim.kube import KubeWorld
from tests.integration.remediator.harness import (
    Agent,
    Probes,
    add_inventory,
    audit_records,
    diagnosis,
    make_settings,
    publish_diagnosis,
    remediator_env,
    short_leases,
    start_service,
    wait_for,
    wait_for_record,
)

pytestmark = pytest.mark.nats


@pytest.fixture
def world(bare_world: KubeWorld) -> KubeWorld:
    """The tests here add their own nodes."""
    return bare_world


async def test_drain_honours_a_pdb_that_blocks_then_allows(world: KubeWorld) -> None:
    world.add_node("a")
    world.add_node("b")
    world.add_pod("web-1", node="a", labels={"app": "web"})
    world.add_pod("agent-ds", node="a", owner_kind="DaemonSet")
    world.add_pod("static", node="a", mirror=True)
    world.add_pdb("web", selector={"app": "web"}, min_available=1)
    settings = KubeSettings(api_url=world.url, drain_timeout_s=1.0, eviction_backoff_initial_s=0.1)
    kube = KubeActions(await build_api_client(settings), settings=settings)
    try:
        assert (await kube.cordon("a")).ok
        assert world.is_cordoned("a")
        blocked = await kube.drain("a", timeout_s=1.0)
        assert not blocked.ok
        assert "no pod was force-deleted" in blocked.detail
        assert world.pods_on("a") == ["agent-ds", "static", "web-1"]
        assert world.evictions.count(429) >= 2  # retried with backoff, bounded by the timeout
        world.add_pod("web-2", node="b", labels={"app": "web"})  # a second replica makes room
        drained = await kube.drain("a", timeout_s=5.0)
        assert drained.ok, drained.detail
        assert world.pods_on("a") == ["agent-ds", "static"]  # DaemonSet and mirror pods stay
        assert ("default", "agent-ds", 201) not in world.evictions.calls
    finally:
        await kube.close()


async def test_cluster_budget_holds_under_a_burst(topology_ready: NatsSettings, nc: Client, world: KubeWorld) -> None:
    nodes = [f"n{i}" for i in range(8)]
    for node in nodes:
        world.add_node(node)
        await add_inventory(nc, topology_ready, node, zone="z1", rack=f"r{node}", node_pool="p")
    # Budget: 2 nodes cluster-wide; storm guard out of the way for this test.
    settings = make_settings(
        topology_ready,
        kube_url=world.url,
        verify_timeout_s=30,
        storm_threshold_pct=100,
        storm_min_unhealthy=100,
        cluster_budget={"max_count": 2},
        zone_budget={"max_count": 8},
        rack_budget={"max_count": 8},
        pool_budget={"max_count": 8},
    )
    service = await start_service(settings)
    max_cordoned = 0
    try:
        for node in nodes:
            await publish_diagnosis(nc, topology_ready, diagnosis(node, ["cordon", "reboot"]))

        async def enough_blocked() -> bool:
            nonlocal max_cordoned
            max_cordoned = max(max_cordoned, len(world.cordoned_nodes()))
            records = await audit_records(nc, topology_ready)
            return len({r.node for r in records if r.phase == "blocked"}) >= len(nodes) - 2

        await wait_for(enough_blocked, what="the other nodes blocked by the budget")
    finally:
        await service.stop()
    records = await audit_records(nc, topology_ready)
    started = {r.node for r in records if r.phase == "started" and r.action == "cordon"}
    assert len(started) == 2
    assert max_cordoned == 2
    blocked = [r for r in records if r.phase == "blocked"]
    assert all(any(c.name == "budget.cluster" and not c.passed for c in r.checks) for r in blocked)


async def test_storm_guard_stops_disruption_in_a_sick_zone(
    topology_ready: NatsSettings, nc: Client, world: KubeWorld
) -> None:
    nodes = [f"s{i}" for i in range(10)]
    for node in nodes:
        world.add_node(node, zone="z1")
        await add_inventory(nc, topology_ready, node, zone="z1", node_pool="p")
    settings = make_settings(topology_ready, kube_url=world.url, storm_threshold_pct=30, storm_min_unhealthy=3)
    service = await start_service(settings)
    try:
        for node in nodes[:5]:  # half the zone falls ill at once: a partition, not five broken machines
            await publish_diagnosis(nc, topology_ready, diagnosis(node, ["cordon", "drain", "reboot"]))
        await wait_for_record(nc, topology_ready, action="escalate", phase="succeeded")

        async def all_blocked() -> bool:
            records = await audit_records(nc, topology_ready)
            return len({r.node for r in records if r.phase == "blocked"}) >= 3

        await wait_for(all_blocked, what="storm blocks")
    finally:
        await service.stop()
    records = await audit_records(nc, topology_ready)
    escalations = [r for r in records if r.action == "escalate" and "storm" in r.reason]
    assert len({r.reason.split(":")[0] for r in escalations}) == len(escalations)  # once per storm domain
    blocked = [r for r in records if r.phase == "blocked"]
    assert all(any(c.name == "storm_guard" and not c.passed for c in r.checks) for r in blocked)
    # Fewer than the storm threshold can have started before the storm was visible, never all of them.
    assert len({r.node for r in records if r.phase == "started"}) < 3
    assert len(world.cordoned_nodes()) < 3


async def test_a_storm_writes_its_key_once_not_at_every_step(
    topology_ready: NatsSettings, nc: Client, world: KubeWorld
) -> None:
    """The 50,000-node demo's silence storm: every capacity step of every diagnosis wrote the control bucket for
        every failure domain with a sick node — a failed create per storm, a delete per calm domain (1.38 million writes
        for 4,036 diagnoses in `nodeheal bench remediator --storm 2000`), most of the remediator's and a good part of
        the server's CPU. A storm's key is written when it starts, once more when its escalation is recorded (and
    deleted when it ends), a calm domain's never;
        the storm guard decides as before."""
    sick = [f"s{i}" for i in range(5)]
    for i in range(10):  # z1: half of it falls ill (a storm)
        world.add_node(f"s{i}", zone="z1")
        await add_inventory(nc, topology_ready, f"s{i}", zone="z1", node_pool="p")
    for i in range(20):  # z2: one sick node of twenty (calm)
        world.add_node(f"c{i}", zone="z2")
        await add_inventory(nc, topology_ready, f"c{i}", zone="z2", node_pool="p")
    roomy = {"max_count": 100, "max_pct": 100.0}  # only the storm guard may hold anything back here: on a loaded
    # machine s0 can be cordoned before the storm is counted, and the default cluster budget (5 % of 30) then
    # held c0's cordon back for the whole wait
    settings = make_settings(
        topology_ready,
        kube_url=world.url,
        storm_threshold_pct=30,
        storm_min_unhealthy=3,
        cluster_budget=roomy,
        zone_budget=roomy,
        pool_budget=roomy,
        rack_budget=roomy,
        disruptive_per_minute=100,
    )
    service = await start_service(settings)
    try:
        for node in sick:
            await publish_diagnosis(nc, topology_ready, diagnosis(node, ["cordon", "drain", "reboot"]))
        await wait_for_record(nc, topology_ready, action="escalate", phase="succeeded")
        await publish_diagnosis(nc, topology_ready, diagnosis("c0", ["cordon"]))
        await wait_for_record(nc, topology_ready, node="c0", action="cordon", phase="succeeded")
        await asyncio.sleep(2.0)  # the blocked ladders come back every 0.5 s (`retry_delay_s`): several steps each
    finally:
        await service.stop()
    records = await audit_records(nc, topology_ready)
    blocked = {r.node for r in records if r.phase == "blocked"}
    assert len(blocked) >= 3
    assert all(any(c.name == "storm_guard" and not c.passed for c in r.checks) for r in records if r.phase == "blocked")
    bucket = f"{topology_ready.bucket_prefix}-control"
    info = await nc.jetstream().stream_info(f"KV_{bucket}", subjects_filter=f"$KV.{bucket}.storm.>")
    writes = dict(info.state.subjects or {})
    # z2, the pool, the cluster: calm; z1's key written twice: created (escalated, not recorded yet), then marked
    # recorded once its AUDIT record was stored
    assert writes == {f"$KV.{bucket}.{storm_key('zone', 'z1')}": 2}, writes


async def test_two_replicas_never_act_on_one_node_at_once(
    topology_ready: NatsSettings, nc: Client, world: KubeWorld
) -> None:
    world.add_node("n1")
    agent = Agent(ok=False, delay_s=0.5)
    await agent.serve(nc, topology_ready, "n1")
    r1 = await start_service(make_settings(topology_ready, kube_url=world.url, instance="r1", verify_timeout_s=1))
    r2 = await start_service(make_settings(topology_ready, kube_url=world.url, instance="r2", verify_timeout_s=1))
    try:
        for _ in range(4):  # four diagnoses of the same node, spread over both replicas
            await publish_diagnosis(nc, topology_ready, diagnosis("n1", [("restart_service", "kubelet")]))

        async def all_done() -> bool:
            records = await audit_records(nc, topology_ready)
            return sum(1 for r in records if r.action == "escalate") >= 4

        await wait_for(all_done, timeout=40, what="four ladders finished")
    finally:
        await r1.stop()
        await r2.stop()
    assert len(agent.commands) == 4
    assert agent.max_active == 1  # one lease, one action at a time on the node
    revisions = [c.lease_revision or 0 for c in agent.commands]
    assert all(r > 0 for r in revisions)
    assert revisions == sorted(revisions)  # fencing tokens only grow


async def test_killed_replica_work_is_picked_up_once(
    topology_ready: NatsSettings, nc: Client, world: KubeWorld
) -> None:
    await short_leases(nc, topology_ready)  # a dead holder ages out fast
    world.add_node("n1")
    await add_inventory(nc, topology_ready, "n1")
    first_command = asyncio.Event()
    agent = Agent(ok=True)

    async def hang_first(cmd: NodeCommand) -> None:
        if len(agent.commands) == 1:
            first_command.set()
            await asyncio.sleep(3600)  # replica A is killed while the agent works; it never answers A

    agent.on_command = hang_first
    await agent.serve(nc, topology_ready, "n1")
    env = remediator_env(topology_ready, INSTANCE="replica-a", ACK_WAIT_S="3", KUBE__API_URL=world.url)
    proc = subprocess.Popen([sys.executable, "-m", "nodeheal.remediator"], env=env)
    survivor = None
    try:
        await publish_diagnosis(nc, topology_ready, diagnosis("n1", [("restart_service", "kubelet"), "escalate"]))
        await asyncio.wait_for(first_command.wait(), timeout=120)  # a bound: a process start under load is slow
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
        survivor = await start_service(make_settings(topology_ready, kube_url=world.url, instance="replica-b"))
        async with Probes(nc, topology_ready, "n1"):
            verified = await wait_for_record(nc, topology_ready, phase="verified", timeout=40)
    finally:
        if proc.poll() is None:
            proc.kill()
        if survivor is not None:
            await survivor.stop()
    assert len(agent.commands) == 1  # picked up once, not twice: the started action was not repeated
    assert verified.actor == "replica-b"
    records = await audit_records(nc, topology_ready)
    assert [r.phase for r in records if r.action == "restart_service"] == ["intent", "started", "verified"]
    assert {r.actor for r in records if r.phase == "started"} == {"replica-a"}


async def test_a_storm_elsewhere_does_not_end_the_ladder_that_noticed_it(
    topology_ready: NatsSettings, nc: Client, world: KubeWorld
) -> None:
    """A storm's escalation is recorded under whichever diagnosis first met the storm at a capacity gate, a
    node of another failure domain too (its `target` is `storm:<kind>:<value>`). The 50,000-node demo: a
    machine-check machine's approved `replace` was held back once, and when its diagnosis came back, the
    storm escalation of another rack recorded under it was read as *its own* hand-over to a person: the ladder
    ended there and the machine was never replaced."""
    for i in range(10):  # z1: half of it falls ill (a storm)
        world.add_node(f"s{i}", zone="z1")
        await add_inventory(nc, topology_ready, f"s{i}", zone="z1", node_pool="p")
    for i in range(20):  # z2: calm; its budget lets one node be out at a time
        world.add_node(f"c{i}", zone="z2")
        await add_inventory(nc, topology_ready, f"c{i}", zone="z2", node_pool="p")
    agent = Agent(delay_s=3.0)  # c1's restart keeps z2's one slot taken for a while
    await agent.serve(nc, topology_ready, "c1")
    roomy = {"max_count": 100, "max_pct": 100.0}
    settings = make_settings(
        topology_ready,
        kube_url=world.url,
        storm_threshold_pct=30,
        storm_min_unhealthy=3,
        cluster_budget=roomy,
        zone_budget={"max_count": 1, "max_pct": 100.0},
        pool_budget=roomy,
        rack_budget=roomy,
        disruptive_per_minute=100,
    )
    service = await start_service(settings)
    try:
        await publish_diagnosis(nc, topology_ready, diagnosis("c1", ["cordon", ("restart_service", "kubelet")]))
        await wait_for_record(nc, topology_ready, node="c1", action="cordon", phase="succeeded")
        for i in range(5):  # sick, with nothing to do (no capacity gate meets the storm on their account)
            await publish_diagnosis(nc, topology_ready, diagnosis(f"s{i}", ["none"]))
        # (a none-only diagnosis is recorded as nothing to repair; before, the planner escalated it)
        await wait_for_record(nc, topology_ready, node="s4", action="none", phase="skipped")
        # c0 is the first to meet z1's storm at a capacity gate: the storm's escalation is recorded under c0's
        # diagnosis; then z2's budget (c1 is out) holds c0's cordon back, and the diagnosis comes back later
        await publish_diagnosis(nc, topology_ready, diagnosis("c0", ["cordon", "drain"]))
        storm = await wait_for_record(nc, topology_ready, node="c0", action="escalate", target="storm:zone:z1")
        await wait_for_record(nc, topology_ready, node="c0", phase="blocked")
        # once c1 is handed over (its slot given back), c0's ladder goes on where it was held
        await wait_for_record(nc, topology_ready, node="c0", action="drain", phase="succeeded", timeout=30)
    finally:
        await service.stop()
    records = [r for r in await audit_records(nc, topology_ready) if r.node == "c0"]
    own = [r for r in records if r.action == "escalate" and r.target != storm.target]
    assert [(r.action, r.phase) for r in records if r.action in ("cordon", "drain") and r.phase == "succeeded"] == [
        ("cordon", "succeeded"),
        ("drain", "succeeded"),
    ]
    assert all("ladder is exhausted" in r.reason for r in own), [r.reason for r in own]
    assert world.is_cordoned("c0")
