"""The node agent's crash report through a real nats-server (independent of the qemu tier): a node
root with the pstore records a real kernel wrote, an agent process on the boot that crashed, a new one
on the next boot; the report is stored once in CRASHES however often the agent probes or restarts."""

from __future__ import annotations

from pathlib import Path

import pytest
from nats.aio.client import Client

from nodeheal.agent.app import NodeAgent
from nodeheal.agent.settings import AgentSettings, CleanSettings, CrashSettings
from nodeheal.runtime.settings import NatsSettings
from nodeheal.schemas.crash import CrashReport
from tests.integration.deploy.natsauth_loader import agent_nats, per_role_server, violations
from tests.unit.cloud_events.agent_fakenode import FakeNode, make_fake_node

pytestmark = pytest.mark.nats

DATA = Path(__file__).resolve().parents[2] / "data" / "kernel"
CRASHED = "6a1d2c3b-4e5f-4a6b-8c7d-9e0f1a2b3c4d"
NEXT = "7b2e3d4c-5f60-4b7c-9d8e-0f1a2b3c4d5e"


def agent(nats: NatsSettings, node: FakeNode, state: Path) -> NodeAgent:
    return NodeAgent(
        AgentSettings(
            nats=nats,
            cluster="prod-1",
            node_name="cn-hangzhou.10.0.0.9",
            host_root=node.root,
            services=[],
            systemctl_command=[node.systemctl],
            state_dir=state,
            clean=CleanSettings(allowed_dirs=["/var/log/pods"], image_prune_command=[]),
            crash=CrashSettings(journal=False),  # the fake node has no journal of its own
        )
    )


async def test_a_crashed_boot_is_reported_once(tmp_path: Path) -> None:
    directory = tmp_path / "nats"
    directory.mkdir()
    async with per_role_server(directory, nodes=(("prod-1", "cn-hangzhou.10.0.0.9"),)) as (server, nc, settings):
        # the agent under the node's own credential, as deploy/base/agent.yaml runs it; the test reads as admin
        await _reported_once(
            agent_nats(directory, server.url, "prod-1", "cn-hangzhou.10.0.0.9"), nc, settings, tmp_path
        )
    assert violations(directory) == []


async def _reported_once(
    agent_settings: NatsSettings, nc: Client, topology_ready: NatsSettings, tmp_path: Path
) -> None:
    node = make_fake_node(tmp_path)
    state = tmp_path / "state"
    node.write("/proc/sys/kernel/random/boot_id", CRASHED + "\n")
    before = agent(agent_settings, node, state)
    await before.start()
    await before.probe_once()
    assert before.nc is not None
    await before.nc.close()  # the kernel died: no orderly stop

    node.write("/proc/sys/kernel/random/boot_id", NEXT + "\n")
    for name in ("dmesg-ramoops-0", "dmesg-ramoops-1"):
        (node.root / "sys/fs/pstore").mkdir(parents=True, exist_ok=True)
        (node.root / "sys/fs/pstore" / name).write_bytes((DATA / "null-2/pstore" / name).read_bytes())
    for _ in range(2):  # a new process after the reboot, then a restart of the agent within the boot
        after = agent(agent_settings, node, state)
        await after.start()
        await after.probe_once()
        await after.probe_once()
        await after.stop()

    js = nc.jetstream()
    stream = topology_ready.topology().stream(f"{topology_ready.stream_prefix}CRASHES").name
    info = await js.stream_info(stream)
    assert info.state.messages == 1
    msg = await js.get_msg(stream, info.state.last_seq)
    report = CrashReport.model_validate_json(msg.data or b"")
    assert (report.node, report.boot_id, report.previous_boot_id, report.unexpected) == (
        "cn-hangzhou.10.0.0.9",
        NEXT,
        CRASHED,
        True,
    )
    assert [e.record for e in report.evidence] == ["Panic#2 Part1", "Oops#1 Part1"]
    assert report.kernel_release == "5.10.134-16.al8.x86_64"  # the release running now, from the node
    assert msg.headers is not None and msg.headers.get("Nats-Msg-Id", "").startswith("cr-")
