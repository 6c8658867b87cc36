"""Machine rotation (issue 16): retire labels and taints a drained node (read back through the official
client), replace waits for `nodeheal approve` and then releases and recreates the instance through the
real ECS SDK at the emulator (counted there), and a node that spent its repair budget is retired. On a real
nats-server with the deployed per-role authorization: the remediator under its role's credential and inbox,
`nodeheal approve` under the `admin` credential an operator uses, `nodeheal fleet` under `reader`."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from click.testing import CliRunner
from kubernetes.aio import client

from nodeheal.cli.main import cli
from nodeheal.remediator.actions import ActionOutcome
from nodeheal.remediator.actions.kube import KubeActions
from nodeheal.schemas.ids import new_id
from nodeheal.sim.clock import ManualClock
from nodeheal.sim.ecs_api import EcsEmulator, EcsWorld
from nodeheal.sim.kube import KubeWorld
from tests.integration.remediator.harness import (
    CommandTap,
    Deployed,
    add_inventory,
    audit_records,
    make_settings,
    mce_crash,
    publish_diagnosis,
    serving_node,
    start_service,
    wait_for,
    wait_for_record,
)

pytestmark = pytest.mark.nats


@pytest.fixture
async def world() -> AsyncIterator[KubeWorld]:
    async with KubeWorld() as w:
        for name in ("r1", "r2", "r3", "spare"):
            w.add_node(name, zone="z1", node_pool="p1")
        w.add_pod("web-1", node="r1", labels={"app": "web"}, owner_kind="ReplicaSet")
        yield w


@pytest.fixture
async def ecs() -> AsyncIterator[EcsEmulator]:
    ecs_world = EcsWorld(clock=ManualClock(), reboot_duration=timedelta(seconds=1))
    for name in ("r1", "r2", "r3"):
        ecs_world.add_instance(f"i-{name}", region_id="cn-hangzhou")
    ecs_world.add_launch_template("lt-p1", node_pool="p1", region_id="cn-hangzhou", versions=(1, 2))
    async with EcsEmulator(ecs_world) as emu:
        yield emu


async def _read_node(url: str, name: str) -> client.V1Node:
    api = client.ApiClient(client.Configuration(host=url))
    try:
        return await client.CoreV1Api(api).read_node(name)
    finally:
        await api.close()  # type: ignore[no-untyped-call]


async def test_retire_drains_labels_and_taints_the_node(deployed: Deployed, world: KubeWorld) -> None:
    nc, topology_ready = deployed.nc, deployed.admin
    await add_inventory(nc, topology_ready, "r1", zone="z1", node_pool="p1", cloud="alibaba", instance_id="i-r1")
    service = await start_service(make_settings(deployed.remediator, kube_url=world.url))
    try:
        await publish_diagnosis(nc, topology_ready, mce_crash("r1", ["cordon", "drain", "retire"]))
        await wait_for_record(nc, topology_ready, action="retire", phase="succeeded")
        # a later fault of the retired machine is not repaired again
        await publish_diagnosis(nc, topology_ready, mce_crash("r1", ["reboot"]))
        again = await wait_for_record(nc, topology_ready, action="none", phase="skipped")
        await asyncio.sleep(0.5)  # whatever the ladders would do next has time to show
    finally:
        await service.stop()
    node = await _read_node(world.url, "r1")
    assert node.metadata.labels["nodeheal.io/retired"] == "mce_fatal_panic"
    assert node.spec.unschedulable is True
    retired = [t for t in node.spec.taints or [] if t.key == "nodeheal.io/retired"]
    assert [(t.effect, t.value) for t in retired] == [("NoSchedule", "mce_fatal_panic")]
    assert world.pods_on("r1") == []  # drained first, through the Eviction API
    trail = [(r.action, r.phase) for r in await audit_records(nc, topology_ready)]
    assert trail[-4:] == [("retire", "intent"), ("retire", "started"), ("retire", "succeeded"), ("none", "skipped")]
    assert ("escalate", "succeeded") not in trail  # retired is the end of the ladder, not a page
    assert "was retired" in again.reason and not [a for a, _ in trail if a == "reboot"]
    assert deployed.violations() == []


async def test_replace_waits_for_approval_then_releases_and_recreates(
    deployed: Deployed, world: KubeWorld, ecs: EcsEmulator
) -> None:
    nc, topology_ready = deployed.nc, deployed.admin
    await add_inventory(nc, topology_ready, "r2", zone="z1", node_pool="p1", cloud="alibaba", instance_id="i-r2")
    settings = make_settings(deployed.remediator, kube_url=world.url, ecs_endpoint=ecs.endpoint)
    settings.cloud.alibaba_launch_templates = {"p1": "lt-p1:2"}
    service = await start_service(settings)
    try:
        await publish_diagnosis(nc, topology_ready, mce_crash("r2", ["cordon", "drain", "retire", "replace"]))
        waiting = await wait_for_record(nc, topology_ready, action="replace", phase="awaiting_approval")
        await asyncio.sleep(1.0)
        assert ecs.world.calls_to("DeleteInstance") == [] and ecs.world.calls_to("RunInstances") == []
        # retired and still cordoned while it waits: it keeps its budget slot (the referee counts it out)
        assert await service.remediator.ledger.slot_of("r2") is not None
        assert "i-r2" in ecs.world.instances
        args = ["approve", waiting.action_id, "--nats-url", topology_ready.url, "--by", "alice", *deployed.cli_creds()]
        args += ["--bucket-prefix", topology_ready.bucket_prefix]
        args += ["--prefix", topology_ready.prefix, "--stream-prefix", topology_ready.stream_prefix]
        result = await asyncio.to_thread(CliRunner().invoke, cli, args, catch_exceptions=False)
        assert result.exit_code == 0, result.output
        done = await wait_for_record(nc, topology_ready, action="replace", phase="succeeded")
        ledger = service.remediator.ledger

        async def slot_back() -> bool:  # released and recreated: the slot is back (just after the record)
            return await ledger.slot_of("r2") is None

        await wait_for(slot_back, timeout=10.0, what="r2's slot given back after the replacement")
    finally:
        await service.stop()
    deletes = ecs.world.calls_to("DeleteInstance")
    runs = ecs.world.calls_to("RunInstances")
    assert [(c.params["InstanceId"], c.params["Force"].lower(), c.http_status) for c in deletes] == [
        ("i-r2", "true", 200)
    ]
    assert [(c.params["LaunchTemplateId"], c.params["LaunchTemplateVersion"]) for c in runs] == [("lt-p1", "2")]
    assert "i-r2" not in ecs.world.instances and "i-r2" in ecs.world.released
    (created,) = ecs.world.created
    assert created.instance_id in ecs.world.instances and created.template_id == "lt-p1" and created.version == 2
    assert created.instance_id in done.reason and "i-r2" in done.reason
    replace = [r for r in await audit_records(nc, topology_ready) if r.action == "replace"]
    assert [r.phase for r in replace] == ["awaiting_approval", "intent", "started", "succeeded"]
    assert any(c.name == "approval" and "alice" in c.detail for c in replace[1].checks)
    # the fleet report counts the rotated machine
    args = ["fleet", "--json", "--since", "1h", "--nats-url", topology_ready.url, "--prefix", topology_ready.prefix]
    args += deployed.cli_creds("reader")  # a read-only command: the reader credential (docs/cli.md)
    args += ["--stream-prefix", topology_ready.stream_prefix, "--bucket-prefix", topology_ready.bucket_prefix]
    result = await asyncio.to_thread(CliRunner().invoke, cli, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert (report["rotated"], report["retired"], report["replaced"]) == (1, 1, 1)
    assert deployed.violations() == []


async def test_a_node_that_spent_its_repair_budget_is_retired(
    deployed: Deployed, world: KubeWorld, ecs: EcsEmulator, tmp_path: Path
) -> None:
    """As deployed: the remediator under its role's credential and inbox on the per-role server, the node served
    by the real agent code under its own minted credential (nothing is asked of it: counted at the tap and its
    systemctl); no permission violation logged."""
    nc, admin = deployed.nc, deployed.admin
    tap = await CommandTap().watch(nc, "r3")
    await add_inventory(nc, admin, "r3", zone="z1", node_pool="p1", cloud="alibaba", instance_id="i-r3")
    settings = make_settings(
        deployed.remediator,
        kube_url=world.url,
        ecs_endpoint=ecs.endpoint,
        node_repair_budget=0,
        approval_timeout_s=1.0,
    )
    async with serving_node(deployed, "r3", tmp_path) as (fake, _agent):
        service = await start_service(settings)
        try:
            await publish_diagnosis(nc, admin, mce_crash("r3", ["reboot"]))
            await wait_for_record(nc, admin, action="escalate", phase="succeeded")
        finally:
            await service.stop()
    assert tap.commands == [] and fake.restart_calls() == []
    trail = [(r.action, r.phase) for r in await audit_records(nc, admin)]
    assert trail[0] == ("reboot", "blocked")
    assert ("retire", "succeeded") in trail
    assert ("replace", "awaiting_approval") in trail and ("replace", "started") not in trail
    node = await _read_node(world.url, "r3")
    assert "nodeheal.io/retired" in node.metadata.labels
    assert ecs.world.calls == []  # no reboot beyond the budget, no replacement without approval
    assert deployed.violations() == []


async def test_a_retired_machine_that_answers_again_is_still_replaced_and_never_uncordoned(
    deployed: Deployed, world: KubeWorld, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A machine that crashed on failing hardware comes back by its own reboot, and the diagnoser ends the
    episode once it is retired: neither is a recovery that stops the rotation (seen in a 300-node demo:
    `replace skipped: node recovered` right after the retire, then the retired node uncordoned as "verified
    healthy")."""
    nc, topology_ready = deployed.nc, deployed.admin
    await add_inventory(nc, topology_ready, "spare", zone="z1", node_pool="p1", cloud="alibaba", instance_id="i-s")
    crash = mce_crash("spare", ["cordon", "drain", "retire", "replace"])
    service = await start_service(make_settings(deployed.remediator, kube_url=world.url, approval_timeout_s=2.0))
    real_retire = KubeActions.retire

    async def retire_then_resolved(self: KubeActions, node: str, *, reason: str) -> ActionOutcome:
        outcome = await real_retire(self, node, reason=reason)
        # the diagnoser's answer to the retire: the episode resolved (the node answers again)
        healthy = crash.model_copy(
            update={"id": f"diag-{new_id()}", "resolved": True, "recommended": (), "identified_at": datetime.now(UTC)}
        )
        await publish_diagnosis(nc, topology_ready, healthy)
        for _ in range(100):  # until the remediator has seen it
            if service.view.recovered_at.get(node):
                break
            await asyncio.sleep(0.05)
        return outcome

    monkeypatch.setattr(KubeActions, "retire", retire_then_resolved)
    try:
        await publish_diagnosis(nc, topology_ready, crash)
        await wait_for_record(nc, topology_ready, action="replace", phase="awaiting_approval")
        await wait_for_record(nc, topology_ready, action="escalate", phase="succeeded")  # nobody approved
        await asyncio.sleep(1.0)  # the resolved diagnosis is settled now too
    finally:
        await service.stop()
    assert service.view.recovered_at.get("spare") is not None
    trail = [(r.action, r.phase, r.reason) for r in await audit_records(nc, topology_ready)]
    assert ("retire", "succeeded") in [(a, p) for a, p, _ in trail]
    assert not [t for t in trail if t[1] == "skipped" and "recovered" in t[2]], trail
    assert not [t for t in trail if t[0] == "uncordon"], trail
    node = await _read_node(world.url, "spare")
    assert node.spec.unschedulable is True and node.metadata.labels["nodeheal.io/retired"] == "mce_fatal_panic"
    assert deployed.violations() == []


