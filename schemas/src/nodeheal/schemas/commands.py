"""Request/reply on `nodeheal.cmd.<cluster>.<node>`: node-local repairs the agent executes."""

from __future__ import annotations

from typing import Final, Literal

from pydantic import Field

from nodeheal.schemas.base import Frozen, Message

COMMAND_SCHEMA: Final = "nodeheal.cmd/v1"
COMMAND_RESULT_SCHEMA: Final = "nodeheal.cmd-result/v1"

CommandName = Literal["restart_service", "clean_disk", "ping"]


class NodeCommand(Message):
    schema_: Literal["nodeheal.cmd/v1"] = Field(default=COMMAND_SCHEMA, alias="schema")
    command: CommandName
    target: str | None = Field(default=None, description="service name or disk path")
    action_id: str
    lease_revision: int | None = Field(default=None, description="fencing token of the sender's lease")
    dry_run: bool = False


class NodeCommandResult(Frozen):
    schema_: Literal["nodeheal.cmd-result/v1"] = Field(default=COMMAND_RESULT_SCHEMA, alias="schema")
    action_id: str
    node: str
    ok: bool
    detail: str = ""
    freed_bytes: int | None = None

    def to_json(self) -> bytes:
        return self.model_dump_json(by_alias=True).encode()
