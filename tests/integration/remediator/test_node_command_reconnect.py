"""A node command whose request or answer went down with a restarted nats-server (issue 14's chaos
runs: the agent's reply after the restart was refused, the remediator timed out and the step failed).
The remediator asks once more with the same action id after a reconnect; the agent answers a known id
from its stored result, so the command runs once. A request that meets "no responders" (no agent subscribed
yet) is asked again until the step's deadline. On a real nats-server with the deployed per-role authorization:
the remediator's requester under its role's credential and inbox, the real agent code under its node's own
minted credential."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import pytest

from nodeheal.agent.app import NodeAgent as RealAgent
from nodeheal.agent.settings import AgentSettings, CleanSettings
from nodeheal.remediator.actions.node import NodeAgent
from nodeheal.runtime.connect import connect
from nodeheal.runtime.settings import NatsSettings
from nodeheal.sim.embedded import EmbeddedNats
from tests.integration.deploy.natsauth_loader import agent_nats, load_natsauth, role_nats
from tests.integration.remediator.harness import CLUSTER, Deployed, real_agent_with_a_dead_kubelet
from tests.unit.cloud_events.agent_fakenode import FakeNode, make_fake_node, statvfs_with

pytestmark = [pytest.mark.nats]


@pytest.mark.parametrize("back", ["before_the_restart_ends", "after_the_restart_ended"])
async def test_a_command_lost_with_a_restarted_server_is_asked_again_and_runs_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, back: str
) -> None:
    """As deployed: a nats-server with the per-role authorization (killed and started again on its port with the
    same configuration), the requester under the remediator role's credential and inbox, the real agent code under
    the node's own minted credential on a fake node whose kubelet restart takes 2 s. The server dies while the
    restart runs: the agent keeps its result (a reply on the new connection to a request the old one received
    is refused by the server), the remediator asks again with the same action id after its reconnect and is
    answered from that one restart. The server is back before the restart ends (the agent has reconnected when
    it has the result), or only after it ended (the agent has the result while its connection is down: a reply
    sent then would wait in the client's buffer and reach the new connection, where the server refuses it)."""
    caplog.set_level(logging.INFO, logger="nodeheal.agent")
    natsauth = load_natsauth()
    bundle = natsauth.build()
    (tmp_path / "auth.conf").write_text(bundle.server_config())
    (tmp_path / "remediator.creds").write_text(bundle.user_creds("remediator"))
    (tmp_path / f"agent-{CLUSTER}-n1.creds").write_text(bundle.user_creds("agent", cluster=CLUSTER, node="n1"))
    config = str(tmp_path / "auth.conf")
    server = EmbeddedNats(config_file=config, log_file=str(tmp_path / "a.log")).start()
    port = server.port
    fake, settings = real_agent_with_a_dead_kubelet(agent_nats(tmp_path, server.url, CLUSTER, "n1"), "n1", tmp_path)
    (fake.state / "kubelet.service.slow").write_text("2")
    agent = RealAgent(settings, statvfs=statvfs_with({"root": (50, 10)}))  # type: ignore[arg-type]
    await agent.start()
    requester = await connect(role_nats(tmp_path, server.url, "remediator"), name="pytest-remediator")
    restarted: EmbeddedNats | None = None
    try:
        request = asyncio.create_task(
            NodeAgent(requester, prefix=settings.nats.prefix, timeout_s=6.0).run(
                cluster=CLUSTER,
                node="n1",
                command="restart_service",
                target="kubelet",
                action_id="a-1",
                lease_revision=1,
            )
        )
        for _ in range(200):  # the restart has begun at the node's systemctl: the server dies under it
            if fake.restart_calls():
                break
            await asyncio.sleep(0.05)
        assert fake.restart_calls() == ["begin kubelet.service"], fake.restart_calls()
        server.kill()
        if back == "after_the_restart_ended":
            for _ in range(200):
                if fake.restart_calls()[-1:] == ["end kubelet.service"]:
                    break
                await asyncio.sleep(0.05)
            await asyncio.sleep(0.2)  # the agent has its result while its connection is down
        restarted = EmbeddedNats(port=port, config_file=config, log_file=str(tmp_path / "b.log"))
        restarted.start()
        outcome = await asyncio.wait_for(request, timeout=30)
    finally:
        await requester.close()
        await agent.stop()
        server.stop()  # nothing once killed; a failure before the kill would leave it running past the test
        if restarted is not None:
            restarted.stop()
    assert outcome.ok, outcome.detail
    asked = [r.action_id for r in caplog.records if r.getMessage() == "command received"]  # type: ignore[attr-defined]
    assert asked == ["a-1", "a-1"]  # asked again with the same action id ...
    assert fake.restarts_logged() == ["kubelet.service"] and agent.executor.executed == 1  # ... and it ran once
    logged = [(tmp_path / name).read_text() for name in ("a.log", "b.log")]
    assert [line for text in logged for line in text.splitlines() if "Violation" in line] == []
    assert any("command result kept, not sent" in r.getMessage() for r in caplog.records)  # not the refused reply


def _agent_settings(nats: NatsSettings, node: FakeNode, tmp_path: Path) -> AgentSettings:
    return AgentSettings(
        nats=nats,
        cluster="c1",
        node_name="n-late",
        host_root=node.root,
        services=["kubelet"],
        systemctl_command=[node.systemctl],
        state_dir=tmp_path / "state",
        kernel_log="off",
        clean=CleanSettings(allowed_dirs=["/var/log/pods"], image_prune_command=[]),
    )


async def test_an_agent_that_subscribes_late_is_asked_again_and_runs_the_command_once(
    deployed: Deployed, tmp_path: Path
) -> None:
    """The remediator's request meets "no responders" (the agent is (re)starting); the real agent subscribes a
    second later and the step succeeds, the unit restarted once. As deployed: the requester under the remediator
    role's credential and inbox, the agent under the node's own minted credential."""
    node = make_fake_node(tmp_path)
    node.set_unit("kubelet.service", "failed", restarts=2)
    async with deployed.remediator_connection() as nc:
        request = asyncio.create_task(
            NodeAgent(nc, prefix=deployed.remediator.prefix, timeout_s=10.0).run(
                cluster=CLUSTER,
                node="n-late",
                command="restart_service",
                target="kubelet",
                action_id="late-1",
                lease_revision=1,
            )
        )
        await asyncio.sleep(1.0)  # several requests answered "no responders" meanwhile
        assert not request.done(), request.result().detail
        agent = RealAgent(_agent_settings(deployed.agent("n-late"), node, tmp_path))
        await agent.start()
        try:
            outcome = await asyncio.wait_for(request, timeout=15)
        finally:
            await agent.stop()
    assert outcome.ok, outcome.detail
    assert node.restarts_logged() == ["kubelet.service"]
    assert deployed.violations() == []


async def test_no_agent_at_all_fails_the_step_at_its_deadline(deployed: Deployed) -> None:
    """As deployed: the requester under the remediator role's credential and inbox."""
    async with deployed.remediator_connection() as nc:
        outcome = await asyncio.wait_for(
            NodeAgent(nc, prefix=deployed.remediator.prefix, timeout_s=1.5).run(
                cluster=CLUSTER,
                node="n-none",
                command="restart_service",
                target="kubelet",
                action_id="none-1",
                lease_revision=1,
            ),
            timeout=10,
        )
    assert not outcome.ok and "no node agent answers" in outcome.detail
    assert deployed.violations() == []
