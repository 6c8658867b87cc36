"""`DeadLetter`: input a service could not accept, with the reason and the raw bytes."""

from __future__ import annotations

import base64
from typing import Final, Literal

from pydantic import Field

from nodeheal.schemas.base import Frozen, UtcDatetime, utcnow
from nodeheal.schemas.ids import new_id

DLQ_SCHEMA: Final = "nodeheal.dlq/v1"
MAX_RAW_BYTES: Final = 128 * 1024
"""A dead letter keeps at most this much of the rejected input (the DLQ's max message size holds it)."""


class DeadLetter(Frozen):
    schema_: Literal["nodeheal.dlq/v1"] = Field(default=DLQ_SCHEMA, alias="schema")
    id: str = Field(default_factory=new_id)
    time: UtcDatetime = Field(default_factory=utcnow)
    service: str
    reason: str
    subject: str | None = None
    headers: dict[str, str] = Field(default_factory=dict)
    raw_b64: str = Field(description="the rejected bytes, base64 (at most the first MAX_RAW_BYTES of them)")
    raw_size: int | None = Field(default=None, ge=0, description="length of the rejected input, when it was cut")

    @classmethod
    def of(
        cls,
        *,
        service: str,
        reason: str,
        raw: bytes,
        subject: str | None = None,
        headers: dict[str, str] | None = None,
        id: str | None = None,
    ) -> DeadLetter:
        """`id`: a deterministic one (the same rejected message, the same letter); a new one when None."""
        return cls(
            id=id or new_id(),
            service=service,
            reason=reason,
            subject=subject,
            headers=headers or {},
            raw_b64=base64.b64encode(raw[:MAX_RAW_BYTES]).decode(),
            raw_size=len(raw) if len(raw) > MAX_RAW_BYTES else None,
        )

    @property
    def raw(self) -> bytes:
        return base64.b64decode(self.raw_b64)

    def to_json(self) -> bytes:
        return self.model_dump_json(by_alias=True).encode()
