"""`NodeProbe`: what the node agent, the active prober or the simulator observed about one node.

This is the hot path of nodeheal (tens of thousands per second), so the model is flat and small:
lists of small value objects, no nested dictionaries of arbitrary shape.
"""

from __future__ import annotations

from typing import Final, Literal

from pydantic import Field

from nodeheal.schemas.base import Frozen, Message

PROBE_SCHEMA: Final = "nodeheal.probe/v1"
MAX_KERNEL_LINES = 200
"""The most kernel-log lines one probe carries; the agent counts what it had to drop."""

ProbeSource = Literal["agent", "prober", "simulator"]
ReachabilityCheck = Literal["icmp", "tcp", "ssh_banner", "kubelet_healthz", "agent"]


class Reachability(Frozen):
    """One check of the node from outside (or the agent's own heartbeat)."""

    check: ReachabilityCheck
    target: str = Field(description="host:port or URL that was checked")
    ok: bool
    latency_ms: float | None = Field(default=None, ge=0)
    error: str | None = None


class LoadAverage(Frozen):
    load1: float = Field(ge=0)
    load5: float = Field(ge=0)
    load15: float = Field(ge=0)


class FileSystem(Frozen):
    mount: str
    device: str | None = None
    used_pct: float = Field(ge=0, le=100)
    inodes_used_pct: float = Field(ge=0, le=100)
    readonly: bool = False


class FileHandles(Frozen):
    allocated: int = Field(ge=0)
    max: int = Field(ge=1)


class FdHolder(Frozen):
    """A process holding many open file descriptors (the agent reports the top ones when handles run high)."""

    pid: int = Field(ge=1)
    name: str = Field(description="/proc/PID/comm")
    fds: int = Field(ge=0, description="entries in /proc/PID/fd")
    unit: str | None = Field(default=None, description="systemd unit from /proc/PID/cgroup, when it is one")


ServiceActiveState = Literal["active", "inactive", "failed", "activating", "deactivating", "reloading", "unknown"]


class ServiceState(Frozen):
    """A systemd unit the operator listed (kubelet, container runtime, ops agent, ...)."""

    name: str
    state: ServiceActiveState
    restarts: int | None = Field(default=None, ge=0, description="systemd NRestarts, when known")
    healthy: bool | None = Field(default=None, description="result of the service's own health check")


class NodeProbe(Message):
    """One look at a node. An agent sends a *full* probe every few intervals and a *heartbeat*
    (`full=False`) between them (docs/node-agent.md, "Full probes and heartbeats")."""

    schema_: Literal["nodeheal.probe/v1"] = Field(default=PROBE_SCHEMA, alias="schema")
    source: ProbeSource
    seq: int = Field(ge=0, description="per-source sequence number; gaps show lost probes")
    boot_id: str | None = None
    uptime_s: float | None = Field(default=None, ge=0)
    reachability: tuple[Reachability, ...] = ()
    load: LoadAverage | None = None
    cpu_count: int | None = Field(default=None, ge=1)
    filesystems: tuple[FileSystem, ...] = ()
    file_handles: FileHandles | None = None
    services: tuple[ServiceState, ...] = ()
    kernel_log: tuple[str, ...] = Field(default=(), max_length=MAX_KERNEL_LINES)
    kernel_log_dropped: int = Field(default=0, ge=0, description="lines not sent because of the bound")
    kernel_release: str | None = None
    os_image: str | None = None
    ready: bool | None = Field(default=None, description="Kubernetes NodeReady as the agent or prober saw it")
    fd_holders: tuple[FdHolder, ...] = Field(
        default=(), max_length=10, description="top file-descriptor holders, sent when file handles run high"
    )
    full: bool = Field(
        default=True,
        description=(
            "true: a full probe (every measurement: file systems, services, file handles, load, kernel lines);"
            " false: an agent heartbeat between two full probes, which carries only the cheap readings (boot id,"
            " uptime, load, file handles, new kernel lines, the boot facts) and says nothing about file systems,"
            " services or fd holders. Absent (older agents, the prober): true"
        ),
    )
