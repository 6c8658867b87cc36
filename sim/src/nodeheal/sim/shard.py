"""Probe shards: the simulator's probe work spread over processes, sharded by node.

The main simulator process stays the one authority on the world (faults, the emulators, reboots,
node commands). A shard process owns the *probing* of its nodes: it runs the real agent collector for
each of them on schedule and publishes their agent and prober probes over its own NATS connections
(the same per-role users as the main process). The main process sends a shard the state of a node
whenever it changes (every 0.1 s, only for nodes whose state ever changed) and the kernel lines
written since; the shard sends back its counters at the end.

Started with `multiprocessing` (spawn): nothing but plain data crosses the process boundary.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import dataclasses
import multiprocessing
import multiprocessing.connection
import os
import signal
import sys
import threading
import time
from dataclasses import dataclass
from typing import Any

from nodeheal.runtime.connect import connect
from nodeheal.runtime.settings import NatsSettings
from nodeheal.sim.fleet import FleetSpec, SimNode

OWN = ("inv", "index", "seq", "prober_seq", "prober_next", "pending_kernel")
"""The fields of a node a shard keeps itself (its probes' sequences and the prober's round)."""
SYNCED = tuple(f.name for f in dataclasses.fields(SimNode) if f.name not in OWN)
"""The fields of a node's state a shard needs (the main process is their owner)."""


def node_state(node: SimNode) -> dict[str, Any]:
    return {name: getattr(node, name) for name in SYNCED}


@dataclass
class ShardPlan:
    index: int
    spec: FleetSpec
    nodes: dict[str, dict[str, Any]]  # node → initial state
    interval_s: float
    settings: dict[str, Any]  # NatsSettings of the simulator (prefix ...)
    prober: dict[str, Any]  # NatsSettings of the prober user
    agents: list[tuple[dict[str, Any], list[str]]]  # (NatsSettings of an agent user, its nodes of this shard)
    nice: int = 0  # added to the shard process's nice value: the services under test come first
    full_every: int | None = None  # the agents' full-probe cadence (`AgentProfile.full_every`); None: the default


REPORT_EVERY_S = 1.0


def _counters(sim: Any) -> dict[str, Any]:
    stats = sim.stats
    return {
        "probes_published": stats.probes_published,
        "publish_errors": stats.publish_errors,
        "collected": stats.collected,
        "collect_s": stats.collect_s,
        "collect_timed": stats.collect_timed,
        "lag_s_max": stats.lag_s_max,
        "lag_s_last": stats.lag_s_last,
        "interval_sum_s": stats.interval_sum_s,
        "intervals": stats.intervals,
        "interval_max_s": stats.interval_max_s,
        "interval_last_s": stats.interval_last_s,
        "stretched_s": stats.stretched_s,
        "flush_wait_s": stats.flush_wait_s,
        "flush_wait_s_max": stats.flush_wait_s_max,
        "flush_timeouts": stats.flush_timeouts,
        "flush_skipped": stats.flush_skipped,
        "probes_held": stats.probes_held,
    }


def run_shard(plan: ShardPlan, inbox: multiprocessing.connection.Connection) -> None:
    """The shard process's entry point."""
    if sys.platform == "linux":  # a shard never outlives the demo process, however that ends
        with contextlib.suppress(Exception):
            ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    # Ctrl-C in a terminal reaches every process of the group: the demo process stops its shards itself
    # (after taking their counters), and a shard whose demo is gone dies by PR_SET_PDEATHSIG
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if plan.nice > 0:
        with contextlib.suppress(OSError):
            os.nice(plan.nice)
    asyncio.run(_shard(plan, inbox))


async def _shard(plan: ShardPlan, inbox: multiprocessing.connection.Connection) -> None:
    from nodeheal.sim.engine import FleetSimulator, SimTimings
    from nodeheal.sim.nodehost import AgentProfile

    settings = NatsSettings.model_validate(plan.settings)
    sim = FleetSimulator(
        spec=plan.spec,
        settings=settings,
        timings=SimTimings(probe_interval_s=plan.interval_s),
        agent_profile=AgentProfile(full_every=plan.full_every),
        probes_only=True,
    )
    sim.nodes = {name: sim.nodes[name] for name in plan.nodes}
    for name, state in plan.nodes.items():
        for key, value in state.items():
            setattr(sim.nodes[name], key, value)
    prober_nc = await connect(NatsSettings.model_validate(plan.prober), name=f"nodeheal-sim-shard{plan.index}-prober")
    agent_nc = {}
    for index, (agent_settings, names) in enumerate(plan.agents):
        conn = await connect(
            NatsSettings.model_validate(agent_settings), name=f"nodeheal-sim-shard{plan.index}-agents-{index}"
        )
        agent_nc.update(dict.fromkeys(names, conn))
    await sim.start(prober_nc=prober_nc, agent_nc=agent_nc)
    inbox.send("ready")
    loop = asyncio.get_running_loop()
    reported = time.monotonic()
    try:
        while True:
            ready = await loop.run_in_executor(None, inbox.poll, 0.2)
            if time.monotonic() - reported >= REPORT_EVERY_S:
                inbox.send({"progress": _counters(sim)})  # the main process shows and judges the lag live
                reported = time.monotonic()
            if not ready:
                continue
            message = inbox.recv()
            if message == "stop":
                break
            for name, state, lines in message:
                node = sim.nodes[name]
                for key, value in state.items():
                    setattr(node, key, value)
                node.pending_kernel.extend(lines)
    finally:
        await sim.stop()
        inbox.send({"final": _counters(sim)})
        for conn in {prober_nc, *agent_nc.values()}:
            with contextlib.suppress(Exception):
                await conn.drain()


