"""`nodeheal batch` (issue 16) end to end: nodes listed by label through the official client at kmock's
emulator, operator diagnoses submitted (under the `admin` credential an operator uses) to the real remediator
(under its role's credential) on a real nats-server with the deployed per-role authorization, reboots through the
real ECS SDK at the emulator, progress read back from AUDIT.

What a user would notice: a batch reboot of a labelled pool never disrupts more nodes at once than the
pool budget (counted at the emulators, not from nodeheal's own records), and an interrupted batch resumed
reboots every node exactly once."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import timedelta

import pytest
from click.testing import CliRunner
from nats.aio.client import Client

from nodeheal.cli.main import cli
from nodeheal.remediator.handlers import RemediatorService
from nodeheal.remediator.settings import Budget
from nodeheal.runtime.settings import NatsSettings
from nodeheal.schemas.audit import RemediationRecord
from nodeheal.sim.clock import SystemClock
from nodeheal.sim.ecs_api import EcsEmulator, EcsWorld
from nodeheal.sim.kube import KubeWorld
from tests.integration.remediator.harness import (
    CLUSTER,
    Deployed,
    add_inventory,
    audit_records,
    judge_budgets,
    make_settings,
    publish_probe,
    start_service,
    wait_for,
)

pytestmark = pytest.mark.nats

POOL = [f"p1-n{i}" for i in range(1, 7)]
OTHERS = ["p2-n1", "p2-n2", "p2-n3"]


@dataclass
class Fleet:
    world: KubeWorld
    ecs: EcsEmulator
    service: RemediatorService


async def _agents(nc: Client, nats: NatsSettings, ecs: EcsWorld, stop: asyncio.Event) -> None:
    """Every node's agent: healthy probes, a new boot id after each reboot, silent while it is down."""
    while not stop.is_set():
        for node in POOL + OTHERS:
            instance = ecs.instances.get(f"i-{node}")  # a replaced node's instance is released
            if instance is not None and instance.status == "Running":
                await publish_probe(nc, nats, node, boot_id=f"boot-{instance.boot_count}")
        await asyncio.sleep(0.2)


@pytest.fixture
async def fleet(deployed: Deployed) -> AsyncIterator[Fleet]:
    """The pools' nodes at both emulators and in the inventory; the remediator under its role's credential on the
    per-role server; admin stands in for the nodes' agents (their probes)."""
    nc, topology_ready = deployed.nc, deployed.admin
    ecs_world = EcsWorld(clock=SystemClock(), reboot_duration=timedelta(seconds=1))
    ecs_world.add_launch_template("lt-p2", node_pool="p2", region_id="cn-hangzhou")
    async with KubeWorld() as world, EcsEmulator(ecs_world, tick_interval_s=0.1) as ecs:
        for node in POOL + OTHERS:
            pool = node.split("-")[0]
            world.add_node(node, zone="z1", node_pool=pool)
            ecs_world.add_instance(f"i-{node}", region_id="cn-hangzhou")
            await add_inventory(
                nc, topology_ready, node, zone="z1", node_pool=pool, cloud="alibaba", instance_id=f"i-{node}"
            )
        settings = make_settings(
            deployed.remediator,
            kube_url=world.url,
            ecs_endpoint=ecs.endpoint,
            pool_budget=Budget(max_count=2),
            zone_budget=Budget(max_count=20),
            cluster_budget=Budget(max_count=20),
            disruptive_per_minute=100,
        )
        settings.cloud.alibaba_launch_templates = {"p2": "lt-p2"}
        service = await start_service(settings)
        stop = asyncio.Event()
        agents = asyncio.create_task(_agents(nc, topology_ready, ecs_world, stop))
        try:
            yield Fleet(world=world, ecs=ecs, service=service)
        finally:
            stop.set()
            await agents
            await service.stop()


def _args(deployed: Deployed, world: KubeWorld, *extra: str) -> list[str]:
    """The CLI as an operator runs it: the `admin` credential (docs/cli.md)."""
    nats = deployed.admin
    return [
        "batch",
        *extra,
        *deployed.cli_creds(),
        "--nats-url",
        nats.url,
        "--prefix",
        nats.prefix,
        "--stream-prefix",
        nats.stream_prefix,
        "--bucket-prefix",
        nats.bucket_prefix,
        "--cluster",
        CLUSTER,
        "--kube-url",
        world.url,
    ]


def _most_at_once(intervals: list[tuple[float, float]]) -> int:
    edges = sorted([(start, 1) for start, _ in intervals] + [(end, -1) for _, end in intervals])
    most = current = 0
    for _, step in edges:
        current += step
        most = max(most, current)
    return most


