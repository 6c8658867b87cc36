"""A command's reply counts only if it comes from the node and for the action that was asked: over a
real nats-server, whoever answers on a node's command subject with another node's or another action's
result makes the action fail ("node mismatch"), never succeed."""

from __future__ import annotations

import pytest
from nats.aio.client import Client
from nats.aio.msg import Msg

from nodeheal.remediator.actions.node import NodeAgent
from nodeheal.runtime.settings import NatsSettings
from nodeheal.schemas.commands import NodeCommandResult
from nodeheal.schemas.subjects import cmd_subject

pytestmark = pytest.mark.nats


@pytest.mark.parametrize(
    ("node", "action_id", "ok"),
    [("n-1", "a-1", True), ("n-2", "a-1", False), ("n-1", "a-other", False)],
    ids=["honest", "other-node", "other-action"],
)
async def test_a_reply_for_another_node_or_action_is_a_failure(
    nc: Client, nats_settings: NatsSettings, node: str, action_id: str, ok: bool
) -> None:
    async def answer(msg: Msg) -> None:
        await msg.respond(NodeCommandResult(action_id=action_id, node=node, ok=True, detail="done").to_json())

    sub = await nc.subscribe(cmd_subject("c1", "n-1", prefix=nats_settings.prefix), cb=answer)
    try:
        agent = NodeAgent(nc, prefix=nats_settings.prefix, timeout_s=5.0)
        outcome = await agent.run(
            cluster="c1", node="n-1", command="ping", target=None, action_id="a-1", lease_revision=None
        )
    finally:
        await sub.unsubscribe()
    assert outcome.ok is ok
    if not ok:
        assert outcome.detail.startswith("node mismatch")