class ProbeShards:
    """The main process's side: start the shards, keep them told, collect their counters."""

    def __init__(self, plans: list[ShardPlan]) -> None:
        ctx = multiprocessing.get_context("spawn")
        self.owner = {name: plan.index for plan in plans for name in plan.nodes}
        self.pipes: list[multiprocessing.connection.Connection] = []
        self.procs: list[Any] = []
        for plan in plans:
            mine, theirs = ctx.Pipe()
            proc = ctx.Process(target=run_shard, args=(plan, theirs), name=f"nodeheal-sim-shard-{plan.index}")
            proc.daemon = True
            proc.start()
            self.pipes.append(mine)
            self.procs.append(proc)
        self._sent: dict[str, dict[str, Any]] = {}
        self._filled_at: dict[str, float] = {}
        self.progress: dict[int, dict[str, Any]] = {}  # shard → its latest counters
        self.finals: dict[int, dict[str, Any]] = {}  # shard → its final counters (sent when it stopped)
        self._stopping = False
        # the pipes are read by the event loop (progress) and by `stop` in a worker thread: one at a time
        self._reading = threading.Lock()

    def pids(self) -> dict[str, int | None]:
        return {f"sim-shard-{i}": proc.pid for i, proc in enumerate(self.procs)}

    def poll_progress(self) -> None:
        """Read the counters the shards sent since the last call (never blocks)."""
        with self._reading:
            for index, pipe in enumerate(self.pipes):
                with contextlib.suppress(EOFError, OSError):
                    while pipe.poll(0):
                        self._take(index, pipe.recv())

    def _take(self, index: int, message: Any) -> None:
        if isinstance(message, dict) and "progress" in message:
            self.progress[index] = message["progress"]
        elif isinstance(message, dict) and "final" in message:
            self.finals[index] = message["final"]

    def totals(self) -> dict[str, float]:
        """The shards' latest counters added up (lags: the largest)."""
        out: dict[str, float] = {}
        for counters in self.progress.values():
            for key, value in counters.items():
                out[key] = (
                    max(out.get(key, 0), value)
                    if key.startswith(("lag_", "flush_wait_s_max", "interval_max_s", "interval_last_s", "stretched_s"))
                    else (out.get(key, 0) + value)
                )
        return out

    def dead(self) -> list[int]:
        return [i for i, proc in enumerate(self.procs) if not proc.is_alive()]

    def wait_ready(self, *, timeout_s: float) -> None:
        """Block until every shard is connected and probing (spawning and importing take a while); returns
        early when `stop` was called meanwhile (a run interrupted during start-up)."""
        deadline = time.monotonic() + timeout_s
        for index, pipe in enumerate(self.pipes):
            while not self._stopping and not pipe.poll(0.2):
                if time.monotonic() > deadline:
                    msg = f"probe shard {index} did not start within {timeout_s:.0f}s"
                    raise RuntimeError(msg)
            if self._stopping:
                return
            if pipe.recv() != "ready":
                msg = f"probe shard {index} did not start within {timeout_s:.0f}s"
                raise RuntimeError(msg)

    def sync(self, nodes: list[SimNode], *, interval_s: float) -> None:
        """Send each shard the changed state of its nodes (and their new kernel lines)."""
        if self._stopping:
            return
        batches: dict[int, list[tuple[str, dict[str, Any], list[str]]]] = {}
        now = time.time()
        for node in nodes:
            if node.disk_fill_per_s and now - self._filled_at.get(node.name, 0.0) >= interval_s:
                node.before_probe()  # the fill grows once per probe interval, here where the state lives
                self._filled_at[node.name] = now
            state = node_state(node)
            lines = list(node.pending_kernel)
            if state == self._sent.get(node.name) and not lines:
                continue
            node.pending_kernel.clear()
            self._sent[node.name] = {**state, "services": dict(node.services), "restarts": dict(node.restarts)}
            batches.setdefault(self.owner[node.name], []).append((node.name, state, lines))
        for index, batch in batches.items():
            self.pipes[index].send(batch)
        self.poll_progress()

    def stop(self, *, timeout_s: float = 20.0) -> list[dict[str, Any]]:
        """Stop every shard within `timeout_s` in all (then they are killed); their final counters — for a
        shard that did not send them in time, its latest progress counters — once (a second call returns
        nothing)."""
        self._stopping = True
        if not self.procs:
            return []
        for pipe in self.pipes:
            with contextlib.suppress(Exception):
                pipe.send("stop")
        deadline = time.monotonic() + timeout_s
        for index, (pipe, proc) in enumerate(zip(self.pipes, self.procs, strict=True)):
            with self._reading, contextlib.suppress(Exception):
                while index not in self.finals and pipe.poll(max(0.0, deadline - time.monotonic())):
                    self._take(index, pipe.recv())
            proc.join(timeout=max(0.1, deadline - time.monotonic()))
            if proc.is_alive():
                proc.kill()
        out = [self.finals.get(i, self.progress.get(i)) for i in range(len(self.procs))]
        self.procs, self.pipes = [], []
        return [counters for counters in out if counters]