async def test_a_rotation_blocked_after_the_retire_is_not_refused_when_redelivered(
    deployed: Deployed, world: KubeWorld
) -> None:
    """The replace of a retired machine blocked by the disruption rate is retried by redelivery; by then the
    diagnoser has ended the episode (resolved at the retire): the redelivered diagnosis is not refused as
    "recovered" (seen in a 300-node demo: the replacement never came)."""
    nc, topology_ready = deployed.nc, deployed.admin
    await add_inventory(nc, topology_ready, "r2", zone="z1", node_pool="p1", cloud="alibaba", instance_id="i-r2")
    crash = mce_crash("r2", ["retire", "replace"])  # r2 runs no pod: retired without a drain
    settings = make_settings(deployed.remediator, kube_url=world.url, disruptive_per_minute=1)
    service = await start_service(settings)
    try:
        await publish_diagnosis(nc, topology_ready, crash)
        waiting = await wait_for_record(nc, topology_ready, action="replace", phase="awaiting_approval", timeout=60)
        healthy = crash.model_copy(
            update={"id": f"diag-{new_id()}", "resolved": True, "recommended": (), "identified_at": datetime.now(UTC)}
        )
        await publish_diagnosis(nc, topology_ready, healthy)  # the diagnoser's answer to the retire
        approve = [
            "approve",
            waiting.action_id,
            "--nats-url",
            topology_ready.url,
            "--by",
            "alice",
            *deployed.cli_creds(),
        ]
        approve += ["--bucket-prefix", topology_ready.bucket_prefix]
        approve += ["--prefix", topology_ready.prefix, "--stream-prefix", topology_ready.stream_prefix]
        result = await asyncio.to_thread(CliRunner().invoke, cli, approve, catch_exceptions=False)
        assert result.exit_code == 0, result.output
        await wait_for_record(nc, topology_ready, action="replace", phase="blocked", timeout=30)  # the rate
        await asyncio.sleep(3.0)  # several redeliveries (retry delay 0.5 s)
    finally:
        await service.stop()
    trail = [(r.action, r.phase, r.reason) for r in await audit_records(nc, topology_ready)]
    assert not [t for t in trail if t[1] == "skipped" and "recovered" in t[2]], trail
    assert not [t for t in trail if t[0] == "uncordon"], trail
    assert deployed.violations() == []


