"""The node agent against a fake node root, publishing to a real nats-server; probes are read back
from the PROBES stream, commands go over real request/reply."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from nats.aio.client import Client
from nats.js.api import ConsumerConfig, DeliverPolicy

from nodeheal.agent.app import NodeAgent
from nodeheal.agent.settings import AgentSettings, CleanSettings
from nodeheal.runtime.connect import connect
from nodeheal.runtime.settings import NatsSettings
from nodeheal.schemas.commands import NodeCommand, NodeCommandResult
from nodeheal.schemas.dlq import DeadLetter
from nodeheal.schemas.probe import NodeProbe
from nodeheal.schemas.subjects import cmd_subject, dlq_subject, probe_subject
from tests.integration.deploy.natsauth_loader import (
    RoleServer,
    admin_stands_in,
    agent_nats,
    per_role_server,
    role_nats,
    violations,
)
from tests.unit.cloud_events.agent_fakenode import FakeNode, make_fake_node, statvfs_with

pytestmark = pytest.mark.nats

NODE = "cn-hangzhou.10.0.0.7"


def _settings(nats: NatsSettings, node: FakeNode, tmp_path: Path, **over: object) -> AgentSettings:
    values: dict[str, object] = {
        "nats": nats,
        "cluster": "prod-1",
        "node_name": NODE,
        "host_root": node.root,
        "services": ["kubelet", "containerd"],
        "systemctl_command": [node.systemctl],
        "state_dir": tmp_path / "state",
        "interval_s": 0.2,
        "max_kernel_lines": 5,
        "clean": CleanSettings(allowed_dirs=["/var/log/pods"], image_prune_command=[]),
    }
    values.update(over)
    return AgentSettings(**values)  # type: ignore[arg-type]


@pytest.fixture
async def deployed(tmp_path: Path) -> AsyncIterator[RoleServer]:
    """A nats-server with the deployed per-role authorization: the agent runs under its node's own credential
    (`agent_nats`), the test reads and provisions as admin and sends commands as the remediator."""
    directory = tmp_path / "nats"
    directory.mkdir()
    async with per_role_server(directory, "remediator", nodes=(("prod-1", NODE),)) as (server, admin_nc, admin):
        yield RoleServer(directory, server.url, admin_nc, admin, agent_nats(directory, server.url, "prod-1", NODE))
    assert violations(directory) == []


nc, topology_ready = admin_stands_in()  # the tests run on the per-role server; admin stands in


@pytest.fixture
async def remediator(deployed: RoleServer) -> AsyncIterator[Client]:
    """The remediator's connection (its credential and inbox prefix): the node commands are its requests."""
    client = await connect(role_nats(deployed.dir, deployed.url, "remediator"), name="remediator")
    yield client
    await client.close()


@pytest.fixture
async def agent_env(deployed: RoleServer, tmp_path: Path) -> AsyncIterator[tuple[FakeNode, NodeAgent]]:
    node = make_fake_node(tmp_path)
    node.set_unit("kubelet.service", "active", restarts=0)
    node.set_unit("containerd.service", "failed", restarts=3)
    (tmp_path / "state").mkdir()
    # an earlier run of this boot read up to sequence 0: every line written from now on is new
    (tmp_path / "state/kmsg-position.json").write_text(
        json.dumps({"boot_id": "0f0e0d0c-1111-2222-3333-444455556666", "seq": 0})
    )
    agent = NodeAgent(_settings(deployed.role, node, tmp_path), statvfs=statvfs_with({"/data": (97, 12)}))  # type: ignore[arg-type]
    await agent.start()
    yield node, agent
    await agent.stop()


async def _read_probes(nc: Client, settings: NatsSettings, subject: str, count: int) -> list[NodeProbe]:
    js = nc.jetstream()
    stream = settings.topology().stream(f"{settings.stream_prefix}PROBES").name
    sub = await js.pull_subscribe(
        subject, durable=None, stream=stream, config=ConsumerConfig(deliver_policy=DeliverPolicy.ALL)
    )
    probes: list[NodeProbe] = []
    while len(probes) < count:  # fetch returns what is there; wait for the rest (fetch times out if never)
        msgs = await sub.fetch(count - len(probes), timeout=10)
        probes += [NodeProbe.model_validate_json(m.data) for m in msgs]
    await sub.unsubscribe()
    return probes


