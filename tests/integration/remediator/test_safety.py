"""Budgets, storm guard, leases and a killed replica: the promises an operator relies on most."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from nodeheal.remediator.actions.kube import KubeActions, build_api_client
from nodeheal.remediator.control import storm_key
from nodeheal.remediator.settings import KubeSettings
from nodeheal.sim.kube import KubeWorld
from tests.integration.remediator.harness import (
    CommandTap,
    Deployed,
    add_inventory,
    audit_records,
    diagnosis,
    make_settings,
    publish_diagnosis,
    remediator_env,
    serving_node,
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


async def test_cluster_budget_holds_under_a_burst(deployed: Deployed, world: KubeWorld) -> None:
    nc, admin = deployed.nc, deployed.admin
    nodes = [f"n{i}" for i in range(8)]
    for node in nodes:
        world.add_node(node)
        await add_inventory(nc, admin, node, zone="z1", rack=f"r{node}", node_pool="p")
    # Budget: 2 nodes cluster-wide; storm guard out of the way for this test.
    settings = make_settings(
        deployed.remediator,
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
            await publish_diagnosis(nc, admin, diagnosis(node, ["cordon", "reboot"]))

        async def enough_blocked() -> bool:
            nonlocal max_cordoned
            max_cordoned = max(max_cordoned, len(world.cordoned_nodes()))
            records = await audit_records(nc, admin)
            return len({r.node for r in records if r.phase == "blocked"}) >= len(nodes) - 2

        await wait_for(enough_blocked, what="the other nodes blocked by the budget")
    finally:
        await service.stop()
    records = await audit_records(nc, admin)
    started = {r.node for r in records if r.phase == "started" and r.action == "cordon"}
    assert len(started) == 2
    assert max_cordoned == 2
    blocked = [r for r in records if r.phase == "blocked"]
    assert all(any(c.name == "budget.cluster" and not c.passed for c in r.checks) for r in blocked)
    assert deployed.violations() == []


async def test_storm_guard_stops_disruption_in_a_sick_zone(deployed: Deployed, world: KubeWorld) -> None:
    nc, admin = deployed.nc, deployed.admin
    nodes = [f"s{i}" for i in range(10)]
    for node in nodes:
        world.add_node(node, zone="z1")
        await add_inventory(nc, admin, node, zone="z1", node_pool="p")
    settings = make_settings(deployed.remediator, kube_url=world.url, storm_threshold_pct=30, storm_min_unhealthy=3)
    service = await start_service(settings)
    try:
        for node in nodes[:5]:  # half the zone falls ill at once: a partition, not five broken machines
            await publish_diagnosis(nc, admin, diagnosis(node, ["cordon", "drain", "reboot"]))
        await wait_for_record(nc, admin, action="escalate", phase="succeeded")

        async def all_blocked() -> bool:
            records = await audit_records(nc, admin)
            return len({r.node for r in records if r.phase == "blocked"}) >= 3

        await wait_for(all_blocked, what="storm blocks")
    finally:
        await service.stop()
    records = await audit_records(nc, admin)
    escalations = [r for r in records if r.action == "escalate" and "storm" in r.reason]
    assert len({r.reason.split(":")[0] for r in escalations}) == len(escalations)  # once per storm domain
    blocked = [r for r in records if r.phase == "blocked"]
    assert all(any(c.name == "storm_guard" and not c.passed for c in r.checks) for r in blocked)
    # Fewer than the storm threshold can have started before the storm was visible, never all of them.
    assert len({r.node for r in records if r.phase == "started"}) < 3
    assert len(world.cordoned_nodes()) < 3
    assert deployed.violations() == []


async def test_a_storm_writes_its_key_once_not_at_every_step(deployed: Deployed, world: KubeWorld) -> None:
    """The 50,000-node demo's silence storm: every capacity step of every diagnosis wrote the control bucket for
        every failure domain with a sick node — a failed create per storm, a delete per calm domain (1.38 million writes
        for 4,036 diagnoses in `nodeheal bench remediator --storm 2000`), most of the remediator's and a good part of
        the server's CPU. A storm's key is written when it starts, once more when its escalation is recorded (and
    deleted when it ends), a calm domain's never;
        the storm guard decides as before."""
    nc, admin = deployed.nc, deployed.admin
    sick = [f"s{i}" for i in range(5)]
    for i in range(10):  # z1: half of it falls ill (a storm)
        world.add_node(f"s{i}", zone="z1")
        await add_inventory(nc, admin, f"s{i}", zone="z1", node_pool="p")
    for i in range(20):  # z2: one sick node of twenty (calm)
        world.add_node(f"c{i}", zone="z2")
        await add_inventory(nc, admin, f"c{i}", zone="z2", node_pool="p")
    roomy = {"max_count": 100, "max_pct": 100.0}  # only the storm guard may hold anything back here: on a loaded
    # machine s0 can be cordoned before the storm is counted, and the default cluster budget (5 % of 30) then
    # held c0's cordon back for the whole wait
    settings = make_settings(
        deployed.remediator,
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
            await publish_diagnosis(nc, admin, diagnosis(node, ["cordon", "drain", "reboot"]))
        await wait_for_record(nc, admin, action="escalate", phase="succeeded")
        await publish_diagnosis(nc, admin, diagnosis("c0", ["cordon"]))
        await wait_for_record(nc, admin, node="c0", action="cordon", phase="succeeded")
        await asyncio.sleep(2.0)  # the blocked ladders come back every 0.5 s (`retry_delay_s`): several steps each
    finally:
        await service.stop()
    records = await audit_records(nc, admin)
    blocked = {r.node for r in records if r.phase == "blocked"}
    assert len(blocked) >= 3
    assert all(any(c.name == "storm_guard" and not c.passed for c in r.checks) for r in records if r.phase == "blocked")
    bucket = f"{admin.bucket_prefix}-control"
    info = await nc.jetstream().stream_info(f"KV_{bucket}", subjects_filter=f"$KV.{bucket}.storm.>")
    writes = dict(info.state.subjects or {})
    # z2, the pool, the cluster: calm; z1's key written twice: created (escalated, not recorded yet), then marked
    # recorded once its AUDIT record was stored
    assert writes == {f"$KV.{bucket}.{storm_key('zone', 'z1')}": 2}, writes
    assert deployed.violations() == []


async def test_two_replicas_never_act_on_one_node_at_once(deployed: Deployed, world: KubeWorld, tmp_path: Path) -> None:
    """The node is served by the real agent code under its own credential; its kubelet's restart fails after
    0.5 s at the node's systemctl, which counts the restarts asked and how many ran at once."""
    nc, admin = deployed.nc, deployed.admin
    world.add_node("n1")
    tap = await CommandTap().watch(nc, "n1")
    async with serving_node(deployed, "n1", tmp_path, fail=True, slow_s=0.5) as (fake, agent):
        r1 = await start_service(
            make_settings(deployed.remediator, kube_url=world.url, instance="r1", verify_timeout_s=1)
        )
        r2 = await start_service(
            make_settings(deployed.remediator, kube_url=world.url, instance="r2", verify_timeout_s=1)
        )
        try:
            for _ in range(4):  # four diagnoses of the same node, spread over both replicas
                await publish_diagnosis(nc, admin, diagnosis("n1", [("restart_service", "kubelet")]))

            async def all_done() -> bool:
                records = await audit_records(nc, admin)
                return sum(1 for r in records if r.action == "escalate") >= 4

            await wait_for(all_done, timeout=40, what="four ladders finished")
        finally:
            await r1.stop()
            await r2.stop()
    assert len(tap.commands) == 4
    assert fake.restart_calls().count("begin kubelet.service") == 4  # asked at the node four times, all failed
    assert fake.restarts_logged() == []
    assert agent.executor.executed == 4 and agent.executor.fenced == 0
    assert fake.most_restarts_at_once() == 1  # one lease, one action at a time on the node
    revisions = [c.lease_revision or 0 for c in tap.commands]
    assert all(r > 0 for r in revisions)
    assert revisions == sorted(revisions)  # fencing tokens only grow
    assert deployed.violations() == []


