"""What "healthy" means, once: the detector's thresholds and the check the remediator verifies with.

The detector fires an anomaly at the `*_full_pct` / `fd_ratio` / `high_load_ratio` thresholds and clears
it below the `*_clear_*` ones (hysteresis). A repaired node is *verified* when an agent probe shows every
measurement below the clear thresholds the detector uses, so the remediator never calls a node healthy
that the detector would still (or again) call sick. Both services take their defaults from here
(`nodeheal.detector.rules.RuleConfig`, `nodeheal.remediator.settings.RemediatorSettings.health`).

Pure: no transport, no clock.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Final

from pydantic import BaseModel, Field

from nodeheal.schemas.probe import NodeProbe

DISK_FULL_PCT: Final = 95.0
DISK_CLEAR_PCT: Final = 90.0
INODE_FULL_PCT: Final = 95.0
INODE_CLEAR_PCT: Final = 90.0
FD_RATIO: Final = 0.90
FD_CLEAR_RATIO: Final = 0.80
HIGH_LOAD_RATIO: Final = 2.0
HIGH_LOAD_CLEAR_RATIO: Final = 1.5
READONLY_IGNORE_MOUNTS: Final = ("/sys", "/proc", "/sys/fs/cgroup", "/usr", "/boot/efi")
WATCHED_SERVICES: Final = ("kubelet", "containerd", "docker", "crio", "ops-agent")
"""systemd unit names (CRI-O's unit is `crio.service`)."""
AGENT_SOURCES: Final = frozenset({"agent", "simulator"})
"""Probe sources that measure the node from inside (the simulator's stand-in agent sends the same fields);
prober probes only see reachability."""


def service_down(state: str, healthy: bool | None) -> bool:
    """A watched unit is down when systemd says failed/inactive or its own health check failed."""
    return state in ("failed", "inactive") or healthy is False


class HealthThresholds(BaseModel):
    """The clear side of the detector's rules (see the module doc)."""

    disk_clear_pct: float = Field(default=DISK_CLEAR_PCT, gt=0, le=100)
    inode_clear_pct: float = Field(default=INODE_CLEAR_PCT, gt=0, le=100)
    fd_clear_ratio: float = Field(default=FD_CLEAR_RATIO, gt=0, le=1)
    high_load_clear_ratio: float = Field(default=HIGH_LOAD_CLEAR_RATIO, gt=0)
    readonly_ignore_mounts: tuple[str, ...] = READONLY_IGNORE_MOUNTS
    services: tuple[str, ...] = Field(
        default=WATCHED_SERVICES, description="watched services (empty: every service the probe reports)"
    )


def probe_problems(probe: NodeProbe, thresholds: HealthThresholds | None = None) -> list[str]:
    """Why this agent probe is not a healthy node by the detector's rules ([] = healthy).

    Only a full agent probe can show health: it must carry the measurements (file systems, file handles,
    load and CPU count); a missing one is a problem, never a pass. A heartbeat (`full=False`) never does."""
    t = thresholds or HealthThresholds()
    problems: list[str] = []
    if probe.source not in AGENT_SOURCES:
        return [f"a {probe.source} probe carries no disk, file-handle or service data"]
    if not probe.full:
        return ["a heartbeat (not a full probe) carries no disk or service data"]
    if probe.ready is False:
        problems.append("node reports NotReady")
    if not probe.filesystems:
        problems.append("no file-system data in the probe")
    for fs in probe.filesystems:
        if fs.readonly and fs.mount not in t.readonly_ignore_mounts:
            problems.append(f"{fs.mount} is read-only")
        if fs.used_pct >= t.disk_clear_pct:
            problems.append(f"{fs.mount} is {fs.used_pct:.1f}% full (healthy below {t.disk_clear_pct:g}%)")
        if fs.inodes_used_pct >= t.inode_clear_pct:
            problems.append(f"{fs.mount} inodes {fs.inodes_used_pct:.1f}% used (healthy below {t.inode_clear_pct:g}%)")
    fh = probe.file_handles
    if fh is None:
        problems.append("no file-handle data in the probe")
    elif fh.allocated / fh.max >= t.fd_clear_ratio:
        problems.append(f"file handles {fh.allocated}/{fh.max} (healthy below {t.fd_clear_ratio:.0%})")
    if probe.load is None or not probe.cpu_count:
        problems.append("no load data in the probe")
    elif probe.load.load1 / probe.cpu_count >= t.high_load_clear_ratio:
        problems.append(
            f"load {probe.load.load1:g} on {probe.cpu_count} CPUs (healthy below {t.high_load_clear_ratio:g} per CPU)"
        )
    watched = set(t.services)
    down = [s.name for s in probe.services if (not watched or s.name in watched) and service_down(s.state, s.healthy)]
    if down:
        problems.append(f"services down: {', '.join(down)}")
    unreachable = [r.check for r in probe.reachability if not r.ok]
    if unreachable:
        problems.append(f"unreachable by {', '.join(unreachable)}")
    return problems


def healthy(probe: NodeProbe, thresholds: HealthThresholds | None = None) -> bool:
    return not probe_problems(probe, thresholds)


def summary(problems: Iterable[str]) -> str:
    items = list(problems)
    return "; ".join(items) if items else "healthy"
