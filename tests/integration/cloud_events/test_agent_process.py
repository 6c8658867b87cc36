"""`python -m nodeheal.agent` as its own process, configured only by environment
variables, against a fake node root and a real nats-server; it stops cleanly on SIGTERM."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from nats.aio.client import Client
from nats.errors import NoRespondersError
from nats.errors import TimeoutError as NatsTimeout
from nats.js.api import ConsumerConfig, DeliverPolicy

from nodeheal.runtime.settings import NatsSettings
from nodeheal.schemas.commands import NodeCommand, NodeCommandResult
from nodeheal.schemas.probe import NodeProbe
from nodeheal.schemas.subjects import cmd_subject, probe_subject
from nodeheal.sim.embedded import free_port
from tests.unit.cloud_events.agent_fakenode import FakeNode, make_fake_node

pytestmark = pytest.mark.nats


def _agent_env(settings: NatsSettings, node: FakeNode) -> dict[str, str]:
    return {
        **os.environ,
        "NODEHEAL_AGENT_NATS__URL": settings.url,
        "NODEHEAL_AGENT_NATS__PREFIX": settings.prefix,
        "NODEHEAL_AGENT_NATS__STREAM_PREFIX": settings.stream_prefix,
        "NODEHEAL_AGENT_NATS__BUCKET_PREFIX": settings.bucket_prefix,
        "NODEHEAL_AGENT_CLUSTER": "prod-1",
        "NODEHEAL_AGENT_NODE_NAME": "node-7",
        "NODEHEAL_AGENT_HOST_ROOT": str(node.root),
        "NODEHEAL_AGENT_SERVICES": json.dumps(["kubelet"]),
        "NODEHEAL_AGENT_SYSTEMCTL_COMMAND": json.dumps([node.systemctl]),
        "NODEHEAL_AGENT_INTERVAL_S": "0.5",
        "NODEHEAL_AGENT_HTTP_PORT": str(free_port()),
        "NODEHEAL_AGENT_HTTP_HOST": "127.0.0.1",
        "NODEHEAL_AGENT_LOG_FORMAT": "json",
    }


async def test_agent_process_publishes_and_stops(topology_ready: NatsSettings, nc: Client, tmp_path: Path) -> None:
    node = make_fake_node(tmp_path)
    node.set_unit("kubelet.service", "active")
    env = _agent_env(topology_ready, node)
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "nodeheal.agent", env=env, stderr=asyncio.subprocess.PIPE
    )
    try:
        sub = await nc.jetstream().pull_subscribe(
            probe_subject("prod-1", "node-7", prefix=topology_ready.prefix),
            durable=None,
            stream=f"{topology_ready.stream_prefix}PROBES",
            config=ConsumerConfig(deliver_policy=DeliverPolicy.ALL),
        )
        [msg] = await sub.fetch(1, timeout=30)
        probe = NodeProbe.model_validate_json(msg.data)
        assert probe.node == "node-7" and probe.cpu_count == 64
        assert [(s.name, s.state) for s in probe.services] == [("kubelet", "active")]
    finally:
        proc.send_signal(signal.SIGTERM)
        _, stderr = await asyncio.wait_for(proc.communicate(), timeout=30)
    assert proc.returncode == 0, stderr.decode()[-2000:]


async def test_a_sigterm_during_a_restart_waits_for_it_and_answers(
    topology_ready: NatsSettings, nc: Client, tmp_path: Path
) -> None:
    """A DaemonSet rollout sends SIGTERM to an agent in the middle of a kubelet restart. Before, the agent gave each
    command under way 5 s and then cancelled it: the restart went on, but its result was neither answered nor
    kept, so the remediator's second ask heard "not started", recorded a failed step and went to the next rung.
    Now the stop waits for the command (it ends by its request's deadline) and answers it, then exits 0."""
    node = make_fake_node(tmp_path)
    node.set_unit("kubelet.service", "failed")
    (node.state / "kubelet.service.slow").write_text("7")
    env = _agent_env(topology_ready, node) | {"NODEHEAL_AGENT_STATE_DIR": str(tmp_path / "state")}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "nodeheal.agent", env=env, stderr=asyncio.subprocess.PIPE
    )
    subject = cmd_subject("prod-1", "node-7", prefix=topology_ready.prefix)
    try:
        for _ in range(100):  # started: its command subscription answers
            try:
                await nc.request(subject, _command("ping", None, "p-1").to_json(), timeout=1)
                break
            except (NoRespondersError, NatsTimeout):
                await asyncio.sleep(0.2)
        restart = _command("restart_service", "kubelet", "r-1")
        reply = asyncio.create_task(nc.request(subject, restart.to_json(), timeout=40))
        await asyncio.sleep(1.5)  # the restart is under way (it takes 7 s)
        assert not reply.done()
        proc.send_signal(signal.SIGTERM)
        answer = NodeCommandResult.model_validate_json((await reply).data)
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
        _, stderr = await asyncio.wait_for(proc.communicate(), timeout=60)
    assert answer.ok and answer.detail == "restarted kubelet.service", answer
    assert node.restarts_logged() == ["kubelet.service"]
    assert proc.returncode == 0, stderr.decode()[-2000:]


