"""Node-local repairs by request/reply to the node agent on `cmd_subject(cluster, node)`.

The command carries the action id (the agent deduplicates on it) and the lease revision and epoch (the fencing
token: an agent may refuse a command older than one it already executed).

"No responders" (the server knew no subscriber on the node's command subject) is not final: an agent that
has just started, reconnected or re-subscribed answers a moment later. The server delivered the request to
nobody, so asking again cannot run anything twice (and the agent deduplicates on the action id anyway); it
is asked again with a short backoff until the step's deadline (`timeout_s`).

Each request carries `expires_at`, the moment this side stops waiting for it: the agent does not start a
command that reaches it later (nats-py keeps a request published while the connection is down and sends it
after the reconnect, long after the step was recorded as failed). A request that got no answer is asked once
more, briefly (`ASK_AGAIN_S`), with the same action id and an `expires_at` already past (clock skew
included): an agent that ran it but
could not answer (its own connection moved to another server of the cluster meanwhile) answers from its stored
result; nothing is started by that second request."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

from nats.aio.client import Client
from nats.errors import NoRespondersError
from nats.errors import TimeoutError as NatsTimeout
from pydantic import ValidationError

from nodeheal.remediator.actions import ActionOutcome
from nodeheal.schemas.commands import EXPIRY_SKEW_S, CommandName, NodeCommand, NodeCommandResult
from nodeheal.schemas.subjects import cmd_subject

NO_RESPONDERS_BACKOFF_S = (0.05, 2.0)  # first pause, longest pause (doubled each try)
ASK_AGAIN_S = 5.0
"""How long the second, result-only ask of an unanswered request waits."""


class NodeAgent:
    def __init__(self, nc: Client, *, prefix: str, timeout_s: float) -> None:
        self.nc = nc
        self.prefix = prefix
        self.timeout_s = timeout_s

    async def run(
        self,
        *,
        cluster: str,
        node: str,
        command: CommandName,
        target: str | None,
        action_id: str,
        lease_revision: int | None,
        lease_epoch: int | None = None,
        dry_run: bool = False,
    ) -> ActionOutcome:
        cmd = NodeCommand(
            cluster=cluster,
            node=node,
            command=command,
            target=target,
            action_id=action_id,
            lease_revision=lease_revision,
            lease_epoch=lease_epoch,
            dry_run=dry_run,
        )
        subject = cmd_subject(cluster, node, prefix=self.prefix)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.timeout_s
        pause, longest = NO_RESPONDERS_BACKOFF_S
        asked_again = False
        unanswered = 0
        start_by: datetime | None = None  # None: until this request's own deadline
        while True:
            reconnects = self.nc.stats["reconnects"]
            try:
                left = max(deadline - loop.time(), 0.001)
                expires = start_by or datetime.now(tz=UTC) + timedelta(seconds=left)
                body = cmd.model_copy(update={"expires_at": expires}).to_json()
                reply = await self.nc.request(subject, body, timeout=left)
                break
            except NoRespondersError:
                unanswered += 1
                # nobody was subscribed: the request reached no agent. Asked again (same action id) after a short
                # pause while the step's deadline allows; an agent that (re)subscribes meanwhile answers
                if loop.time() + pause >= deadline:
                    return ActionOutcome(
                        ok=False,
                        detail=f"no node agent answers on {subject} (asked {unanswered} times in"
                        f" {self.timeout_s}s); is the DaemonSet running on {node}?",
                    )
                await asyncio.sleep(pause)
                pause = min(pause * 2, longest)
            except NatsTimeout:
                if not asked_again and self.nc.stats["reconnects"] != reconnects:
                    # the connection moved to a restarted (or another) server while waiting: the request or its
                    # answer went down with the old one (a reply to a request the server never saw is refused).
                    # Asked once more with the same action id: the agent answers a known id from its stored
                    # result, so nothing runs twice
                    asked_again = True
                    deadline = loop.time() + self.timeout_s
                    continue
                if not asked_again:
                    # no answer, and this side did not reconnect: the agent's own connection may have (a cluster
                    # of servers: it ran the command and could not answer). Asked once more for its result only
                    asked_again = True
                    # expired already, clock skew included: an agent with no record of it never starts it now
                    start_by = datetime.now(tz=UTC) - timedelta(seconds=EXPIRY_SKEW_S + 1)
                    deadline = loop.time() + ASK_AGAIN_S
                    continue
                return ActionOutcome(
                    ok=False, detail=f"node agent on {node} did not answer {command} within {self.timeout_s}s"
                )
        try:
            result = NodeCommandResult.model_validate_json(reply.data)
        except ValidationError as exc:
            return ActionOutcome(
                ok=False, detail=f"unreadable reply from the agent on {node}: {exc.errors()[0]['msg']}"
            )
        if start_by is not None and not result.ok:
            return ActionOutcome(
                ok=False,
                detail=f"node agent on {node} did not answer {command} within {self.timeout_s}s "
                f"(asked again for its result: {result.detail})",
            )
        if result.node != node or result.action_id != action_id:
            # only this node's agent may subscribe to its command subject (the server enforces it); a
            # reply naming another node or action is a broken or lying agent, never a success
            return ActionOutcome(
                ok=False,
                detail=f"node mismatch: asked {node} for {action_id}, the reply is from"
                f" {result.node} for {result.action_id}",
            )
        detail = result.detail or ("ok" if result.ok else "failed")
        if result.freed_bytes is not None:
            detail += f" (freed {result.freed_bytes} bytes)"
        return ActionOutcome(ok=result.ok, detail=f"{command} {target or ''} on {node}: {detail}".replace("  ", " "))
