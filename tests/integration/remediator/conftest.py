"""The remediator tests' shared parts: the Kubernetes emulator (KubeWorld over HTTP) and the ECS emulator
driven through the real SDK, each fresh for every test (the tests count the side effects at them)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path

import pytest

from nodeheal.sim.clock import ManualClock
from nodeheal.sim.ecs_api import EcsEmulator, EcsWorld
from nodeheal.sim.kube import KubeWorld
from tests.integration.deploy.natsauth_loader import per_role_server
from tests.integration.remediator.harness import Deployed

FLEET = tuple(f"n{i}" for i in range(1, 7))
"""The nodes `world` and `ecs` start with: n1..n6 in zone z1, ECS instances i-n1..i-n6."""


@pytest.fixture
async def bare_world() -> AsyncIterator[KubeWorld]:
    """A Kubernetes emulator with no node: the test adds what it needs."""
    async with KubeWorld() as w:
        yield w


@pytest.fixture
async def world(bare_world: KubeWorld) -> KubeWorld:
    for node in FLEET:
        bare_world.add_node(node, zone="z1")
    return bare_world


@pytest.fixture
async def ecs() -> AsyncIterator[EcsEmulator]:
    """The ECS emulator on a clock that never moves by itself, instances i-n1..i-n6."""
    ecs_world = EcsWorld(clock=ManualClock(), reboot_duration=timedelta(seconds=1))
    for node in FLEET:
        ecs_world.add_instance(f"i-{node}", region_id="cn-hangzhou")
    async with EcsEmulator(ecs_world) as emu:
        yield emu


@pytest.fixture
async def deployed(tmp_path: Path) -> AsyncIterator[Deployed]:
    """A nats-server of its own for the test, with the deployed per-role authorization and the topology applied
    (its log and credentials in tmp_path/nats); see `Deployed`."""
    directory = tmp_path / "nats"
    directory.mkdir()
    async with per_role_server(directory, "remediator") as (server, nc, admin):
        yield Deployed(directory, server.url, nc, admin)