async def test_killed_replica_work_is_picked_up_once(deployed: Deployed, world: KubeWorld, tmp_path: Path) -> None:
    """Replica A (a `python -m nodeheal.remediator` process under the remediator role's credential) is killed
    while the real agent restarts the kubelet (5 s at the node's systemctl): A never hears the answer. Replica B
    asks again with the same action id, gets the answer of the one restart, and verifies it on the agent's own
    probes: the restart runs once at the node."""
    nc, admin = deployed.nc, deployed.admin
    await short_leases(nc, admin)  # a dead holder ages out fast
    world.add_node("n1")
    await add_inventory(nc, admin, "n1")
    tap = await CommandTap().watch(nc, "n1")
    async with serving_node(deployed, "n1", tmp_path, slow_s=5) as (fake, agent):
        env = remediator_env(
            admin, INSTANCE="replica-a", ACK_WAIT_S="3", KUBE__API_URL=world.url, **deployed.remediator_env()
        )
        proc = subprocess.Popen([sys.executable, "-m", "nodeheal.remediator"], env=env)
        survivor = None
        try:
            await publish_diagnosis(nc, admin, diagnosis("n1", [("restart_service", "kubelet"), "escalate"]))

            async def restarting() -> bool:
                return "begin kubelet.service" in fake.restart_calls()

            # a bound: a process start under load is slow
            await wait_for(restarting, timeout=120, what="the restart under way at the node")
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
            settings = make_settings(deployed.remediator, kube_url=world.url, instance="replica-b")
            # the restart ends at the node after A's death: B waits for the agent's healthy probe that long
            survivor = await start_service(settings.model_copy(update={"verify_timeout_s": 30.0}))
            verified = await wait_for_record(nc, admin, phase="verified", timeout=40)
        finally:
            if proc.poll() is None:
                proc.kill()
            if survivor is not None:
                await survivor.stop()
    # picked up once, not twice: the started action was not repeated. B asks the node again with the same action
    # id (runner._resend) and the real agent answers it from the restart already under way; the stand-in
    # responder this test had never saw that ask (its callback was still sleeping in A's command), so it counted
    # one command and no `succeeded`
    assert len({c.action_id for c in tap.commands}) == 1 and len(tap.commands) == 2
    assert fake.restarts_logged() == ["kubelet.service"] and agent.executor.executed == 1  # at the node, once
    assert fake.restart_calls() == ["begin kubelet.service", "end kubelet.service"]
    assert verified.actor == "replica-b"
    records = await audit_records(nc, admin)
    assert [r.phase for r in records if r.action == "restart_service"] == ["intent", "started", "succeeded", "verified"]
    assert "re-sent with the same action id" in next(r.reason for r in records if r.phase == "succeeded")
    assert {r.actor for r in records if r.phase == "started"} == {"replica-a"}
    assert deployed.violations() == []


