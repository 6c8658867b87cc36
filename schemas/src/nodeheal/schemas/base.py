"""The envelope every nodeheal message shares.

Every message carries `schema` (name/version), `id`, `time` (UTC), `cluster` and `node`. Models are
frozen; readers ignore unknown fields so that additive changes within a version never break an older
reader. Naive datetimes are rejected: time in nodeheal is always timezone-aware UTC.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any, TypeVar

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from nodeheal.schemas.ids import new_id


def _as_utc(value: datetime) -> datetime:
    if value.tzinfo is None or value.utcoffset() is None:
        msg = f"datetime {value.isoformat()} has no timezone; send UTC, e.g. '2026-01-01T00:00:00Z'"
        raise ValueError(msg)
    return value.astimezone(UTC)


UtcDatetime = Annotated[datetime, AfterValidator(_as_utc)]
"""A timezone-aware datetime, normalised to UTC."""

NonEmptyStr = Annotated[str, Field(min_length=1, max_length=253)]


def utcnow() -> datetime:
    return datetime.now(tz=UTC)


_M = TypeVar("_M", bound=BaseModel)


def trusted(cls: type[_M], values: dict[str, Any]) -> _M:
    """An instance of `cls` from `values` that already satisfy its schema, without validating them again.

    `values` holds every field by its field name (not its alias), defaults included, each of the field's
    type and within its bounds: the caller guarantees that, e.g. by taking each value from an instance
    that was validated, or by checking the one bound a fresh number has. What `model_construct` does
    (it sets the same four attributes) minus its per-field Python loop: for the agent's heartbeat it costs
    a fraction of a validated construction (docs/BENCHMARKS.md, "the shard's cost per probe"). Equality,
    hashing, `to_json` and `model_dump` behave as for a validated instance (tests/unit/agent/test_probe_fast.py
    compares them field for field)."""
    model = cls.__new__(cls)
    object.__setattr__(model, "__dict__", values)
    object.__setattr__(model, "__pydantic_fields_set__", set(values))
    object.__setattr__(model, "__pydantic_extra__", None)
    object.__setattr__(model, "__pydantic_private__", None)
    return model


class Frozen(BaseModel):
    """Base for nested value objects: immutable, unknown fields ignored."""

    model_config = ConfigDict(frozen=True, extra="ignore", str_strip_whitespace=False)


class Message(Frozen):
    """The envelope: `schema`, `id`, `time`, `cluster`, `node`."""

    schema_: str = Field(alias="schema", serialization_alias="schema")
    id: str = Field(default_factory=new_id, min_length=1, max_length=128)
    time: UtcDatetime = Field(default_factory=utcnow)
    cluster: NonEmptyStr
    node: NonEmptyStr

    model_config = ConfigDict(frozen=True, extra="ignore", populate_by_name=True)

    def to_json(self) -> bytes:
        """Wire form: JSON bytes with `schema` as the key (by alias)."""
        # the model's serializer directly: the same bytes as `model_dump_json(by_alias=True).encode()`
        # without its argument handling and the str round trip
        return self.__pydantic_serializer__.to_json(self, by_alias=True)

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json", by_alias=True)