async def test_batch_reboot_of_a_pool_respects_the_pool_budget(deployed: Deployed, fleet: Fleet) -> None:
    args = _args(deployed, fleet.world, "reboot", "--selector", "nodeheal.io/node-pool=p1")
    result = await asyncio.to_thread(
        CliRunner().invoke, cli, [*args, "--max-parallel", "6", "--json", "--reason", "kernel upgrade"]
    )
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["summary"] == {"done": 6}
    assert sorted(report["nodes"]) == POOL  # the selector picked the pool, not the other nodes
    reboots = fleet.ecs.world.calls_to("RebootInstance")
    assert sorted(c.params["InstanceId"] for c in reboots) == [f"i-{n}" for n in POOL]
    # at the ECS emulator: machines down (reboot started → back up) at once, never above the pool budget
    down: dict[str, float] = {}
    rebooting: list[tuple[float, float]] = []
    for change in fleet.ecs.world.changes:
        if change.kind == "instance_down":
            down[change.instance_id] = change.at.timestamp()
        elif change.kind == "instance_up":
            rebooting.append((down.pop(change.instance_id), change.at.timestamp()))
    assert len(rebooting) == 6 and _most_at_once(rebooting) <= 2
    # at the Kubernetes emulator: nodes taken out (cordoned) at once — the budget's own unit
    cordoned: dict[str, float] = {}
    out: list[tuple[float, float]] = []
    for at, node, effect in fleet.world.effects:
        if effect == "cordon":
            cordoned[node] = at
        elif effect == "uncordon":
            out.append((cordoned.pop(node), at))
    assert cordoned == {} and len(out) == 6  # every node given back
    assert _most_at_once(out) == 2  # in parallel, up to the budget and not beyond
    assert deployed.violations() == []