async def test_a_command_under_way_when_the_agent_is_killed_is_not_run_again(
    topology_ready: NatsSettings, nc: Client, tmp_path: Path
) -> None:
    """The agent is SIGKILLed (OOM kill, node power blip of its pod) in the middle of a kubelet restart; the
    remediator, having had no answer, asks again with the same action id once the agent is back. Before, the new
    agent process knew nothing of it and restarted the kubelet a second time. Now the command was written to the
    state directory before it ran, and the new process answers "interrupted, effect unknown" without running it."""
    node = make_fake_node(tmp_path)
    node.set_unit("kubelet.service", "failed")
    (node.state / "kubelet.service.slow").write_text("3")
    env = _agent_env(topology_ready, node) | {"NODEHEAL_AGENT_STATE_DIR": str(tmp_path / "state")}
    subject = cmd_subject("prod-1", "node-7", prefix=topology_ready.prefix)

    async def start() -> asyncio.subprocess.Process:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "nodeheal.agent", env=env, stderr=asyncio.subprocess.DEVNULL
        )
        for i in range(150):  # started: its command subscription answers
            try:
                await nc.request(subject, _command("ping", None, f"p-{proc.pid}-{i}").to_json(), timeout=1)
                return proc
            except (NoRespondersError, NatsTimeout):
                await asyncio.sleep(0.2)
        raise AssertionError("the agent never answered a ping")

    restart = _command("restart_service", "kubelet", "r-killed")
    first = await start()
    try:
        # unanswered (the agent dies mid-restart): the ask times out after the kill, as the remediator's would
        asked = asyncio.create_task(nc.request(subject, restart.to_json(), timeout=6))
        await asyncio.sleep(1.0)  # the restart is under way (it takes 3 s)
        assert not asked.done()
        first.kill()
        await first.wait()
        with pytest.raises((NatsTimeout, NoRespondersError)):
            await asked
    finally:
        if first.returncode is None:
            first.kill()
    for _ in range(50):  # the systemctl the killed agent started finishes on its own
        if node.restarts_logged():
            break
        await asyncio.sleep(0.2)
    assert node.restarts_logged() == ["kubelet.service"]
    second = await start()
    try:
        again = NodeCommandResult.model_validate_json((await nc.request(subject, restart.to_json(), timeout=30)).data)
    finally:
        second.send_signal(signal.SIGTERM)
        await asyncio.wait_for(second.wait(), timeout=60)
    assert not again.ok and "interrupted" in again.detail and "not run again" in again.detail, again
    assert node.restarts_logged() == ["kubelet.service"]  # the kubelet was restarted once


def _command(command: str, target: str | None, action_id: str) -> NodeCommand:
    return NodeCommand(
        cluster="prod-1",
        node="node-7",
        command=command,  # type: ignore[arg-type]
        target=target,
        action_id=action_id,
        expires_at=datetime.now(tz=UTC) + timedelta(seconds=40),
    )
