"""Cheap decoding of `NodeProbe` for the hot path: msgspec Structs that mirror the fields the rules
read (and the constraints pydantic would enforce on them), nothing else.

Unknown fields are ignored (additive schema changes stay compatible). A payload that the pydantic
model would reject for a field the rules read is rejected here too, with msgspec's message (it names
the field path), so that it can go to the DLQ. This module must never import the transport.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

import msgspec

Pct = Annotated[float, msgspec.Meta(ge=0, le=100)]
NonNegFloat = Annotated[float, msgspec.Meta(ge=0)]
NonNegInt = Annotated[int, msgspec.Meta(ge=0)]
PosInt = Annotated[int, msgspec.Meta(ge=1)]
Name = Annotated[str, msgspec.Meta(min_length=1, max_length=253)]
Utc = Annotated[datetime, msgspec.Meta(tz=True)]


class FastReachability(msgspec.Struct, frozen=True, gc=False):
    check: Literal["icmp", "tcp", "ssh_banner", "kubelet_healthz", "agent"]
    ok: bool
    target: str = ""


class FastLoad(msgspec.Struct, frozen=True, gc=False):
    load1: NonNegFloat


class FastFileSystem(msgspec.Struct, frozen=True, gc=False):
    mount: str
    used_pct: Pct
    inodes_used_pct: Pct
    readonly: bool = False


class FastFileHandles(msgspec.Struct, frozen=True, gc=False):
    allocated: NonNegInt
    max: PosInt


class FastService(msgspec.Struct, frozen=True, gc=False):
    name: str
    state: Literal["active", "inactive", "failed", "activating", "deactivating", "reloading", "unknown"]
    healthy: bool | None = None


class FastProbe(msgspec.Struct, frozen=True, gc=False, rename={"schema_": "schema"}):
    schema_: Literal["nodeheal.probe/v1"]
    cluster: Name
    node: Name
    source: Literal["agent", "prober", "simulator"]
    seq: NonNegInt
    id: str = ""
    time: Utc | None = None
    boot_id: str | None = None
    reachability: tuple[FastReachability, ...] = ()
    load: FastLoad | None = None
    cpu_count: PosInt | None = None
    filesystems: tuple[FastFileSystem, ...] = ()
    file_handles: FastFileHandles | None = None
    services: tuple[FastService, ...] = ()
    kernel_log: tuple[str, ...] = ()
    ready: bool | None = None


probe_decoder: msgspec.json.Decoder[FastProbe] = msgspec.json.Decoder(FastProbe)
"""`probe_decoder.decode(raw)` → FastProbe; raises msgspec.ValidationError / DecodeError on bad input."""
