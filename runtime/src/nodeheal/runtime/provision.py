"""Idempotent provisioning of the streams and key-value buckets (`nodeheal streams apply`).

The one place that writes stream configuration: services bind to streams with `declare=False`
(faststream's default re-declaration silently rewrites limits). Running `apply` twice changes
nothing the second time, and every change is reported field by field.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from nats.js.api import (
    DiscardPolicy,
    KeyValueConfig,
    RetentionPolicy,
    StorageType,
    StreamConfig,
    SubjectTransform,
)
from nats.js.client import JetStreamContext
from nats.js.errors import BucketNotFoundError, NotFoundError, ServerError

from nodeheal.runtime.startup import StartWait, patiently, start_wait
from nodeheal.schemas.streams import BucketSpec, StreamSpec, Topology

ChangeAction = Literal["created", "updated", "unchanged"]


@dataclass(frozen=True)
class Change:
    kind: Literal["stream", "bucket"]
    name: str
    action: ChangeAction
    fields: dict[str, tuple[Any, Any]] = field(default_factory=dict)

    def describe(self) -> str:
        if self.action == "updated":
            diffs = ", ".join(f"{k}: {old!r} → {new!r}" for k, old, new in self._rows())
            return f"{self.kind} {self.name}: updated ({diffs})"
        return f"{self.kind} {self.name}: {self.action}"

    def _rows(self) -> list[tuple[str, Any, Any]]:
        return [(k, v[0], v[1]) for k, v in sorted(self.fields.items())]


def _ns_equal(a: float | None, b: float | None) -> bool:
    return round((a or 0) * 1e9) == round((b or 0) * 1e9)


def stream_config(spec: StreamSpec, *, replicas: int) -> StreamConfig:
    return StreamConfig(
        name=spec.name,
        description=spec.description,
        subjects=list(spec.subjects),
        retention=RetentionPolicy.LIMITS,
        storage=StorageType.FILE,
        discard=DiscardPolicy.OLD,
        max_age=spec.max_age_s,
        max_bytes=spec.max_bytes,
        max_msg_size=spec.max_msg_size,
        max_msgs=spec.max_msgs,
        max_msgs_per_subject=spec.max_msgs_per_subject,
        duplicate_window=spec.duplicate_window_s,
        num_replicas=replicas,
        deny_delete=spec.deny_delete,
        deny_purge=spec.deny_purge,
        allow_direct=True,
        subject_transform=(
            SubjectTransform(src=spec.subject_transform[0], dest=spec.subject_transform[1])
            if spec.subject_transform
            else None
        ),
    )


_COMPARED = (
    "description",
    "subjects",
    "retention",
    "storage",
    "discard",
    "max_bytes",
    "max_msg_size",
    "max_msgs",
    "max_msgs_per_subject",
    "num_replicas",
    "deny_delete",
    "deny_purge",
    "allow_direct",
)
_DURATIONS = ("max_age", "duplicate_window")


def _diff(current: StreamConfig, wanted: StreamConfig) -> dict[str, tuple[Any, Any]]:
    diffs: dict[str, tuple[Any, Any]] = {}
    for name in _COMPARED:
        old, new = getattr(current, name), getattr(wanted, name)
        if name == "subjects":
            old, new = sorted(old or []), sorted(new or [])
        if isinstance(new, bool):
            # the server omits false booleans, nats-py then reads None
            old = bool(old)
        if old != new:
            diffs[name] = (old, new)
    for name in _DURATIONS:
        old, new = getattr(current, name), getattr(wanted, name)
        if not _ns_equal(old, new):
            diffs[name] = (old, new)
    old_t, new_t = _transform(current.subject_transform), _transform(wanted.subject_transform)
    if old_t != new_t:
        diffs["subject_transform"] = (old_t, new_t)
    return diffs


def _transform(value: SubjectTransform | None) -> tuple[str, str] | None:
    return (value.src, value.dest) if value is not None and value.src else None


async def apply_stream(js: JetStreamContext, spec: StreamSpec, *, replicas: int = 1) -> Change:
    wanted = stream_config(spec, replicas=replicas)
    try:
        info = await js.stream_info(spec.name)
    except NotFoundError:
        await js.add_stream(config=wanted)
        return Change("stream", spec.name, "created")
    diffs = _diff(info.config, wanted)
    if not diffs:
        return Change("stream", spec.name, "unchanged")
    merged = dataclasses.replace(info.config, **{k: getattr(wanted, k) for k in diffs})
    await js.update_stream(config=merged)
    return Change("stream", spec.name, "updated", diffs)


async def apply_bucket(js: JetStreamContext, spec: BucketSpec, *, replicas: int = 1) -> Change:
    try:
        await js.key_value(spec.name)
    except BucketNotFoundError:
        await js.create_key_value(
            config=KeyValueConfig(
                bucket=spec.name,
                description=spec.description,
                history=spec.history,
                ttl=spec.ttl_s,
                max_value_size=spec.max_value_size,
                max_bytes=spec.max_bytes,
                storage=StorageType.FILE,
                replicas=replicas,
            )
        )
        return Change("bucket", spec.name, "created")
    stream_name = f"KV_{spec.name}"
    info = await js.stream_info(stream_name)
    current = info.config
    diffs: dict[str, tuple[Any, Any]] = {}
    if not _ns_equal(current.max_age, spec.ttl_s):
        diffs["ttl"] = (current.max_age, spec.ttl_s)
    if current.max_msgs_per_subject != spec.history:
        diffs["history"] = (current.max_msgs_per_subject, spec.history)
    if current.num_replicas != replicas:
        diffs["replicas"] = (current.num_replicas, replicas)
    if (current.description or "") != spec.description:
        diffs["description"] = (current.description, spec.description)
    if current.max_bytes != spec.max_bytes:
        diffs["max_bytes"] = (current.max_bytes, spec.max_bytes)
    if not diffs:
        return Change("bucket", spec.name, "unchanged")
    merged = dataclasses.replace(
        current,
        max_age=spec.ttl_s or 0,
        max_msgs_per_subject=spec.history,
        num_replicas=replicas,
        description=spec.description,
        max_bytes=spec.max_bytes,
    )
    await js.update_stream(config=merged)
    return Change("bucket", spec.name, "updated", diffs)


PROVISION_PATIENCE_S = 60.0
"""How long `apply_topology` waits in all for a JetStream that does not answer yet."""


async def apply_topology(
    js: JetStreamContext, topo: Topology, *, replicas: int = 1, patience_s: float = PROVISION_PATIENCE_S
) -> list[Change]:
    """Create or update every stream and bucket of `topo`; return what happened to each.

    A JetStream that is not ready yet (a cluster whose meta leader was just elected, a server that
    restarts, a loaded machine) is waited for up to `patience_s` in all: each stream's and bucket's
    step is repeated while the API times out, has no responders or answers 503/500. Every step is
    safe to repeat: a create or update that took effect before its answer was lost is read back on
    the next try (and then reported "unchanged")."""
    if replicas not in (1, 3, 5):
        msg = f"--replicas {replicas}: use 1 (single server), 3 or 5 (JetStream cluster)"
        raise ValueError(msg)
    changes: list[Change] = []
    wait = StartWait(service="streams apply", patience_s=patience_s, on_give_up="the last error is raised")
    with start_wait(wait):
        for spec in topo.streams:
            step = functools.partial(apply_stream, js, spec, replicas=replicas)
            changes.append(await patiently(f"stream {spec.name}", functools.partial(_final, step)))
        for bspec in topo.buckets:
            bstep = functools.partial(apply_bucket, js, bspec, replicas=replicas)
            changes.append(await patiently(f"bucket {bspec.name}", functools.partial(_final, bstep)))
    return changes


_NOT_TRANSIENT = {10074: "the server is not part of a JetStream cluster: use --replicas 1 against a single server"}
"""Server errors (by JetStream error code) that another try cannot change."""


class ProvisionError(RuntimeError):
    """A stream or bucket the server refuses for good (not retried)."""


async def _final(step: Callable[[], Awaitable[Change]]) -> Change:
    try:
        return await step()
    except ServerError as exc:
        hint = _NOT_TRANSIENT.get(exc.err_code or 0)
        if hint is None:
            raise
        msg = f"{exc.description} ({hint})"
        raise ProvisionError(msg) from exc
