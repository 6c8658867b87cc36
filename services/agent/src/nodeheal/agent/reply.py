"""Answering a command request on the connection that received it.

Under the deployed permissions (deploy/nats/natsauth.py) the agent may publish to a requester's reply
subject only because the server granted that one reply to the connection the request was delivered on
(`allow_responses`, one message). A connection that reconnected since — its server restarted, or it moved
to another server of the cluster — is a new client to the server: the grant is gone, and a reply sent now is
refused as a permissions violation and lost anyway. The result is not lost: the executor keeps it under the
command's action id (`CommandExecutor`, on disk with a state directory), and the requester asks again with
the same action id and is answered from it (`nodeheal.remediator.actions.node`: at once after a reconnect of
its own, else once its wait is over, for the result only). So the agent does not send such a reply; it logs
that it kept it. Nor one whose connection is down when the result is ready (its server away, not yet back): the
client would keep the reply in its buffer and send it on the next connection, where it is refused the same way."""

from __future__ import annotations

import logging

from nats.aio.client import Client
from nats.aio.msg import Msg

log = logging.getLogger("nodeheal.agent")


def connection_epoch(nc: Client) -> int:
    """Which connection of `nc` this is: the number of reconnects so far."""
    return int(nc.stats["reconnects"])


async def answer(msg: Msg, payload: bytes, *, nc: Client, epoch: int, node: str) -> bool:
    """Reply to `msg` if it asked for a reply and `nc` is still the connection (`epoch`) it arrived on, and up;
    True if a reply was sent."""
    if not msg.reply:
        return False
    if connection_epoch(nc) != epoch or not nc.is_connected:
        log.info(
            "command result kept, not sent: the connection that received the command has reconnected since or "
            "is down (the reply would go out on the next connection, and the server would refuse it); the "
            "requester asks again with the same action id",
            extra={"node": node, "reply": msg.reply},
        )
        return False
    await msg.respond(payload)
    return True


def delivery_refusal(subject: str, reply: str | None, *, own: str) -> str | None:
    """Why a message that reached the command subscription is not a command request; None when it is one.

    Only the remediator (and an operator's admin user) may publish on a node's command subject, but NATS
    permissions cannot check where JetStream delivers: any role allowed to create a consumer can create a push
    consumer whose deliver subject is this node's command subject, and the server then delivers that stream's
    messages here. Such a delivery keeps the subject it was stored under and carries a `$JS.ACK…` reply (or
    none); a command request is published on this exact subject with the requester's inbox as its reply."""
    if subject != own:
        return (
            f"delivered on {subject!r}, not published on this node's command subject {own!r} (a stream's push "
            "consumer delivering here?): not run"
        )
    if not reply:
        return "a command without a reply subject (not a request): not run"
    if reply.startswith("$JS."):
        return f"reply subject {reply!r} is a JetStream ack subject (a push consumer delivering here?): not run"
    return None