async def test_batch_cordon_hands_each_node_to_the_operator(deployed: Deployed, fleet: Fleet) -> None:
    """`nodeheal batch cordon` of a 6-node pool whose budget is 2: every node ends cordoned as asked (the
    batch does not stall behind its own cordons), and each node's trail says it is the operator's now — the
    hand-over record every release of a still-cordoned node carries. Before, the slots went back without
    one, and the demo's referee (cordoned at the emulator, minus handed over) counted 6 nodes nodeheal held
    in a pool whose budget is 2."""
    nc, topology_ready = deployed.nc, deployed.admin
    args = _args(deployed, fleet.world, "cordon", "--selector", "nodeheal.io/node-pool=p1")
    result = await asyncio.to_thread(CliRunner().invoke, cli, [*args, "--max-parallel", "6", "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["summary"] == {"done": 6}
    assert fleet.world.cordoned_nodes() == POOL
    records: list[RemediationRecord] = []
    handed: dict[str, str] = {}

    async def all_handed() -> bool:  # the batch is done at each cordon; its hand-over is recorded right after
        records[:] = await audit_records(nc, topology_ready)
        handed.update({r.node: r.reason for r in records if r.action == "escalate" and r.phase == "succeeded"})
        return len(handed) == len(POOL)

    await wait_for(all_handed, timeout=10, what="every node's hand-over to the operator")
    assert all(why.startswith("handed to the operator who asked") for why in handed.values())
    judged = judge_budgets(fleet.world, records, pools={node: "p1" for node in POOL}, limit=2)
    assert judged["budget_exceedances"] == 0, judged
    assert judged["handed_to_people"]["by_pool_at_end"] == {"p1": 6}
    ledger = fleet.service.remediator.ledger  # type: ignore[union-attr]

    async def no_slot_held() -> bool:  # the slot goes back right after the hand-over's record (recorded first)
        slots, _, _ = await ledger.read()
        return slots == []

    await wait_for(no_slot_held, timeout=10, what="every budget slot given back after its hand-over")
    assert deployed.violations() == []


async def test_an_interrupted_batch_resumes_and_reboots_every_node_once(deployed: Deployed, fleet: Fleet) -> None:
    nc, topology_ready = deployed.nc, deployed.admin
    args = _args(deployed, fleet.world, "reboot", "--selector", "nodeheal.io/node-pool=p2")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("NODEHEAL_", "NATS_"))}
    proc = subprocess.Popen(
        [sys.executable, "-m", "nodeheal.cli.main", *args, "--max-parallel", "1"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        await fleet.ecs.wait_for_call("RebootInstance", timeout_s=60)
    finally:
        proc.send_signal(signal.SIGINT)  # Ctrl-C while the first node reboots
        _, stderr = await asyncio.to_thread(proc.communicate, timeout=30)
    assert proc.returncode == 130, stderr.decode()
    match = re.search(r"--resume (b-[0-9A-Z]{26})", stderr.decode())
    assert match is not None, stderr.decode()
    assert [c.params["InstanceId"] for c in fleet.ecs.world.calls_to("RebootInstance")] == ["i-p2-n1"]

    result = await asyncio.to_thread(
        CliRunner().invoke, cli, [*args, "--max-parallel", "2", "--resume", match.group(1), "--json"]
    )
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["summary"] == {"done": 3}
    rebooted = sorted(c.params["InstanceId"] for c in fleet.ecs.world.calls_to("RebootInstance"))
    assert rebooted == [f"i-{n}" for n in OTHERS]  # every node exactly once: the one under way was not resubmitted
    episodes = {r.episode_id for r in await audit_records(nc, topology_ready) if r.action == "reboot"}
    assert len(episodes) == 3 and all(e and e.startswith(f"batch:{match.group(1)}:reboot:") for e in episodes)
    assert deployed.violations() == []


async def test_batch_replace_waits_for_a_persons_approval_of_each_node(deployed: Deployed, fleet: Fleet) -> None:
    nc, topology_ready = deployed.nc, deployed.admin
    args = _args(deployed, fleet.world, "replace", "--selector", "nodeheal.io/node-pool=p2")
    batch = asyncio.create_task(asyncio.to_thread(CliRunner().invoke, cli, [*args, "--max-parallel", "3", "--json"]))
    # each node's replace waits for a person; a retired node keeps its pool slot until replaced, so with a pool
    # budget of 2 the third node's turn comes after an approval: approve them as they come
    approved: dict[str, str] = {}
    for _ in range(600):
        records = await audit_records(nc, topology_ready)
        waiting = {r.node: r.action_id for r in records if r.action == "replace" and r.phase == "awaiting_approval"}
        for node, action_id in waiting.items():
            if node in approved:
                continue
            if not approved:  # nothing is released before a person approves
                assert fleet.ecs.world.calls_to("DeleteInstance") == []
            approve = ["approve", action_id, "--nats-url", topology_ready.url, "--by", "alice", *deployed.cli_creds()]
            approve += ["--bucket-prefix", topology_ready.bucket_prefix]
            approve += ["--prefix", topology_ready.prefix, "--stream-prefix", topology_ready.stream_prefix]
            done = await asyncio.to_thread(CliRunner().invoke, cli, approve)
            assert done.exit_code == 0, done.output
            approved[node] = action_id
        if len(approved) == 3:
            break
        await asyncio.sleep(0.2)
    assert sorted(approved) == OTHERS
    result = await asyncio.wait_for(batch, timeout=60)
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["summary"] == {"done": 3}
    for node, action_id in approved.items():  # each waiting node was announced with its approve command
        assert f"{node}: waiting for approval" in result.stderr and f"nodeheal approve {action_id}" in result.stderr
    released = sorted(c.params["InstanceId"] for c in fleet.ecs.world.calls_to("DeleteInstance"))
    assert released == [f"i-{n}" for n in OTHERS]
    runs = fleet.ecs.world.calls_to("RunInstances")
    assert len(runs) == 3 and {c.params["LaunchTemplateId"] for c in runs} == {"lt-p2"}
    assert len({c.params["ClientToken"] for c in runs}) == 3  # one machine per node, never twice
    assert all("nodeheal.io/retired" in fleet.world.node(n)["metadata"]["labels"] for n in OTHERS)
    assert deployed.violations() == []


async def test_dry_run_lists_the_nodes_and_submits_nothing(deployed: Deployed) -> None:
    nc, topology_ready = deployed.nc, deployed.admin
    async with KubeWorld() as world:
        for node in POOL + OTHERS:
            world.add_node(node, zone="z1", node_pool=node.split("-")[0])
        args = _args(deployed, world, "retire", "--selector", "nodeheal.io/node-pool=p2", "--dry-run")
        result = await asyncio.to_thread(CliRunner().invoke, cli, [*args, "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout) == {
        "action": "retire",
        "selector": "nodeheal.io/node-pool=p2",
        "ladder": ["cordon", "drain", "retire"],
        "nodes": OTHERS,
    }
    info = await nc.jetstream().stream_info(f"{topology_ready.stream_prefix}DIAGNOSES")
    assert info.state.messages == 0
    assert deployed.violations() == []