async def test_a_resolved_diagnosis_does_not_settle_a_machine_being_rotated_out(
    deployed: Deployed, world: KubeWorld
) -> None:
    """A cordoned, retired machine waiting for the approval of its replace: the diagnoser's resolved
    diagnosis (its answer to the retire) must not settle the episode as "verified healthy" and so end the
    rotation (seen in a 300-node demo: `none verified` between a blocked replace and its redelivery, then the
    approved replace skipped — never done)."""
    nc, topology_ready = deployed.nc, deployed.admin
    await add_inventory(nc, topology_ready, "r3", zone="z1", node_pool="p1", cloud="alibaba", instance_id="i-r3")
    crash = mce_crash("r3", ["cordon", "retire", "replace"])
    settings = make_settings(deployed.remediator, kube_url=world.url, disruptive_per_minute=1)
    service = await start_service(settings)
    try:
        await publish_diagnosis(nc, topology_ready, crash)
        waiting = await wait_for_record(nc, topology_ready, action="replace", phase="awaiting_approval", timeout=60)
        approve = [
            "approve",
            waiting.action_id,
            "--nats-url",
            topology_ready.url,
            "--by",
            "alice",
            *deployed.cli_creds(),
        ]
        approve += ["--bucket-prefix", topology_ready.bucket_prefix]
        approve += ["--prefix", topology_ready.prefix, "--stream-prefix", topology_ready.stream_prefix]
        result = await asyncio.to_thread(CliRunner().invoke, cli, approve, catch_exceptions=False)
        assert result.exit_code == 0, result.output
        # approved, then held by the disruption rate: the ladder gives its lease back until the redelivery
        await wait_for_record(nc, topology_ready, action="replace", phase="blocked", timeout=30)
        healthy = crash.model_copy(
            update={"id": f"diag-{new_id()}", "resolved": True, "recommended": (), "identified_at": datetime.now(UTC)}
        )
        await publish_diagnosis(nc, topology_ready, healthy)  # the diagnoser's answer to the retire
        await asyncio.sleep(3.0)
    finally:
        await service.stop()
    trail = [(r.action, r.phase, r.reason) for r in await audit_records(nc, topology_ready)]
    assert not [t for t in trail if t[0] == "none" and t[1] == "verified"], trail
    assert not [t for t in trail if t[0] == "uncordon"], trail
    node = await _read_node(world.url, "r3")
    assert node.spec.unschedulable is True and node.metadata.labels["nodeheal.io/retired"]
    assert deployed.violations() == []
