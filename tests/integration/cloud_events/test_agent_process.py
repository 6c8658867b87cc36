"""`python -m nodeheal.agent` as its own process, configured only by environment
variables, against a fake node root and a real nats-server; it stops cleanly on SIGTERM.

The command tests run as deployed (`as_deployed`): the server runs deploy/nats/natsauth.py's per-role
authorization, the agent process connects with its node's own minted credential and inbox prefix (what
deploy/base/agent.yaml gives it) and is asked by a connection of the remediator's role, so a permission the
agent lacks in production (its command subscription, its answer on the requester's inbox, a probe) fails the
test; the server's log of permission violations is checked empty."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sys
import urllib.request
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from nats.aio.client import Client
from nats.errors import NoRespondersError
from nats.errors import TimeoutError as NatsTimeout
from nats.js.api import ConsumerConfig, DeliverPolicy

from nodeheal.runtime.connect import connect
from nodeheal.runtime.settings import NatsSettings
from nodeheal.schemas.commands import NodeCommand, NodeCommandResult
from nodeheal.schemas.probe import NodeProbe
from nodeheal.schemas.subjects import cmd_subject, probe_subject
from nodeheal.sim.embedded import free_port
from tests.integration.deploy.natsauth_loader import agent_nats, per_role_server, role_nats, violations
from tests.unit.cloud_events.agent_fakenode import FakeNode, make_fake_node

pytestmark = pytest.mark.nats


CLUSTER, NODE = "prod-1", "node-7"


@contextlib.asynccontextmanager
async def as_deployed(tmp_path: Path) -> AsyncIterator[tuple[NatsSettings, Client]]:
    """A nats-server with the deployed per-role authorization; yields the agent's NATS settings for node-7
    (its own credential, inbox prefix `_INBOX.agent`) and a connection of the remediator's role, the one that
    sends node commands. On exit, the server must have logged no permission violation."""
    directory = tmp_path / "nats"
    directory.mkdir()
    async with per_role_server(directory, "remediator", nodes=((CLUSTER, NODE),)) as (server, _admin_nc, _admin):
        remediator = await connect(role_nats(directory, server.url, "remediator"), name="remediator")
        try:
            yield agent_nats(directory, server.url, CLUSTER, NODE), remediator
        finally:
            await remediator.close()
    assert violations(directory) == []


def _agent_env(settings: NatsSettings, node: FakeNode) -> dict[str, str]:
    as_deployed = (
        {
            "NODEHEAL_AGENT_NATS__CREDS_FILE": settings.creds_file,
            "NODEHEAL_AGENT_NATS__INBOX_PREFIX": settings.inbox_prefix,
        }
        if settings.creds_file
        else {}
    )
    return {
        **{k: v for k, v in os.environ.items() if not k.startswith(("NODEHEAL_", "NATS_"))},
        **as_deployed,
        "NODEHEAL_AGENT_NATS__URL": settings.url,
        "NODEHEAL_AGENT_NATS__PREFIX": settings.prefix,
        "NODEHEAL_AGENT_NATS__STREAM_PREFIX": settings.stream_prefix,
        "NODEHEAL_AGENT_NATS__BUCKET_PREFIX": settings.bucket_prefix,
        "NODEHEAL_AGENT_CLUSTER": CLUSTER,
        "NODEHEAL_AGENT_NODE_NAME": NODE,
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


async def _start_agent(env: dict[str, str], requester: Client, log: Path) -> asyncio.subprocess.Process:
    """`python -m nodeheal.agent` (its output appended to `log`), returned once its command subscription answers
    a ping from `requester`."""
    with log.open("ab") as out:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "nodeheal.agent", env=env, stdout=out, stderr=asyncio.subprocess.STDOUT
        )
    subject = cmd_subject(CLUSTER, NODE, prefix=NatsSettings().prefix)
    for i in range(150):
        assert proc.returncode is None, f"the agent exited: {log.read_text()[-2000:]}"
        try:
            await requester.request(subject, _command("ping", None, f"p-{proc.pid}-{i}").to_json(), timeout=1)
            return proc
        except (NoRespondersError, NatsTimeout):
            await asyncio.sleep(0.2)
    proc.kill()
    await proc.wait()
    raise AssertionError(f"the agent never answered a ping: {log.read_text()[-2000:]}")


async def test_a_sigterm_during_a_restart_waits_for_it_and_answers(tmp_path: Path) -> None:
    """A DaemonSet rollout sends SIGTERM to an agent in the middle of a kubelet restart. Before, the agent gave each
    command under way 5 s and then cancelled it: the restart went on, but its result was neither answered nor
    kept, so the remediator's second ask heard "not started", recorded a failed step and went to the next rung.
    Now the stop waits for the command (it ends by its request's deadline) and answers it, then exits 0."""
    node = make_fake_node(tmp_path)
    node.set_unit("kubelet.service", "failed")
    (node.state / "kubelet.service.slow").write_text("7")
    async with as_deployed(tmp_path) as (agent_settings, remediator):
        env = _agent_env(agent_settings, node) | {"NODEHEAL_AGENT_STATE_DIR": str(tmp_path / "state")}
        proc = await _start_agent(env, remediator, tmp_path / "agent.log")
        subject = cmd_subject(CLUSTER, NODE, prefix=agent_settings.prefix)
        stopping = False
        try:
            restart = _command("restart_service", "kubelet", "r-1")
            reply = asyncio.create_task(remediator.request(subject, restart.to_json(), timeout=40))
            await asyncio.sleep(1.5)  # the restart is under way (it takes 7 s)
            assert not reply.done()
            proc.send_signal(signal.SIGTERM)
            stopping = True
            answer = NodeCommandResult.model_validate_json((await reply).data)
        finally:
            # one SIGTERM, as the kubelet sends: a second one while the agent still stops (its answer sent, its
            # connection draining) would end it by the signal's default action, not by its own exit
            if proc.returncode is None and not stopping:
                proc.send_signal(signal.SIGTERM)
            await asyncio.wait_for(proc.wait(), timeout=60)
    assert answer.ok and answer.detail == "restarted kubelet.service", answer
    assert node.restarts_logged() == ["kubelet.service"]
    assert proc.returncode == 0, (tmp_path / "agent.log").read_text()[-2000:]


async def test_a_command_under_way_when_the_agent_is_killed_is_not_run_again(tmp_path: Path) -> None:
    """The agent is SIGKILLed (OOM kill, node power blip of its pod) in the middle of a kubelet restart; the
    remediator, having had no answer, asks again with the same action id once the agent is back. Before, the new
    agent process knew nothing of it and restarted the kubelet a second time. Now the command was written to the
    state directory before it ran, and the new process answers "interrupted, effect unknown" without running it."""
    node = make_fake_node(tmp_path)
    node.set_unit("kubelet.service", "failed")
    (node.state / "kubelet.service.slow").write_text("3")
    restart = _command("restart_service", "kubelet", "r-killed")
    async with as_deployed(tmp_path) as (agent_settings, remediator):
        env = _agent_env(agent_settings, node) | {"NODEHEAL_AGENT_STATE_DIR": str(tmp_path / "state")}
        subject = cmd_subject(CLUSTER, NODE, prefix=agent_settings.prefix)
        first = await _start_agent(env, remediator, tmp_path / "agent.log")
        try:
            # unanswered (the agent dies mid-restart): the ask times out after the kill, as the remediator's would
            asked = asyncio.create_task(remediator.request(subject, restart.to_json(), timeout=6))
            await asyncio.sleep(1.0)  # the restart is under way (it takes 3 s)
            assert not asked.done()
            first.kill()
            await first.wait()
            with pytest.raises((NatsTimeout, NoRespondersError)):
                await asked
        finally:
            if first.returncode is None:
                first.kill()
                await first.wait()
        for _ in range(50):  # the systemctl the killed agent started finishes on its own
            if node.restarts_logged():
                break
            await asyncio.sleep(0.2)
        assert node.restarts_logged() == ["kubelet.service"]
        second = await _start_agent(env, remediator, tmp_path / "agent.log")
        try:
            reply = await remediator.request(subject, restart.to_json(), timeout=30)
            again = NodeCommandResult.model_validate_json(reply.data)
        finally:
            second.send_signal(signal.SIGTERM)
            await asyncio.wait_for(second.wait(), timeout=60)
    assert not again.ok and "interrupted" in again.detail and "not run again" in again.detail, again
    assert node.restarts_logged() == ["kubelet.service"]  # the kubelet was restarted once


async def test_a_state_directory_that_cannot_keep_a_command_refuses_it(tmp_path: Path) -> None:
    """The agent's state directory cannot keep a command's record (here the results file is a directory: the
    write fails also as root), or its kept lease fence cannot be read: a command that changes the node is
    refused, with the file named, and nothing runs; the refusal reaches the remediator and is counted in
    `nodeheal_agent_commands_refused_state`. A ping is still answered."""
    node = make_fake_node(tmp_path)
    node.set_unit("kubelet.service", "failed")
    state = tmp_path / "state"
    (state / "command-results.jsonl").mkdir(parents=True)
    (state / "lease-fence.json").write_text('{"lease_revision": ')
    port = free_port()
    async with as_deployed(tmp_path) as (agent_settings, remediator):
        env = _agent_env(agent_settings, node) | {
            "NODEHEAL_AGENT_STATE_DIR": str(state),
            "NODEHEAL_AGENT_HTTP_PORT": str(port),
        }
        subject = cmd_subject(CLUSTER, NODE, prefix=agent_settings.prefix)
        proc = await _start_agent(env, remediator, tmp_path / "agent.log")
        try:
            unleased = _command("clean_disk", "/var/log/pods", "s-1")
            leased = _command("restart_service", "kubelet", "s-2").model_copy(update={"lease_revision": 3})
            answers = [
                NodeCommandResult.model_validate_json((await remediator.request(subject, c.to_json(), timeout=30)).data)
                for c in (unleased, leased)
            ]
            metrics = await asyncio.to_thread(_metrics, port)
        finally:
            proc.send_signal(signal.SIGTERM)
            await asyncio.wait_for(proc.wait(), timeout=60)
    assert not answers[0].ok and "command-results.jsonl" in answers[0].detail, answers[0]
    assert not answers[1].ok and "cannot be read" in answers[1].detail, answers[1]
    assert "nodeheal_agent_commands_refused_state_total 2.0" in metrics, metrics
    assert node.restarts_logged() == []  # nothing ran on the node


def _metrics(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        return str(response.read().decode())


def _command(command: str, target: str | None, action_id: str) -> NodeCommand:
    return NodeCommand(
        cluster=CLUSTER,
        node=NODE,
        command=command,  # type: ignore[arg-type]
        target=target,
        action_id=action_id,
        expires_at=datetime.now(tz=UTC) + timedelta(seconds=40),
    )
