"""Issue 14: the remediator process SIGKILLed at its deterministic hook points (between intent and action,
between action and result), restarted as Kubernetes would: the cloud reboot happens at most once (counted
at the ECS emulator) and the ladder completes (verified with the node's new boot id)."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import AsyncIterator
from datetime import timedelta

import pytest
from nats.aio.client import Client
from nats.js.api import KeyValueConfig

from nodeheal.runtime.settings import NatsSettings
from nodeheal.sim.clock import ManualClock
from nodeheal.sim.ecs_api import EcsEmulator, EcsWorld
from nodeheal.sim.kube import KubeWorld
from tests.integration.remediator.harness import (
    add_inventory,
    audit_records,
    diagnosis,
    publish_diagnosis,
    publish_probe,
    wait_for_record,
)

pytestmark = pytest.mark.nats


@pytest.fixture
async def ecs() -> AsyncIterator[EcsEmulator]:
    ecs_world = EcsWorld(clock=ManualClock(), reboot_duration=timedelta(seconds=1))
    ecs_world.add_instance("i-k1", region_id="cn-hangzhou")
    async with EcsEmulator(ecs_world) as emu:
        yield emu


def _remediator(nats: NatsSettings, kube_url: str, ecs: EcsEmulator, *, kill_at: str | None) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("NODEHEAL_")}
    env.update(
        {
            "NODEHEAL_REMEDIATOR_NATS__URL": nats.url,
            "NODEHEAL_REMEDIATOR_NATS__PREFIX": nats.prefix,
            "NODEHEAL_REMEDIATOR_NATS__STREAM_PREFIX": nats.stream_prefix,
            "NODEHEAL_REMEDIATOR_NATS__BUCKET_PREFIX": nats.bucket_prefix,
            "NODEHEAL_REMEDIATOR_CLUSTER": "c1",
            "NODEHEAL_REMEDIATOR_INSTANCE": "replica-killed" if kill_at else "replica-restarted",
            "NODEHEAL_REMEDIATOR_HTTP_PORT": "0",
            "NODEHEAL_REMEDIATOR_ACK_WAIT_S": "3",
            "NODEHEAL_REMEDIATOR_RETRY_DELAY_S": "0.5",
            "NODEHEAL_REMEDIATOR_VERIFY_TIMEOUT_S": "20",
            "NODEHEAL_REMEDIATOR_VERIFY_POLL_S": "0.2",
            "NODEHEAL_REMEDIATOR_KUBE__API_URL": kube_url,
            "NODEHEAL_REMEDIATOR_CLOUD__PROVIDER": "alibaba",
            "NODEHEAL_REMEDIATOR_CLOUD__ALIBABA_ENDPOINT": ecs.endpoint,
            "NODEHEAL_REMEDIATOR_CLOUD__ALIBABA_PROTOCOL": "http",
            "NODEHEAL_REMEDIATOR_CLOUD__ALIBABA_ACCESS_KEY_ID": "sim-access-key-id",
            "NODEHEAL_REMEDIATOR_CLOUD__ALIBABA_ACCESS_KEY_SECRET": "sim-secret",
        }
    )
    if kill_at:
        env["NODEHEAL_TEST_KILL_AT"] = kill_at
    return subprocess.Popen([sys.executable, "-m", "nodeheal.remediator"], env=env)


@pytest.mark.parametrize("kill_at", ["between_intent_and_action", "between_action_and_result"])
async def test_sigkill_at_a_hook_point_then_restart_reboots_once_and_completes(
    topology_ready: NatsSettings, nc: Client, ecs: EcsEmulator, kill_at: str
) -> None:
    js = nc.jetstream()
    leases = f"{topology_ready.bucket_prefix}-leases"
    await js.delete_key_value(leases)
    await js.create_key_value(KeyValueConfig(bucket=leases, ttl=2.0, history=1))  # a dead holder ages out fast
    node = f"k1-{kill_at[:10]}"
    await add_inventory(nc, topology_ready, node, zone="z1", cloud="alibaba", instance_id="i-k1")
    boot = {"id": "boot-1"}
    stop = asyncio.Event()

    async def agent() -> None:
        while not stop.is_set():
            await publish_probe(nc, topology_ready, node, boot_id=boot["id"])
            await asyncio.sleep(0.2)

    async with KubeWorld() as world:
        world.add_node(node, zone="z1")
        probes = asyncio.create_task(agent())
        first = _remediator(topology_ready, world.url, ecs, kill_at=kill_at)
        second: subprocess.Popen[bytes] | None = None
        try:
            await publish_diagnosis(nc, topology_ready, diagnosis(node, ["reboot"]))
            code = await asyncio.to_thread(first.wait, 60)
            assert code == -9  # it really died at the hook point
            calls = [c for c in ecs.calls if c.action == "RebootInstance"]
            assert len(calls) == (1 if kill_at == "between_action_and_result" else 0)
            if calls:
                boot["id"] = "boot-2"  # the reboot that happened brings the node back with a new boot id
            second = _remediator(topology_ready, world.url, ecs, kill_at=None)
            if not calls:
                await asyncio.wait_for(ecs.wait_for_call("RebootInstance", timeout_s=60), timeout=70)
                boot["id"] = "boot-2"
            verified = await wait_for_record(nc, topology_ready, node=node, phase="verified", timeout=60)
        finally:
            stop.set()
            await probes
            for proc in (first, second):
                if proc is not None and proc.poll() is None:
                    proc.terminate()
                    await asyncio.to_thread(proc.wait, 10)
    assert len([c for c in ecs.calls if c.action == "RebootInstance"]) == 1  # at most once, and it happened
    assert verified.actor == "replica-restarted" and verified.boot_id == "boot-2"
    phases = [r.phase for r in await audit_records(nc, topology_ready) if r.node == node and r.action == "reboot"]
    assert phases.count("started") == 1