async def test_probe_carries_the_fake_nodes_values(
    agent_env: tuple[FakeNode, NodeAgent], nc: Client, topology_ready: NatsSettings
) -> None:
    node, agent = agent_env
    node.kmsg("EXT4-fs error (device nvme1n1): ext4_find_entry:1455: inode #2: comm ls: reading directory lblock 0")
    await agent.probe_once()
    subject = probe_subject("prod-1", NODE, prefix=topology_ready.prefix)
    [probe] = await _read_probes(nc, topology_ready, subject, 1)
    assert probe.source == "agent"
    assert probe.node == NODE and probe.cluster == "prod-1"
    assert probe.boot_id == "0f0e0d0c-1111-2222-3333-444455556666"
    assert probe.load is not None and probe.load.load1 == 1.5
    assert probe.cpu_count == 64
    assert probe.file_handles is not None and probe.file_handles.allocated == 4160
    data = next(fs for fs in probe.filesystems if fs.mount == "/data")
    assert (data.used_pct, data.inodes_used_pct, data.readonly) == (97.0, 12.0, True)
    assert {(s.name, s.state, s.restarts) for s in probe.services} == {
        ("kubelet", "active", 0),
        ("containerd", "failed", 3),
    }
    assert probe.kernel_log == (
        "EXT4-fs error (device nvme1n1): ext4_find_entry:1455: inode #2: comm ls: reading directory lblock 0",
    )
    assert probe.kernel_release == "5.10.134-16.al8.x86_64"
    assert probe.os_image == "Alibaba Cloud Linux 3.2104 U10"


async def test_kernel_lines_once_and_bound_counted(
    agent_env: tuple[FakeNode, NodeAgent], nc: Client, topology_ready: NatsSettings
) -> None:
    node, agent = agent_env
    node.kmsg("a", "b")
    await agent.probe_once()
    await agent.probe_once()  # nothing new
    node.kmsg(*[f"soft lockup {i}" for i in range(8)])
    await agent.probe_once()
    subject = probe_subject("prod-1", NODE, prefix=topology_ready.prefix)
    probes = await _read_probes(nc, topology_ready, subject, 3)
    assert [p.kernel_log for p in probes] == [
        ("a", "b"),
        (),
        tuple(f"soft lockup {i}" for i in range(5)),
    ]
    assert [p.kernel_log_dropped for p in probes] == [0, 0, 3]
    assert probes[0].seq < probes[1].seq < probes[2].seq


async def test_probes_wait_in_the_outbox_while_the_stream_is_missing(
    agent_env: tuple[FakeNode, NodeAgent], nc: Client, topology_ready: NatsSettings
) -> None:
    _node, agent = agent_env
    js = nc.jetstream()
    probes_spec = topology_ready.topology().stream(f"{topology_ready.stream_prefix}PROBES")
    info = await js.stream_info(probes_spec.name)
    await js.delete_stream(probes_spec.name)
    agent.settings.nats.publish_timeout_s = 0.5
    await agent.probe_once()
    await agent.probe_once()
    assert len(agent.outbox) == 2  # nothing lost, nothing acknowledged
    await js.add_stream(config=info.config)
    await agent.probe_once()
    assert len(agent.outbox) == 0
    subject = probe_subject("prod-1", NODE, prefix=topology_ready.prefix)
    probes = await _read_probes(nc, topology_ready, subject, 3)
    assert len({p.seq for p in probes}) == 3


async def _request(nc: Client, subject: str, payload: bytes) -> NodeCommandResult:
    reply = await nc.request(subject, payload, timeout=10)
    return NodeCommandResult.model_validate_json(reply.data)


async def test_commands_over_request_reply(
    agent_env: tuple[FakeNode, NodeAgent], nc: Client, remediator: Client, topology_ready: NatsSettings
) -> None:
    node, _agent = agent_env
    subject = cmd_subject("prod-1", NODE, prefix=topology_ready.prefix)

    def command(name: str, target: str | None, action_id: str) -> bytes:
        return NodeCommand(
            cluster="prod-1",
            node=NODE,
            command=name,
            target=target,
            action_id=action_id,  # type: ignore[arg-type]
        ).to_json()

    pong = await _request(remediator, subject, command("ping", None, "p-1"))
    assert pong.ok and pong.detail == "pong"

    restarted = await _request(remediator, subject, command("restart_service", "containerd", "act-1"))
    assert restarted.ok and restarted.action_id == "act-1"
    repeated = await _request(remediator, subject, command("restart_service", "containerd", "act-1"))
    assert repeated == restarted
    assert node.restarts_logged() == ["containerd.service"]

    refused = await _request(remediator, subject, command("clean_disk", "/etc", "act-2"))
    assert not refused.ok and "outside the allow-list" in refused.detail


async def test_a_stale_lease_revision_is_refused_also_after_an_agent_restart(
    agent_env: tuple[FakeNode, NodeAgent],
    nc: Client,
    remediator: Client,
    topology_ready: NatsSettings,
    tmp_path: Path,
    deployed: RoleServer,
) -> None:
    node, agent = agent_env
    subject = cmd_subject("prod-1", NODE, prefix=topology_ready.prefix)

    def command(action_id: str, revision: int) -> bytes:
        return NodeCommand(
            cluster="prod-1",
            node=NODE,
            command="restart_service",
            target="kubelet",
            action_id=action_id,
            lease_revision=revision,
        ).to_json()

    assert (await _request(remediator, subject, command("fence-1", 42))).ok
    await agent.stop()
    # a new agent process on the same node (same state directory): the fence is still there
    restarted = NodeAgent(_settings(deployed.role, node, tmp_path))
    await restarted.start()
    assert restarted.nc is not None
    await restarted.nc.flush()  # its command subscription is registered before the request
    try:
        stale = await _request(remediator, subject, command("fence-2", 41))
        newer = await _request(remediator, subject, command("fence-3", 43))
    finally:
        await restarted.stop()
    assert not stale.ok and "older than revision 42" in stale.detail
    assert newer.ok
    assert node.restarts_logged() == ["kubelet.service", "kubelet.service"]  # the stale command never ran


