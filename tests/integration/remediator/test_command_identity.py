"""A command's reply counts only if it comes from the node and for the action that was asked: over a
real nats-server, whoever answers on a node's command subject with another node's or another action's
result makes the action fail ("node mismatch"), never succeed. With the deployed per-role authorization: the
remediator under its role's credential, the answer from a node agent's own minted credential."""

from __future__ import annotations

import pytest
from nats.aio.msg import Msg

from nodeheal.remediator.actions.node import NodeAgent
from nodeheal.schemas.commands import NodeCommandResult
from nodeheal.schemas.subjects import cmd_subject
from tests.integration.remediator.harness import CLUSTER, Deployed

pytestmark = pytest.mark.nats


@pytest.mark.parametrize(
    ("node", "action_id", "ok"),
    [("n-1", "a-1", True), ("n-2", "a-1", False), ("n-1", "a-other", False)],
    ids=["honest", "other-node", "other-action"],
)
async def test_a_reply_for_another_node_or_action_is_a_failure(
    deployed: Deployed, node: str, action_id: str, ok: bool
) -> None:
    """As deployed: the remediator's requester under its role's credential and inbox; the answer comes from n-1's
    own agent user (its minted credential, allowed to reply to the commands it receives): a node's agent that
    lies about who it is or which action it ran is refused."""

    async def answer(msg: Msg) -> None:
        await msg.respond(NodeCommandResult(action_id=action_id, node=node, ok=True, detail="done").to_json())

    async with deployed.agent_connection("n-1") as agent_nc, deployed.remediator_connection() as remediator:
        sub = await agent_nc.subscribe(cmd_subject(CLUSTER, "n-1", prefix=deployed.admin.prefix), cb=answer)
        await agent_nc.flush()
        try:
            agent = NodeAgent(remediator, prefix=deployed.remediator.prefix, timeout_s=5.0)
            outcome = await agent.run(
                cluster=CLUSTER, node="n-1", command="ping", target=None, action_id="a-1", lease_revision=None
            )
        finally:
            await sub.unsubscribe()
    assert outcome.ok is ok
    if not ok:
        assert outcome.detail.startswith("node mismatch")
    assert deployed.violations() == []