async def test_a_storm_elsewhere_does_not_end_the_ladder_that_noticed_it(
    deployed: Deployed, world: KubeWorld, tmp_path: Path
) -> None:
    """A storm's escalation is recorded under whichever diagnosis first met the storm at a capacity gate, a
    node of another failure domain too (its `target` is `storm:<kind>:<value>`). The 50,000-node demo: a
    machine-check machine's approved `replace` was held back once, and when its diagnosis came back, the
    storm escalation of another rack recorded under it was read as *its own* hand-over to a person: the ladder
    ended there and the machine was never replaced.

    c1 is served by the real agent code under its own credential: its kubelet's restart takes 8 s at the node's
    systemctl, and its probes verify it."""
    nc, admin = deployed.nc, deployed.admin
    for i in range(10):  # z1: half of it falls ill (a storm)
        world.add_node(f"s{i}", zone="z1")
        await add_inventory(nc, admin, f"s{i}", zone="z1", node_pool="p")
    for i in range(20):  # z2: calm; its budget lets one node be out at a time
        world.add_node(f"c{i}", zone="z2")
        await add_inventory(nc, admin, f"c{i}", zone="z2", node_pool="p")
    # c1's restart keeps z2's one slot taken for a while (the command's time raised to let it finish)
    async with serving_node(deployed, "c1", tmp_path, slow_s=8) as (fake, _agent):
        roomy = {"max_count": 100, "max_pct": 100.0}
        settings = make_settings(
            deployed.remediator,
            kube_url=world.url,
            storm_threshold_pct=30,
            storm_min_unhealthy=3,
            cluster_budget=roomy,
            zone_budget={"max_count": 1, "max_pct": 100.0},
            pool_budget=roomy,
            rack_budget=roomy,
            disruptive_per_minute=100,
        ).model_copy(update={"node_command_timeout_s": 15.0})
        service = await start_service(settings)
        try:
            await publish_diagnosis(nc, admin, diagnosis("c1", ["cordon", ("restart_service", "kubelet")]))
            await wait_for_record(nc, admin, node="c1", action="cordon", phase="succeeded")
            for i in range(5):  # sick, with nothing to do (no capacity gate meets the storm on their account)
                await publish_diagnosis(nc, admin, diagnosis(f"s{i}", ["none"]))
            # (a none-only diagnosis is recorded as nothing to repair; before, the planner escalated it)
            await wait_for_record(nc, admin, node="s4", action="none", phase="skipped")
            # c0 is the first to meet z1's storm at a capacity gate: the storm's escalation is recorded under c0's
            # diagnosis; then z2's budget (c1 is out) holds c0's cordon back, and the diagnosis comes back later
            await publish_diagnosis(nc, admin, diagnosis("c0", ["cordon", "drain"]))
            storm = await wait_for_record(nc, admin, node="c0", action="escalate", target="storm:zone:z1")
            await wait_for_record(nc, admin, node="c0", phase="blocked")
            # once c1 is given back (its restart verified on its probes, the node uncordoned) or handed over, its
            # slot is free: c0's ladder goes on where it was held
            await wait_for_record(nc, admin, node="c0", action="drain", phase="succeeded", timeout=30)
        finally:
            await service.stop()
    records = [r for r in await audit_records(nc, admin) if r.node == "c0"]
    own = [r for r in records if r.action == "escalate" and r.target != storm.target]
    assert [(r.action, r.phase) for r in records if r.action in ("cordon", "drain") and r.phase == "succeeded"] == [
        ("cordon", "succeeded"),
        ("drain", "succeeded"),
    ]
    assert all("ladder is exhausted" in r.reason for r in own), [r.reason for r in own]
    assert world.is_cordoned("c0")
    assert fake.restarts_logged() == ["kubelet.service"]  # c1's restart, at the node
    assert deployed.violations() == []
    assert deployed.violations() == []