async def test_a_request_that_arrives_after_its_sender_stopped_waiting_is_not_started(
    agent_env: tuple[FakeNode, NodeAgent], nc: Client, remediator: Client, topology_ready: NatsSettings
) -> None:
    """nats-py keeps a request published while the remediator's connection is down and sends it after the
    reconnect; by then the remediator had recorded the step as failed ("did not answer") and gone to the next
    rung. Before, the agent ran it anyway: a kubelet restart in the middle of the drain that followed (reproduced
    by a review behind a TCP proxy). Now a request past its `expires_at` is refused and not started; a fresh
    request for the same action still runs it."""
    node, _agent = agent_env
    subject = cmd_subject("prod-1", NODE, prefix=topology_ready.prefix)
    now = datetime.now(tz=UTC)

    def command(expires_at: datetime) -> bytes:
        return NodeCommand(
            cluster="prod-1",
            node=NODE,
            command="restart_service",
            target="kubelet",
            action_id="late-1",
            expires_at=expires_at,
        ).to_json()

    late = await _request(remediator, subject, command(now - timedelta(seconds=60)))
    assert not late.ok and "after its sender stopped waiting" in late.detail
    assert node.restarts_logged() == []
    fresh = await _request(remediator, subject, command(now + timedelta(seconds=60)))
    assert fresh.ok
    assert node.restarts_logged() == ["kubelet.service"]


async def test_malformed_command_gets_an_error_reply_and_a_dlq_entry(
    agent_env: tuple[FakeNode, NodeAgent], nc: Client, remediator: Client, topology_ready: NatsSettings
) -> None:
    js = nc.jetstream()
    dlq = dlq_subject("node-agent", prefix=topology_ready.prefix)
    dlq_sub = await js.subscribe(dlq, deliver_policy=DeliverPolicy.ALL)
    subject = cmd_subject("prod-1", NODE, prefix=topology_ready.prefix)
    raw = b'{"command": "format_disk", "action_id": "bad-1"}'
    result = await _request(remediator, subject, raw)
    assert not result.ok and result.action_id == "bad-1"
    assert "malformed command" in result.detail and "command" in result.detail
    letter = DeadLetter.model_validate_json((await dlq_sub.next_msg(timeout=5)).data)
    assert letter.raw == raw and letter.subject == subject
    # still answering
    ok = await _request(
        remediator,
        subject,
        NodeCommand(cluster="prod-1", node=NODE, command="ping", action_id="p2").to_json(),
    )
    assert ok.ok
    await dlq_sub.unsubscribe()


async def test_run_loop_publishes_every_interval(
    agent_env: tuple[FakeNode, NodeAgent], nc: Client, topology_ready: NatsSettings
) -> None:
    _node, agent = agent_env
    task = asyncio.create_task(agent.run_probes())
    subject = probe_subject("prod-1", NODE, prefix=topology_ready.prefix)
    probes = await _read_probes(nc, topology_ready, subject, 3)
    agent._stopping.set()
    await asyncio.wait_for(task, timeout=5)
    assert len(probes) == 3


async def test_the_probe_after_a_node_command_is_a_full_one(
    agent_env: tuple[FakeNode, NodeAgent], nc: Client, remediator: Client, topology_ready: NatsSettings
) -> None:
    """Between full probes the agent sends heartbeats; the remediator verifies a repair on a full probe
    newer than its action, so the agent's probe after answering a command is full."""
    node, agent = agent_env
    assert agent.collector.full_every > 2
    await agent.probe_once()  # the first probe: full
    await agent.probe_once()
    subject = cmd_subject("prod-1", NODE, prefix=topology_ready.prefix)
    restart = NodeCommand(
        cluster="prod-1",
        node=NODE,
        command="restart_service",
        target="containerd",
        action_id="act-full-1",  # type: ignore[arg-type]
    )
    assert (await _request(remediator, subject, restart.to_json())).ok
    await agent.probe_once()
    await agent.probe_once()
    probes = await _read_probes(nc, topology_ready, probe_subject("prod-1", NODE, prefix=topology_ready.prefix), 4)
    assert [p.full for p in probes] == [True, False, True, False]
    assert ("containerd", "active", 4) in {(s.name, s.state, s.restarts) for s in probes[2].services}
    assert probes[1].services == () and probes[1].filesystems == ()
    assert node.restarts_logged() == ["containerd.service"]
