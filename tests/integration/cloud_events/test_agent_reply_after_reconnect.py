"""The real node agent, under its deployed per-node NATS user, running a command while the nats-server
restarts (issue 14's chaos runs and issue 13's 2,000-node run: agents replied to `_INBOX.remediator…`
after a restart and the server logged permission violations). The reply grant belongs to the connection
the request arrived on, so the agent keeps the result instead of sending it; the remediator asks again
with the same action id after its own reconnect and is answered from the stored result: the command runs
once, the step succeeds, and the server logs no violation."""

from __future__ import annotations

import asyncio
import textwrap
from pathlib import Path

import pytest
from nats.aio.client import Client

from nodeheal.agent.app import NodeAgent
from nodeheal.agent.settings import AgentSettings, CleanSettings
from nodeheal.remediator.actions import ActionOutcome
from nodeheal.remediator.actions.node import NodeAgent as NodeCommands
from nodeheal.runtime.connect import connect
from nodeheal.sim.auth import DemoAuth
from nodeheal.sim.embedded import EmbeddedNats
from tests.integration.detector.test_detector_nats import eventually
from tests.unit.cloud_events.agent_fakenode import FakeNode, make_fake_node

pytestmark = pytest.mark.nats

CLUSTER, NODE = "prod-1", "cn-hangzhou.10.0.0.7"


def _held_systemctl(tmp_path: Path, real: str) -> tuple[str, Path, Path]:
    """A systemctl whose `restart` says it started, then waits for the test's go-ahead."""
    started, go = tmp_path / "restart-started", tmp_path / "restart-go"
    script = tmp_path / "held-systemctl"
    script.write_text(
        textwrap.dedent(
            f"""\
            #!/bin/sh
            if [ "$1" = restart ]; then
              touch "{started}"
              i=0; while [ ! -f "{go}" ] && [ $i -lt 600 ]; do sleep 0.05; i=$((i+1)); done
            fi
            exec "{real}" "$@"
            """
        )
    )
    script.chmod(0o755)
    return str(script), started, go


def _held_agent(tmp_path: Path, auth: DemoAuth, url: str) -> tuple[FakeNode, NodeAgent, Path, Path]:
    """The real agent under its per-node user on a fake node whose kubelet restart waits for the test's go-ahead:
    (node, agent, the file the restart touches when it starts, the go-ahead file)."""
    node = make_fake_node(tmp_path)
    node.set_unit("kubelet.service", "failed", restarts=2)
    systemctl, started, go = _held_systemctl(tmp_path, node.systemctl)
    (tmp_path / "state").mkdir()
    agent = NodeAgent(
        AgentSettings(
            nats=auth.agent_settings(url=url, cluster=CLUSTER, nodes=[NODE], index=0),
            inbox_per_node=False,  # the per-node inbox is already in the minted settings
            cluster=CLUSTER,
            node_name=NODE,
            host_root=node.root,
            services=["kubelet"],
            systemctl_command=[systemctl],
            state_dir=tmp_path / "state",
            clean=CleanSettings(allowed_dirs=["/var/log/pods"], image_prune_command=[]),
        )
    )
    return node, agent, started, go


def _restart_step(
    requester: Client, auth: DemoAuth, *, action_id: str, timeout_s: float
) -> asyncio.Task[ActionOutcome]:
    """The remediator's restart_service step for the node, running."""
    return asyncio.create_task(
        NodeCommands(requester, prefix=auth.base.prefix, timeout_s=timeout_s).run(
            cluster=CLUSTER,
            node=NODE,
            command="restart_service",
            target="kubelet",
            action_id=action_id,
            lease_revision=3,
        )
    )


def _ran_once(node: FakeNode) -> None:
    restarts = (node.state / "restart.log").read_text().split()
    assert restarts == ["kubelet.service"] or restarts == ["kubelet"], restarts  # ran once, on the node


async def test_a_command_running_across_a_server_restart_is_answered_once_without_a_violation(
    tmp_path: Path,
) -> None:
    auth = DemoAuth.per_role(tmp_path / "auth")
    config = auth.server_config()
    assert config is not None
    store = str(tmp_path / "store")
    server = EmbeddedNats(store_dir=store, config_file=str(config), log_file=str(tmp_path / "before.log")).start()
    restarted: EmbeddedNats | None = None
    node, agent, started, go = _held_agent(tmp_path, auth, server.url)
    await agent.start()
    requester = await connect(auth.settings("remediator", url=server.url), name="pytest-remediator")
    try:
        step = _restart_step(requester, auth, action_id="act-restart-1", timeout_s=8.0)
        await eventually(started.exists, timeout_s=30)  # the agent is running the command
        server.kill()
        restarted = EmbeddedNats(
            port=server.port, store_dir=store, config_file=str(config), log_file=str(tmp_path / "after.log")
        ).start()
        assert agent.nc is not None
        await eventually(lambda: agent.nc is not None and agent.nc.stats["reconnects"] >= 1, timeout_s=30)
        go.touch()  # the command finishes on the agent's new connection
        outcome = await asyncio.wait_for(step, timeout=60)
    finally:
        go.touch()
        await requester.close()
        await agent.stop()
        for s in (restarted, server):
            if s is not None:
                s.stop()
    assert outcome.ok, outcome.detail
    _ran_once(node)
    logged = (tmp_path / "before.log").read_text() + (tmp_path / "after.log").read_text()
    assert [line for line in logged.splitlines() if "Violation" in line] == []


async def test_a_command_whose_agent_alone_reconnected_is_answered_from_its_result(tmp_path: Path) -> None:
    """In the deployed cluster of three servers the agent's connection can move (its server restarts, its link
    drops) while the remediator's stays. The agent keeps the result instead of replying on the new connection,
    and the remediator used to ask again only after a reconnect of its own: the step failed ("did not answer")
    and the ladder went on, though the command had run. Now an unanswered request is asked once more for its
    result: the step succeeds and the command ran once. The agent's link is dropped here by closing its socket."""
    auth = DemoAuth.per_role(tmp_path / "auth")
    config = auth.server_config()
    assert config is not None
    server = EmbeddedNats(store_dir=str(tmp_path / "store"), config_file=str(config)).start()
    node, agent, started, go = _held_agent(tmp_path, auth, server.url)
    await agent.start()
    requester = await connect(auth.settings("remediator", url=server.url), name="pytest-remediator")
    try:
        step = _restart_step(requester, auth, action_id="act-restart-2", timeout_s=4.0)
        await eventually(started.exists, timeout_s=30)  # the agent is running the command
        assert agent.nc is not None and agent.nc._transport is not None
        agent.nc._transport.close()  # the agent's link drops; the remediator's does not
        await eventually(lambda: agent.nc is not None and agent.nc.stats["reconnects"] >= 1, timeout_s=30)
        go.touch()  # the command finishes on the agent's new connection: its answer is kept, not sent
        outcome = await asyncio.wait_for(step, timeout=60)
    finally:
        go.touch()
        await requester.close()
        await agent.stop()
        server.stop()
    assert requester.stats["reconnects"] == 0
    assert outcome.ok, outcome.detail
    _ran_once(node)
