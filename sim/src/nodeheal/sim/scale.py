"""What a demo run costs and whether the machine kept up: the report's `processes` and `scale` sections.

- `ProcessMeter` samples every process of the run (the demo itself, nats-server, the four services, the
  probe shards) from /proc: resident set now and at its peak (`VmHWM`), CPU seconds. A service that is
  restarted (chaos) is the same name with a new pid; its peak is the largest of its pids.
- `StreamMeter` reads the streams' and consumers' positions from JetStream (no subscription: the
  demo's own connection never receives the fleet's traffic) at the start and the end of the fault
  window: probes/s into PROBES and through each consumer, and how far each consumer is behind.
- `fell_behind` turns those figures into the one line a run that could not keep up ends with.

Linux only (/proc); elsewhere the process figures are empty.
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from nats.js import JetStreamContext

log = logging.getLogger("nodeheal.sim.scale")
_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100

RATE_PER_SHARD = 2500.0
"""Nodes per second one probe-shard process is given by `auto_sim_processes` (measured: the real agent
collector ≈ 45 µs, the prober probe, two TLS publishes and the flushes come to ≈ 150 µs of CPU per node
on this project's 2-core machine, so ≈ 2,500 nodes/s leaves a shard room on a shared core)."""


def auto_sim_processes(*, nodes: int, interval_s: float, cpus: int | None = None) -> int:
    """How many processes publish the probes: 1 (the demo process itself) while the fleet needs fewer
    than `RATE_PER_SHARD` nodes per second; else that many shards, at least 2, at most the CPUs."""
    rate = nodes / max(interval_s, 0.001)
    if rate <= RATE_PER_SHARD:
        return 1
    cores = cpus or os.cpu_count() or 1
    return max(2, min(cores, math.ceil(rate / RATE_PER_SHARD)))


PROBES_PER_DETECTOR = 10_000.0
"""Probes per second one detector replica is given by `auto_detector_replicas`: two thirds of the 15,305/s
`nodeheal bench detector` measured in the production configuration (docs/BENCHMARKS.md) — one
detector is one Python thread, so above that the probe path needs partitions and replicas."""
PROBE_PARTITIONS = 8
"""PROBES partitions when the demo runs detector replicas (well above the replica count, docs/detector.md)."""


def auto_detector_replicas(*, nodes: int, interval_s: float, cpus: int | None = None) -> int:
    """Detector replicas for the fleet's probe rate (an agent probe per node and interval, a prober result per
    node and prober round — `ProberSettings.interval_s`, or the agents' interval when that is longer; an entry
    of a `ProberResults` batch, which the detector still judges one by one, counted as a probe):
    1 up to `PROBES_PER_DETECTOR`, else one per `PROBES_PER_DETECTOR`, at most the CPUs."""
    from nodeheal.sim.fleet import DEFAULT_PROBER_PLAN

    interval_s = max(interval_s, 0.001)
    rate = nodes / interval_s + nodes / max(interval_s, DEFAULT_PROBER_PLAN.interval_s)
    if rate <= PROBES_PER_DETECTOR:
        return 1
    cores = cpus or os.cpu_count() or 1
    return max(1, min(cores, math.ceil(rate / PROBES_PER_DETECTOR)))


def _status_kb(pid: int) -> dict[str, int]:
    out: dict[str, int] = {}
    try:
        with open(f"/proc/{pid}/status", encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith(("VmRSS:", "VmHWM:")):
                    key, value = line.split(":", 1)
                    out[key] = int(value.split()[0])
    except (OSError, ValueError):
        return {}
    return out


def _cpu_s(pid: int) -> float | None:
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / _TICKS  # utime, stime (fields 14, 15)
    except (OSError, ValueError, IndexError):
        return None


@dataclass
class _Seen:
    peak_rss_kb: int = 0
    rss_kb: int = 0
    cpu_s: dict[int, float] = field(default_factory=dict)  # pid → its latest CPU seconds
    pids: set[int] = field(default_factory=set)


class ProcessMeter:
    """Samples named processes; `pids()` says which ones exist now (name → pid, None if not running)."""

    def __init__(self, pids: Callable[[], dict[str, int | None]]) -> None:
        self._pids = pids
        self.seen: dict[str, _Seen] = {}
        self.samples = 0

    def sample(self) -> None:
        self.samples += 1
        for name, pid in self._pids().items():
            if pid is None:
                continue
            status = _status_kb(pid)
            if not status:
                continue
            seen = self.seen.setdefault(name, _Seen())
            seen.pids.add(pid)
            seen.rss_kb = status.get("VmRSS", 0)
            seen.peak_rss_kb = max(seen.peak_rss_kb, status.get("VmHWM", 0), seen.rss_kb)
            cpu = _cpu_s(pid)
            if cpu is not None:
                seen.cpu_s[pid] = cpu

    def section(self, *, limit_mb: float) -> dict[str, Any]:
        per = {
            name: {
                "peak_rss_mb": round(seen.peak_rss_kb / 1024, 1),
                "last_rss_mb": round(seen.rss_kb / 1024, 1),
                "cpu_s": round(sum(seen.cpu_s.values()), 1),
                "pids": len(seen.pids),
            }
            for name, seen in sorted(self.seen.items())
        }
        over = sorted(name for name, p in per.items() if p["peak_rss_mb"] > limit_mb)
        return {
            "method": "VmHWM (peak resident set) and utime+stime of /proc/<pid> of every process, sampled every 2 s",
            "per_process": per,
            "total_peak_rss_mb": round(sum(p["peak_rss_mb"] for p in per.values()), 1),
            "largest": max(per, key=lambda k: per[k]["peak_rss_mb"]) if per else None,
            "limit_mb": limit_mb,
            "over_limit": over,
            "samples": self.samples,
        }


@dataclass
class Mark:
    """Positions of the streams and their consumers at one moment."""

    at: float
    streams: dict[str, dict[str, int]]  # stream → {"last_seq", "messages", "bytes"}
    consumers: dict[str, dict[str, int]]
    """durable consumers: "<stream>/<consumer>" → {"delivered", "acked", "pending", "ack_pending"}"""


class StreamMeter:
    def __init__(self, js: JetStreamContext, streams: Iterable[str]) -> None:
        self.js = js
        self.streams = list(streams)

    async def mark(self, *, consumers: bool = True) -> Mark:
        streams: dict[str, dict[str, int]] = {}
        found: dict[str, dict[str, int]] = {}
        for name in self.streams:
            try:
                info = await self.js.stream_info(name)
            except Exception:  # a missing stream is a missing row, not a failed report
                log.debug("no info for stream %s", name, exc_info=True)
                continue
            state = info.state
            streams[name] = {
                "last_seq": int(state.last_seq or 0),
                "messages": int(state.messages or 0),
                "bytes": int(state.bytes or 0),
            }
            if not consumers:
                continue
            try:
                infos = await self.js.consumers_info(name)
            except Exception:
                infos = []
            ephemeral = 0
            for ci in infos:
                if not (ci.config and ci.config.durable_name):
                    ephemeral += 1  # short-lived readers (a repair's verification): counted, not listed
                    continue
                found[f"{name}/{ci.name}"] = {
                    # consumer sequences: this consumer's own messages (a filtered or partitioned
                    # consumer's stream sequence also moves over messages that are not its own)
                    "delivered": int(ci.delivered.consumer_seq or 0) if ci.delivered else 0,
                    "acked": int(ci.ack_floor.consumer_seq or 0) if ci.ack_floor else 0,
                    "pending": int(ci.num_pending or 0),
                    "ack_pending": int(ci.num_ack_pending or 0),
                }
            streams[name]["ephemeral_consumers"] = ephemeral
        return Mark(at=time.time(), streams=streams, consumers=found)


def rates(first: Mark, last: Mark) -> dict[str, Any]:
    """Messages/s into each stream and through each consumer between two marks, and each consumer's
    backlog at the second (messages not yet delivered plus delivered and not yet acknowledged)."""
    span = max(last.at - first.at, 1e-6)
    streams = {
        name: {
            "in_per_s": round((s["last_seq"] - first.streams.get(name, {}).get("last_seq", 0)) / span, 1),
            "messages": s["messages"],
            "mb": round(s["bytes"] / 1024**2, 1),
            "ephemeral_consumers": s.get("ephemeral_consumers", 0),
        }
        for name, s in last.streams.items()
    }
    consumers: dict[str, Any] = {}
    for key, c in last.consumers.items():
        before = first.consumers.get(key, {"acked": c["acked"], "delivered": c["delivered"]})
        stream = key.split("/", 1)[0]
        in_rate = streams.get(stream, {}).get("in_per_s", 0.0)
        backlog = c["pending"] + c["ack_pending"]
        through = (c["acked"] - before["acked"]) / span
        consumers[key] = {
            "through_per_s": round(through, 1),
            "backlog": backlog,
            # how long the backlog is at the rate the stream fills (what "behind" means to a reader)
            "behind_s": round(backlog / in_rate, 1) if in_rate > 0 else 0.0,
        }
    return {"seconds": round(span, 1), "streams": streams, "consumers": consumers}


KEPT_INTERVAL_SLACK = 1.1
"""The simulator kept the requested interval when every node was probed, on average, within 10 % of it."""
SILENCE_INTERVALS = 2.5
"""The detector's default silence timeout in probe intervals (`RuleConfig.down_after_missed`): a node whose
probes come further apart than this looks down, however evenly the cadence stretched."""


def fell_behind(
    *, interval_s: float, sim: dict[str, Any], flow: dict[str, Any], processes: dict[str, Any]
) -> str | None:
    """One line naming what could not keep up (and by how much), or None when everything did.

    Behind means: the simulator probed the nodes, on average, more than `KEPT_INTERVAL_SLACK` × the
    requested interval apart (it stretches the cadence evenly: the line says what interval the nodes
    really got), or some node's probes came `SILENCE_INTERVALS` apart (it looked silent); a consumer of
    the probe stream ended the window more than two intervals of probes behind; a process went over the
    memory limit."""
    problems: list[str] = []
    effective = float(sim.get("effective_interval_s") or 0.0)
    worst = float(sim.get("effective_interval_max_s") or 0.0)
    if effective > interval_s * KEPT_INTERVAL_SLACK:
        problems.append(
            f"simulator probed every node every {effective:.1f} s on average, not every {interval_s:g} s"
            f" ({interval_s / effective:.0%} of the requested probe rate; the longest gap {worst:.1f} s)"
        )
    elif worst >= interval_s * SILENCE_INTERVALS:
        problems.append(f"simulator left a node {worst:.1f} s between two probes (interval {interval_s:g} s)")
    for key, c in sorted(flow.get("consumers", {}).items()):
        if "PROBES" in key.split("/", 1)[0] and c["behind_s"] > 2 * interval_s:
            problems.append(f"consumer {key} ended {c['backlog']:,} probes ({c['behind_s']:.0f} s) behind")
    for name in processes.get("over_limit", []):
        mb = processes["per_process"][name]["peak_rss_mb"]
        problems.append(f"{name} peaked at {mb:,.0f} MB (limit {processes['limit_mb']:,.0f} MB)")
    return "; ".join(problems) or None


def summary_line(report: dict[str, Any]) -> str | None:
    """The terminal summary's line for the `processes` and `scale` sections."""
    processes, scale = report.get("processes") or {}, report.get("scale") or {}
    if not processes and not scale:
        return None
    per = processes.get("per_process") or {}
    largest = processes.get("largest")
    flow = (scale.get("flow") or {}).get("consumers") or {}
    readers = [c for key, c in flow.items() if key.startswith("PROBES") and key.split("/", 1)[1].startswith("detector")]
    detector = (
        {"through_per_s": sum(c["through_per_s"] for c in readers), "backlog": sum(c["backlog"] for c in readers)}
        if readers
        else None
    )
    parts = []
    if largest:
        parts.append(f"largest process {largest} {per[largest]['peak_rss_mb']:,.0f} MB peak")
        parts.append(f"all {processes.get('total_peak_rss_mb', 0):,.0f} MB")
    if detector is not None:
        parts.append(f"detector {detector['through_per_s']:,.0f} probes/s, {detector['backlog']:,} behind at the end")
    parts.append(f"probe shards {scale.get('sim_processes', 1)}, detector replicas {scale.get('detector_replicas', 1)}")
    if scale.get("fell_behind"):
        parts.append(f"[bold]fell behind[/]: {scale['fell_behind']}")
    return "; ".join(parts)
