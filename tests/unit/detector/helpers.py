"""Building probes for the detector's rules (the same bytes the wire carries, decoded by the fast path)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from nodeheal.detector.fastpath import FastProbe, probe_decoder
from nodeheal.schemas import FileHandles, FileSystem, LoadAverage, NodeProbe, Reachability, ServiceState

T0 = datetime(2026, 11, 1, 12, 0, 0, tzinfo=UTC).timestamp()


def agent_probe(
    *,
    t: float,
    node: str = "n1",
    seq: int = 1,
    boot_id: str = "boot-1",
    load1: float = 1.0,
    cpu: int = 8,
    used: float = 50.0,
    inodes: float = 10.0,
    readonly: bool = False,
    fd: int = 1000,
    fd_max: int = 100_000,
    kubelet: str = "active",
    runtime: tuple[str, str] | None = None,
    kernel: tuple[str, ...] = (),
    ready: bool | None = True,
    mounts: tuple[str, ...] = ("/",),
    **extra: Any,
) -> FastProbe:
    probe = NodeProbe(
        id=f"p-{node}-{seq}",
        time=datetime.fromtimestamp(t, tz=UTC),
        cluster="c1",
        node=node,
        source="agent",
        seq=seq,
        boot_id=boot_id,
        uptime_s=100.0,
        load=LoadAverage(load1=load1, load5=load1, load15=load1),
        cpu_count=cpu,
        filesystems=tuple(
            FileSystem(mount=m, used_pct=used, inodes_used_pct=inodes, readonly=readonly) for m in mounts
        ),
        file_handles=FileHandles(allocated=fd, max=fd_max),
        services=(ServiceState(name="kubelet", state=kubelet),)  # type: ignore[arg-type]
        + ((ServiceState(name=runtime[0], state=runtime[1]),) if runtime else ()),  # type: ignore[arg-type]
        kernel_log=kernel,
        ready=ready,
        **extra,
    )
    return probe_decoder.decode(probe.to_json())


def prober_probe(*, t: float, node: str = "n1", seq: int = 1, **checks: bool) -> FastProbe:
    probe = NodeProbe(
        id=f"r-{node}-{seq}",
        time=datetime.fromtimestamp(t, tz=UTC),
        cluster="c1",
        node=node,
        source="prober",
        seq=seq,
        reachability=tuple(
            Reachability(check=name, target="10.0.0.1", ok=ok)  # type: ignore[arg-type]
            for name, ok in checks.items()
        ),
    )
    return probe_decoder.decode(probe.to_json())
