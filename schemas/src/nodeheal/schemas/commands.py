"""Request/reply on `nodeheal.cmd.<cluster>.<node>`: node-local repairs the agent executes."""

from __future__ import annotations

from typing import Final, Literal

from pydantic import Field

from nodeheal.schemas.base import Frozen, Message, UtcDatetime

COMMAND_SCHEMA: Final = "nodeheal.cmd/v1"
COMMAND_RESULT_SCHEMA: Final = "nodeheal.cmd-result/v1"

CommandName = Literal["restart_service", "clean_disk", "ping"]

EXPIRY_SKEW_S: Final = 5.0
"""How far a node's clock may be ahead of the remediator's before the agent takes a request for expired."""

FD_HOLDER_TARGET: Final = "fd-holder"
"""`restart_service` target: the systemd unit of the process holding the most file descriptors, if the agent
may restart it (else refused with the process named)."""
IMAGES_TARGET: Final = "container-images"
"""`clean_disk` target: the container runtime's own image prune."""
JOURNAL_TARGET: Final = "journal"
"""`clean_disk` target: `journalctl --vacuum-…` (the agent's configured command)."""
CLEAN_DISK_DEFAULT: Final = f"{IMAGES_TARGET},/var/log/pods,{JOURNAL_TARGET}"
"""What a disk-full diagnosis asks to clean: comma-separated targets the agent's allow-list accepts."""


class NodeCommand(Message):
    schema_: Literal["nodeheal.cmd/v1"] = Field(default=COMMAND_SCHEMA, alias="schema")
    command: CommandName
    target: str | None = Field(
        default=None, description="service name (or fd-holder); clean_disk: comma-separated targets"
    )
    action_id: str
    lease_revision: int | None = Field(default=None, description="fencing token of the sender's lease")
    lease_epoch: int | None = Field(
        default=None,
        ge=0,
        description="when the sender's lease bucket was created (µs since 1970): a bucket created anew (a rebuilt"
        " JetStream) restarts its revisions at 1, and a newer epoch starts a new fence at the agent; none: an older"
        " sender, fenced by the revision alone",
    )
    dry_run: bool = False
    expires_at: UtcDatetime | None = Field(
        default=None,
        description="when the sender stops waiting for the answer: the agent does not start the command later than "
        "this (its result, if it already ran, is still answered); none: no limit",
    )


class NodeCommandResult(Frozen):
    schema_: Literal["nodeheal.cmd-result/v1"] = Field(default=COMMAND_RESULT_SCHEMA, alias="schema")
    action_id: str
    node: str
    ok: bool
    detail: str = ""
    freed_bytes: int | None = None

    def to_json(self) -> bytes:
        return self.model_dump_json(by_alias=True).encode()
