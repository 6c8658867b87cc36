"""The fleet simulator's engine: publishes every node's probes (as the agent and as the active
prober would), answers node-local commands like the node agent, injects faults with ground truth,
and lets the outside world (the cloud API emulator, the Kubernetes emulator) act on the nodes.

This is the only part of the simulator that talks to NATS. It never publishes anything a real
component would not (probes, inventory, command replies); cloud events reach nodeheal the real way,
through the cloud API emulator and the cloud-events poller.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import re
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

import orjson
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js.kv import KeyValue
from pydantic import ValidationError

from nodeheal.agent.crash import crash_msg_id
from nodeheal.agent.reply import answer, connection_epoch, delivery_refusal
from nodeheal.cloud_events.prober.batch import Batch, ResultBatcher
from nodeheal.runtime.settings import NatsSettings
from nodeheal.schemas import NodeCommand, NodeCommandResult, NodeInventory
from nodeheal.schemas.inventory import instance_key, inventory_key
from nodeheal.schemas.subjects import (
    cmd_subject,
    crash_subject,
    escape_token,
    probe_subject,
    prober_probe_subject,
    unescape_token,
)
from nodeheal.sim.crash_text import bad_kernel_panic_lines, host_rng, zone_lockup_lines
from nodeheal.sim.faults import (
    FATAL_KERNEL_CLASSES,
    HARDWARE_CRASH_CLASSES,
    InjectedFault,
    PlannedFault,
    expected_category,
    expected_causes,
    kernel_samples,
    with_kernel_release,
)
from nodeheal.sim.fleet import DEFAULT_PROBER_PLAN, KERNELS, FleetSpec, SimNode, build_inventory
from nodeheal.sim.nodehost import AgentProfile, SimAgent, crash_collector, leave_crash_evidence

log = logging.getLogger("nodeheal.sim")


def disk_failure_lines(samples: dict[str, list[list[str]]]) -> tuple[list[str], list[str]]:
    """A dying disk: real I/O-error lines, then real ext4 lines, on the same disk.

    The two excerpts come from different machines, so the ext4 excerpt's device is renamed to the
    partition of the disk the I/O errors name (the only edit the simulator makes to a sample)."""
    disk_re = re.compile(r"\bdev (sd[a-z]+)\b|\[(sd[a-z]+)\]")
    for io_lines in samples["nvme_disk_io_error"]:
        found = next((m for m in (disk_re.search(line) for line in io_lines) if m), None)
        if found is None:
            continue
        disk = found.group(1) or found.group(2)
        for fs_lines in samples["ext4_readonly_remount"]:
            fs_dev = next(
                (m.group(1) for m in (re.search(r"\((?:device )?(sd[a-z]+\d*)\)", x) for x in fs_lines) if m), None
            )
            if fs_dev is None:
                continue
            part = re.sub(r"^sd[a-z]+", disk, fs_dev)
            return list(io_lines), [line.replace(fs_dev, part) for line in fs_lines]
    return samples["nvme_disk_io_error"][0], samples["ext4_readonly_remount"][0]


class CloudHooks(Protocol):
    """What the simulator asks of the cloud emulator."""

    def schedule_maintenance(self, *, instance_id: str, event_type: str, not_before: datetime) -> str: ...


PUBLISH_BATCH = 250
"""Nodes probed between two flushes of the connections used: what one connection may have in flight
(≈ 250 agent probes of ~1 KB plus 250 prober probes), the bound on the simulator's publish buffers."""
FLUSH_TIMEOUT_S = 10
PROBER_BATCH_S = 0.1
"""The simulated prober sends what it checked at most this long ago (one probe loop tick): a verdict is as
late as before, in ≈ 1/60 of the messages at 50,000 nodes (one per partition and tick)."""
FLUSH_POLL_S = 0.25
"""How often a flush in progress checks whether its connection lost its server (then it is not waited for)."""
TICK_NODES = 4 * PUBLISH_BATCH
COLLECT_SAMPLE = 16
"""The real agent collector's CPU cost is measured on one probe in this many (`SimStats.collect_s`)."""
CATCH_UP_S = 1.0
WARM_CYCLES = 2
"""Rounds over the fleet left out of the effective interval: a node's first probe creates its agent (≈ 4×
the CPU of a later one), so the first rounds of a large fleet are slower than the steady state."""
"""Overdue probes (in seconds of the schedule) the probe loop catches up; beyond that the cadence stretches."""

NOTICE_TIME_SCALE = 1440
"""Cloud maintenance notices run 1,440 times faster than in reality (a day per minute)."""


@dataclass
class SimTimings:
    probe_interval_s: float = 5.0
    reboot_s: float = 20.0  # the machine's own reboot time in the simulation
    redeploy_s: float = 35.0
    auto_reboot_s: float = 25.0  # kernel.panic=N after a crash
    # NotBefore - publish of a scheduled SystemMaintenance.Reboot / Redeploy: 24-48 h in reality (Alibaba),
    # compressed by `NOTICE_TIME_SCALE` (one simulated day per minute): 60-120 s
    maintenance_notice_s: tuple[float, float] = (24 * 3600 / 1440, 48 * 3600 / 1440)
    partition_s: float = 45.0  # from the first node of the rack going dark until the rack is back
    partition_spread_s: float = 20.0  # the rack's nodes go dark one by one over this long (10-60 s in reality)
    disk_fill_to_full_s: float = 12.0
    prober_interval_s: float = DEFAULT_PROBER_PLAN.interval_s  # the active prober's round (its own setting)


INVENTORY_PUT_ATTEMPTS = 4
"""How often the simulator sends one inventory record whose PubAck did not come in time."""


@dataclass
class SimStats:
    probes_published: int = 0
    prober_results: int = 0  # node results of the prober sent in `ProberResults` batches (each batch: one message)
    inventory_put_retries: int = 0
    commands_answered: int = 0
    crash_reports: int = 0  # crash reports the nodes' agents sent after a crash (pstore / kdump files)
    reboots: int = 0
    redeploys: int = 0
    publish_errors: int = 0
    collect_s: float = 0.0  # CPU time spent in the real agent collector (and encoding) in the timed probes
    collect_timed: int = 0  # probes whose collection was timed (one in `COLLECT_SAMPLE`)
    collected: int = 0
    # a node's measured gap between two of its probes (the effective interval: sum / count), the largest
    # gap any node saw, and the latest one
    interval_sum_s: float = 0.0
    intervals: int = 0
    interval_max_s: float = 0.0
    interval_last_s: float = 0.0
    stretched_s: float = 0.0  # how far the schedule was moved later because the machine was slower
    lag_s_max: float = 0.0  # the most a node's probe came later than one interval after its previous one
    lag_s_last: float = 0.0  # the same for the latest probe
    flush_wait_s: float = 0.0  # time spent waiting for the server to read what was published
    flush_wait_s_max: float = 0.0
    flush_timeouts: int = 0
    probes_held: int = 0  # probes not taken while their connection's server was away (sent again once back)
    flush_skipped: int = 0  # flushes not waited for: the connection was reconnecting (its server was away)
    samples: list[dict[str, float]] = field(default_factory=list)


class FleetSimulator:
    def __init__(
        self,
        *,
        spec: FleetSpec,
        settings: NatsSettings,
        timings: SimTimings | None = None,
        clock: Callable[[], float] = time.time,
        work_dir: Path | None = None,
        agent_profile: AgentProfile | None = None,
        probes_only: bool = False,
    ) -> None:
        self.spec = spec
        # a probe shard (nodeheal.sim.shard): only probes; the main process owns the world and commands
        self.probes_only = probes_only
        self.work_dir = work_dir
        # the agents' cadence of full probes: the agent's default for this probe interval unless the profile sets it
        self.agent_profile = (agent_profile or AgentProfile()).at_interval((timings or SimTimings()).probe_interval_s)
        self.agents: dict[str, SimAgent] = {}
        self.settings = settings
        self.timings = timings or SimTimings()
        self.clock = clock
        # fault placement (which node, which rack, which sample) draws from its own generator; the probes'
        # noise from another: how many probes went out before a fault (timing, load) must not change
        # where the fault strikes, so one seed is one fault plan
        self.rng = random.Random(spec.seed)
        self.noise_rng = random.Random(f"{spec.seed}:probe-noise")
        self.inventory = build_inventory(spec)
        self.nodes: dict[str, SimNode] = {
            inv.node: SimNode(inv=inv, index=i, booted_at=clock() - 86_400 * (1 + i % 30))
            for i, inv in enumerate(self.inventory)
        }
        self.by_instance: dict[str, SimNode] = {n.inv.instance_id or "": n for n in self.nodes.values()}
        self.racks: dict[str, list[SimNode]] = {}
        for node in self.nodes.values():
            self.racks.setdefault(node.inv.rack or "", []).append(node)
        self.truth: list[InjectedFault] = []
        self.open_faults: dict[str, InjectedFault] = {}  # node → its open fault
        self.timed: set[SimNode] = set()  # nodes with a reboot or an auto-reboot pending
        self.crashed: set[str] = set()  # nodes whose crash evidence their agent has not reported yet
        # every node whose state ever left "healthy": the only ones the health figures and the
        # Kubernetes sync need to look at (at 50,000 nodes a full scan twice a second is too slow)
        self.touched: set[SimNode] = set()
        self.partition: tuple[str, float, float] | None = None  # rack, start, end
        self.partition_log: tuple[str, float, float] | None = None
        self.going_dark: dict[SimNode, float] = {}  # partition nodes not yet dark → when they go
        self.dark_spans: dict[str, tuple[float, float]] = {}  # node → (dark from, back at)
        self.boots: list[tuple[float, str]] = []  # (time, node) of every boot with a new boot id
        self.cloud: CloudHooks | None = None
        self.stats = SimStats()
        self._subjects = {name: probe_subject(spec.cluster, name, prefix=settings.prefix) for name in self.nodes}
        # the active prober speaks on its own subject kind (the detector tells the sources apart by subject)
        self._prober_subjects = {
            name: prober_probe_subject(spec.cluster, name, prefix=settings.prefix) for name in self.nodes
        }
        self._prober_nc: Client | None = None
        # the active prober's round is its own setting (`ProberSettings.interval_s`, 10 s, as deploy/ runs it), not
        # the agents' interval: a node's prober probe goes with the first agent probe due after that round, so it
        # is sent at the prober's interval (or at the agents' when they probe less often) and keeps the same
        # phase as the agent's (half an agent interval of slack: the next agent probe may come a little early)
        self._prober_every = max(0.0, self.timings.prober_interval_s - self.timings.probe_interval_s / 2)
        # the prober's results go out as the real prober sends them, through its own batcher: `ProberResults`
        # messages, one per partition of PROBES, of what was checked within `PROBER_BATCH_S`
        # (`prober_batched = False`: one prober NodeProbe per node, the form before; `nodeheal bench wire` compares)
        self.prober_batched = True
        self._prober_batcher = ResultBatcher(
            cluster=spec.cluster, partitions=settings.probe_partitions, prefix=settings.prefix
        )
        self._prober_batch_since = 0.0  # when the oldest result not sent yet was added
        self._agent_nc: dict[str, Client] = {}
        self._tasks: list[asyncio.Task[Any]] = []
        self._subs: list[Any] = []
        self._sharded = False  # the probe shards publish the fleet's probes; this process keeps the world
        self._joined: dict[str, float] = {}  # with shards: machines that joined since, and when each is due
        self._orphan_flushes: set[asyncio.Future[None]] = set()  # flushes of connections that lost their server
        self._used: set[Client] = set()  # connections published on since their last flush
        self._stopping = False
        self.membership = 0  # bumped when a machine joins or leaves the fleet (machine rotation)
        self.spike_zone: str | None = None  # the zone of the zone crash spike (`zone_crash` faults)
        self._spike_racks: dict[str, float] = {}  # rack → its latest spike crash

    # ------------------------------------------------------------------ setup

    async def publish_inventory(self, kv: KeyValue) -> None:
        """Fill `nodeheal-inventory` the way the inventory watcher would (node and instance keys).

        A put whose PubAck did not come in time is sent again (a put of the same value is idempotent), at
        most `INVENTORY_PUT_ATTEMPTS` times: at 50,000 nodes (100,000 puts) on a loaded machine one
        late PubAck used to end the whole demo before it started ("starting the emulators: nats: timeout")."""
        sem = asyncio.Semaphore(256)

        async def put_key(key: str, body: bytes) -> None:
            for attempt in range(1, INVENTORY_PUT_ATTEMPTS + 1):
                try:
                    await kv.put(key, body)
                    return
                except TimeoutError:  # nats-py's TimeoutError is one too
                    if attempt == INVENTORY_PUT_ATTEMPTS:
                        raise
                    self.stats.inventory_put_retries += 1
                    log.warning("inventory put not acknowledged in time, sent again", extra={"key": key})
                    await asyncio.sleep(0.5 * attempt)

        async def put(inv: NodeInventory) -> None:
            async with sem:
                body = inv.model_copy(update={"updated_at": datetime.now(tz=UTC)}).to_json()
                await put_key(inventory_key(inv.cluster, inv.node), body)
                if inv.instance_id:
                    await put_key(instance_key(inv.instance_id), body)

        await asyncio.gather(*(put(inv) for inv in self.inventory))

    def agent(self, node: SimNode) -> SimAgent:
        """The node agent of this node's current boot (a reboot starts a new agent process)."""
        agent = self.agents.get(node.name)
        # the boot the agent was started in, not what it reads now: the host files always show the current
        # boot, so comparing with a fresh reading never saw a reboot and a rebooted node kept its old agent
        # (its kmsg ring and reader position)
        if agent is None or agent.boot_id != node.boot_id:
            fresh = SimAgent(node, cluster=self.spec.cluster, profile=self.agent_profile, work_dir=self.work_dir)
            if agent is not None:
                fresh.executed = agent.executed
            self.agents[node.name] = agent = fresh
        return agent

    async def start(self, *, prober_nc: Client | None, agent_nc: dict[str, Client], shards: Any = None) -> None:
        """`agent_nc`: the connection each node's agent speaks through (its user may publish that node's
        probes and subscribe to that node's commands); `prober_nc`: the active prober's. With `shards`
        (`nodeheal.sim.shard.ProbeShards`) the probes are published by the shard processes and this
        process keeps the world moving and tells them what changed."""
        self._prober_nc = prober_nc
        self._agent_nc = agent_nc
        # every node's agent process starts before the first probe round (as a fleet's agents are running
        # before nodeheal looks at them): created lazily, the first round cost ~4x a steady one (the agent's
        # start reads its per-boot facts), so at 50,000 nodes it took three times the interval and the
        # detector saw a fleet "silent" before it had seen any node twice
        for i, node in enumerate(self.nodes.values()):
            if node.agent_alive:
                self.agent(node)
            if i % 500 == 499:
                await asyncio.sleep(0)
        if not self.probes_only:
            for name in self.nodes:
                subject = cmd_subject(self.spec.cluster, name, prefix=self.settings.prefix)
                self._subs.append(await agent_nc[name].subscribe(subject, cb=self._on_command))
        if shards is None:
            self._tasks.append(asyncio.create_task(self._probe_loop(), name="sim-probes"))
        else:
            self._tasks.append(asyncio.create_task(self._world_loop(shards), name="sim-world"))

    async def _world_loop(self, shards: Any) -> None:
        self._sharded = True
        interval = self.timings.probe_interval_s
        while not self._stopping:
            now = self.clock()
            self.advance(now)
            if self.crashed:
                await self._report_crashes(now)
            shards.sync([n for n in self.touched if n.name not in self._joined], interval_s=interval)
            # machines that joined the fleet after the shards started (a replacement from RunInstances) are
            # probed here, with the real agent code, at the same interval: the shards own fixed nodes
            due = [name for name, at in self._joined.items() if now >= at and name in self.nodes]
            if due:
                iso = datetime.fromtimestamp(now, tz=UTC).isoformat()
                for name in due:
                    self._joined[name] = now + interval
                    try:
                        await self._publish_node(self.nodes[name], now=now, iso=iso)
                    except Exception:
                        self.stats.publish_errors += 1
                        log.exception("probe of %s failed", name)
                await self._flush_used()
            await asyncio.sleep(max(0.0, 0.1 - (self.clock() - now)))

    async def stop(self) -> None:
        # the probe loop ends at its next tick by itself: cancelled inside a flush, nats-py would later
        # complete a cancelled PING future and log an error
        self._stopping = True
        loops = [t for t in self._tasks if t.get_name() in ("sim-probes", "sim-world")]
        if loops:
            await asyncio.wait(loops, timeout=FLUSH_TIMEOUT_S + 1)
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        for sub in self._subs:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()

    # ------------------------------------------------------------------ probes

    async def _probe_loop(self) -> None:
        """Every node probed once per interval, in a fixed phase order (round robin), in ticks of 0.1 s.

        Publishing is bounded: after every `PUBLISH_BATCH` nodes the connections used are flushed (a
        PING answered once the server has read everything before it), so at most one batch per
        connection waits in this process; when the server or the network is slower than the schedule,
        the loop waits for it instead of buffering.

        When this machine cannot keep the requested rate, the cadence stretches evenly instead of the
        schedule falling behind cumulatively: at most `CATCH_UP_S` of overdue probes are caught up, the
        rest of the schedule moves later, and the round robin goes on, so every node is probed every
        interval × shortfall and none is starved (a cumulative backlog would leave whole stretches of
        the fleet unprobed for longer and longer). Each node's real gap between two probes is measured
        (`SimStats.interval_*`): the effective interval the report states."""
        nodes = list(self.nodes.values())
        n = len(nodes)
        interval = self.timings.probe_interval_s
        tick = 0.1
        start = self.clock()
        cursor = 0  # index of the next node due, in phase order
        cycle = 0
        membership = self.membership
        last_probe = [0.0] * n  # when each node (phase slot) was last probed; 0: not yet
        catch_up = max(TICK_NODES, int(n * CATCH_UP_S / interval))
        stats = self.stats
        while not self._stopping:
            now = self.clock()
            if membership != self.membership:
                # a machine joined or left (rotation): the schedule goes on from here over the new fleet
                membership, nodes = self.membership, list(self.nodes.values())
                n = max(1, len(nodes))
                cursor = min(cursor, len(nodes) - 1) if nodes else 0
                start = now - (cycle * n + cursor) / n * interval
                last_probe = [0.0] * n  # the phase slots moved: gaps are measured again from the next probe
                catch_up = max(TICK_NODES, int(n * CATCH_UP_S / interval))
            if not self.probes_only:
                self.advance(now)
                if self.crashed:
                    await self._report_crashes(now)
            due_total = int((now - start) / interval * n)
            behind = due_total - (cycle * n + cursor)
            if behind > catch_up:
                # the machine gave less than the requested rate: move the schedule, not the backlog
                start += (behind - catch_up) / n * interval
                stats.stretched_s += (behind - catch_up) / n * interval
                due_total = cycle * n + cursor + catch_up
            iso = datetime.fromtimestamp(now, tz=UTC).isoformat()
            batch = done = 0
            # at most `TICK_NODES` before the clock is read again (a loop behind catches up in steps,
            # with fresh timestamps and the world moving on)
            while cycle * n + cursor < due_total and done < TICK_NODES and not self._stopping:
                node = nodes[cursor]
                try:
                    await self._publish_node(node, now=now, iso=iso)
                except Exception:
                    stats.publish_errors += 1
                    log.exception("probe of %s failed", node.name)
                previous, last_probe[cursor] = last_probe[cursor], now
                if previous:
                    gap = now - previous
                    if cycle >= WARM_CYCLES:  # the effective interval of the steady state
                        stats.interval_sum_s += gap
                        stats.intervals += 1
                        stats.interval_max_s = max(stats.interval_max_s, gap)
                    stats.interval_last_s = gap
                    stats.lag_s_last = max(0.0, gap - interval - tick)
                    stats.lag_s_max = max(stats.lag_s_max, stats.lag_s_last)
                cursor += 1
                if cursor == n:
                    cursor = 0
                    cycle += 1
                batch += 1
                done += 1
                if batch >= PUBLISH_BATCH:
                    batch = 0
                    await self._flush_used()
            await self._flush_used()
            await asyncio.sleep(max(0.0, tick - (self.clock() - now)))

    async def _flush_used(self) -> None:
        """Wait until the server has read what the connections used since the last call sent.

        A connection whose server is gone (killed, restarting) is reconnecting: what it was given waits in
        its buffer and goes out on reconnect, like a real agent's outbox. It is not waited for — neither
        when it is reconnecting already nor when it loses its server during the flush (nats-py drops the
        flush's PING when it reconnects, so the flush would end only at `FLUSH_TIMEOUT_S`): waiting for it
        stalled every node's probes for 10 s when `--nats-cluster 3` killed a server, and a fleet whose
        probes all stop looks dark rack by rack (the nodes of that one connection are late, not all)."""
        await self._send_prober_results()
        used, self._used = self._used, set()
        reconnecting = {conn for conn in used if not conn.is_connected}
        self.stats.flush_skipped += len(reconnecting)
        used -= reconnecting
        if not used:
            return
        started = time.monotonic()
        flushes = {asyncio.ensure_future(conn.flush(timeout=FLUSH_TIMEOUT_S)): conn for conn in used}
        # a connection that reconnected (to another server of the cluster) since the flush began dropped
        # the flush's PING: nats-py forgets it on reconnect, so the flush would only end at its timeout
        reconnects = {conn: conn.stats["reconnects"] for conn in used}
        pending = set(flushes)
        while pending:
            _, pending = await asyncio.wait(pending, timeout=FLUSH_POLL_S)
            lost = {
                task
                for task in pending
                if not flushes[task].is_connected or flushes[task].stats["reconnects"] != reconnects[flushes[task]]
            }
            if lost:
                # left to end by themselves (nats-py completes or times out its PING future; a cancelled one
                # it would complete later and log an error)
                self.stats.flush_skipped += len(lost)
                pending -= lost
                for task in lost:
                    self._orphan_flushes.add(task)
                    task.add_done_callback(_forget_flush(self._orphan_flushes))
        waited = time.monotonic() - started
        self.stats.flush_wait_s += waited
        self.stats.flush_wait_s_max = max(self.stats.flush_wait_s_max, waited)
        self.stats.flush_timeouts += sum(
            1 for task in flushes if task.done() and not task.cancelled() and task.exception() is not None
        )

    def probe_noise(self) -> float:
        """The jitter of one agent probe's readings (from the noise generator, never the faults' one)."""
        return self.noise_rng.uniform(-0.1, 0.1)

    async def _publish_node(self, node: SimNode, *, now: float, iso: str) -> None:
        """The node's agent probe (the real `ProbeCollector` over the simulated host) and the active
        prober's view of the node. Both are core publishes into the stream's subjects: JetStream stores
        them without a PubAck round trip per probe, which a Python
        simulator of 50,000 nodes cannot afford. The real agent publishes with acks and an outbox."""
        assert self._prober_nc is not None
        subject = self._subjects[node.name]
        noise = self.probe_noise()
        if node.agent_alive and not node.partitioned:
            agent = self.agent(node)
            if not self.probes_only:
                node.before_probe()
            for line in node.pending_kernel:
                agent.kmsg.log(line, now=now)
            node.pending_kernel.clear()
            conn: Client | None = self._agent_nc[node.name]
            if conn is not None and not conn.is_connected:
                # the agent's server is away (restarting, failing over): the agent keeps its kernel lines
                # (in its kmsg reader, for the next probe) and probes again once connected — collecting and
                # buffering probes nobody can take would only burn the CPU the reconnects need (300 TLS
                # handshakes after a restart) and end in "outbound buffer limit exceeded" for every node
                self.stats.probes_held += 1
                conn = None
        else:
            conn = None
        if conn is not None:
            # CPU, not wall (the machine is shared), measured on every `COLLECT_SAMPLE`-th probe: reading the
            # thread's CPU clock is a system call, under contention a costly one
            timed = self.stats.collected % COLLECT_SAMPLE == 0
            started = time.thread_time() if timed else 0.0
            probe = await agent.collect(now=now, noise=noise)
            body = probe.to_json()
            if timed:
                self.stats.collect_s += time.thread_time() - started
                self.stats.collect_timed += 1
            self.stats.collected += 1
            await conn.publish(subject, body)  # as the agent does: no Nats-Msg-Id (docs/design.md, PROBES)
            self._used.add(conn)
            self.stats.probes_published += 1
        if now < node.prober_next:
            return  # not in this round of the prober
        if not self._prober_nc.is_connected:
            self.stats.probes_held += 1  # the prober probes again once connected
            return
        node.prober_next = now + self._prober_every
        if self.prober_batched:
            if not len(self._prober_batcher):
                self._prober_batch_since = now
            for batch in self._prober_batcher.add(node.name, node.prober_checks()):
                await self._send_prober_batch(batch)
            return
        body_dict = node.prober_probe(time_iso=iso)
        prober_subject = self._prober_subjects[node.name]
        await self._prober_nc.publish(prober_subject, orjson.dumps(body_dict))
        self._used.add(self._prober_nc)
        self.stats.probes_published += 1

    async def _send_prober_batch(self, batch: Batch) -> None:
        assert self._prober_nc is not None
        # a core publish like the probes', with the batch's id: a copy is stored once
        await self._prober_nc.publish(batch.subject, batch.body, headers={"Nats-Msg-Id": batch.msg_id})
        self._used.add(self._prober_nc)
        self.stats.probes_published += 1
        self.stats.prober_results += batch.results

    async def _send_prober_results(self) -> None:
        """The prober's results collected for `PROBER_BATCH_S` or longer, one message per partition."""
        if not len(self._prober_batcher) or self.clock() - self._prober_batch_since < PROBER_BATCH_S:
            return
        if self._prober_nc is None or not self._prober_nc.is_connected:
            return  # kept until the prober's connection is back
        self._prober_batcher.seq += 1
        for batch in self._prober_batcher.drain():
            await self._send_prober_batch(batch)

    # ------------------------------------------------------------------ world clock

    def advance(self, now: float) -> None:
        """Move every timed process forward: reboots finishing, auto-reboots, partitions ending."""
        for node in list(self.timed):
            if node.back_at is None and node.auto_reboot_at is None:
                self.timed.discard(node)
            elif node.back_at is not None and now >= node.back_at:
                node.boot(now)
                self.boots.append((now, node.name))
                self._close_fault(node, now, fixed_by="reboot")
            elif node.auto_reboot_at is not None and now >= node.auto_reboot_at:
                node.power_off()
                node.auto_reboot_at = None
                node.back_at = now + self.timings.reboot_s
        for node, at in list(self.going_dark.items()):
            if now >= at:
                node.partitioned = True
                del self.going_dark[node]
        if self.partition is not None:
            rack, _start, end = self.partition
            if now >= end:
                self.going_dark.clear()
                for node in self.racks[rack]:
                    node.partitioned = False
                    self._close_fault(node, now, fixed_by="partition_healed")
                self.partition = None
        for name, fault in list(self.open_faults.items()):
            node = self.nodes[name]
            if fault.fault_class == "rack_partition":
                continue
            if node.healthy() and node.back_at is None and node.auto_reboot_at is None and node.powered:
                if fault.fault_class in ("cloud_reboot", "cloud_redeploy") and fault.fixed_by is None:
                    continue  # the maintenance has not happened yet
                self._close_fault(node, now, fixed_by=fault.fixed_by or "recovered")

    def _close_fault(self, node: SimNode, now: float, *, fixed_by: str) -> None:
        fault = self.open_faults.get(node.name)
        if fault is None:
            return
        if fault.fault_class in ("cloud_reboot", "cloud_redeploy") and fixed_by != "reboot":
            return
        if fixed_by == "reboot" and fault.fault_class in ("cloud_reboot", "cloud_redeploy"):
            fault.fixed_by = "maintenance_executed"
        if node.healthy() or fixed_by in ("reboot", "partition_healed"):
            fault.ended_at = now
            fault.fixed_by = fault.fixed_by or fixed_by
            del self.open_faults[node.name]

    # ------------------------------------------------------------------ cloud / kubernetes side effects

    def on_rebooted(self, node: SimNode, now: float) -> None:
        """The cloud brought the instance back (after a reboot, redeploy or executed maintenance)."""
        self.stats.reboots += 1
        self.boots.append((now, node.name))
        self._close_fault(node, now, fixed_by="reboot")

    def wipe_local_disk(self, node: SimNode) -> None:
        """A redeploy re-initialised the local disks: no garbage, a fresh system."""
        node.base_used_pct, node.old_logs_bytes, node.unused_image_bytes, node.garbage_on_disk = 30.0, 0, 0, 0
        if self.work_dir is not None:
            shutil.rmtree(self.work_dir / escape_token(node.name), ignore_errors=True)
        self.agents.pop(node.name, None)
        self.crashed.discard(node.name)  # the crash evidence was on the wiped disks

    def on_node_drained(self, node_name: str) -> None:
        node = self.nodes.get(node_name)
        if node is not None:
            node.drained = True
            node.storm = False  # the runaway workload was evicted

    # ------------------------------------------------------------------ machines leaving and joining

    def remove_node(self, name: str, now: float) -> SimNode | None:
        """The machine was released (DeleteInstance): it is no longer probed, nor does it answer; its open
        fault ends with it."""
        node = self.nodes.pop(name, None)
        self._joined.pop(name, None)
        if node is None:
            return None
        fault = self.open_faults.pop(name, None)
        if fault is not None:
            fault.ended_at, fault.fixed_by = now, fault.fixed_by or "replaced"
        self.timed.discard(node)
        self.touched.discard(node)
        self.crashed.discard(name)
        self.going_dark.pop(node, None)
        rack = self.racks.get(node.inv.rack or "")
        if rack is not None and node in rack:
            rack.remove(node)
        self.membership += 1
        return node

    async def add_node(self, inv: NodeInventory, *, now: float, conn: Client) -> SimNode:
        """A new machine (RunInstances) boots and its agent starts: probed from the next tick, with the real
        agent code, speaking through `conn` (its own agent user)."""
        node = SimNode(inv=inv, index=max((n.index for n in self.nodes.values()), default=-1) + 1, booted_at=now)
        self.nodes[inv.node] = node
        if inv.instance_id:
            self.by_instance[inv.instance_id] = node
        self.racks.setdefault(inv.rack or "", []).append(node)
        self._subjects[inv.node] = probe_subject(self.spec.cluster, inv.node, prefix=self.settings.prefix)
        self._prober_subjects[inv.node] = prober_probe_subject(self.spec.cluster, inv.node, prefix=self.settings.prefix)
        self._agent_nc[inv.node] = conn
        subject = cmd_subject(self.spec.cluster, inv.node, prefix=self.settings.prefix)
        self._subs.append(await conn.subscribe(subject, cb=self._on_command))
        self.boots.append((now, inv.node))
        self.membership += 1
        if self._sharded:
            self._joined[inv.node] = now  # probed by the world loop (the shards own fixed nodes)
        return node

    # ------------------------------------------------------------------ node agent commands

    async def _on_command(self, msg: Msg) -> None:
        """What the agent's command subscription does (`nodeheal.agent.app`): decode, run the real
        `CommandExecutor` (allow-lists, idempotence per action id), reply. A dead, hung or cut-off
        node does not answer: the requester times out, as with a real one."""
        node = self.nodes.get(unescape_token(msg.subject.rsplit(".", 1)[-1]))
        if node is None or not node.agent_alive or node.partitioned:
            return
        own = cmd_subject(self.spec.cluster, node.name, prefix=self.settings.prefix)
        if delivery_refusal(msg.subject, msg.reply, own=own) is not None:  # not a command request: not run
            return
        try:
            command = NodeCommand.model_validate_json(msg.data)
        except ValidationError as exc:
            detail = f"malformed command: {exc.errors()[:1]}; send a nodeheal.cmd/v1 NodeCommand"
            result = NodeCommandResult(action_id="", node=node.name, ok=False, detail=detail)
            await msg.respond(result.to_json())
            return
        conn = self._agent_nc.get(node.name)
        epoch = connection_epoch(conn) if conn is not None else 0
        result = await self.agent(node).execute(command)
        self.touched.add(node)  # its `commands_done` reaches the probe shard that collects its probes
        self.stats.commands_answered += 1
        if conn is not None:
            await answer(msg, result.to_json(), nc=conn, epoch=epoch, node=node.name)
        elif msg.reply:
            await msg.respond(result.to_json())

    def executed_commands(self) -> list[dict[str, Any]]:
        """Every command the agents ran (the side-effect log the referee reads), oldest first."""
        out = [
            {
                "at": at,
                "node": command.node,
                "action_id": command.action_id,
                "command": command.command,
                "target": command.target,
                "dry_run": command.dry_run,
                "ok": result.ok,
                "detail": result.detail,
                "freed_bytes": result.freed_bytes,
                "ran": ran,
            }
            for agent in self.agents.values()
            for at, command, result, ran in agent.executed
        ]
        return sorted(out, key=lambda c: float(c["at"]))

    # ------------------------------------------------------------------ faults

    def _pick_node(
        self, *, avoid_rack: str | None = None, kernel: str | None = None, quiet_rack: bool = False
    ) -> SimNode | None:
        # nodes that had no fault in this run first: two unrelated faults on one host look like
        # failing hardware to the diagnoser, and rightly so
        struck = {f.node for f in self.truth}
        # quiet_rack: a rack with no open fault (its budget slots are free for a rotation)
        busy = {self.nodes[name].inv.rack for name in self.open_faults if name in self.nodes} if quiet_rack else set()
        candidates = [
            n
            for n in self.nodes.values()
            if n.name not in self.open_faults
            and n.healthy()
            and n.back_at is None
            and (avoid_rack is None or n.inv.rack != avoid_rack)
            and (kernel is None or n.inv.kernel == kernel)
            and n.inv.rack not in busy
        ]
        fresh = [n for n in candidates if n.name not in struck]
        pool = fresh or candidates
        return self.rng.choice(pool) if pool else None

    def inject(self, planned: PlannedFault) -> list[InjectedFault]:
        now = self.clock()
        if planned.fault_class == "rack_partition":
            return self._inject_partition(now)
        busy_rack = self.partition[0] if self.partition else None
        kernel = self.spec.bad_kernel if planned.fault_class == "bad_kernel_crash" else None
        if planned.fault_class == "zone_crash":
            node = self._pick_spike_node(now)
        else:
            hardware = planned.kernel_class in HARDWARE_CRASH_CLASSES
            node = self._pick_node(avoid_rack=busy_rack, kernel=kernel, quiet_rack=hardware)
        if node is None:
            return []
        fault = InjectedFault(
            fault_id=f"f{len(self.truth) + 1:04d}",
            fault_class=planned.fault_class,
            node=node.name,
            injected_at=now,
            kernel_class=planned.kernel_class,
            rack=node.inv.rack,
            zone=node.inv.zone,
            expected=expected_causes(planned.fault_class, planned.kernel_class),
            category=expected_category(planned.fault_class, planned.kernel_class),
        )
        self.touched.add(node)
        self._apply(node, fault, now)
        self.truth.append(fault)
        self.open_faults[node.name] = fault
        return [fault]

    def _hardware_zones(self) -> set[str]:
        """Zones of the machines that crashed on failing hardware (their rotation needs the zone calm)."""
        return {f.zone or "" for f in self.truth if f.kernel_class in HARDWARE_CRASH_CLASSES}

    def _pick_spike_node(self, now: float) -> SimNode | None:
        """A node of the spike's zone (chosen at its first crash: not the partitioned rack's zone, so the
        two storms stay apart), not on the bad kernel, in the zone's rack whose last spike crash is the
        oldest (the crashes go round the racks)."""
        if self.spike_zone is None:
            racks = {n.inv.rack: n.inv.zone for n in self.nodes.values()}
            dark = racks.get(self.partition_log[0]) if self.partition_log else None
            zones = sorted({n.inv.zone or "" for n in self.nodes.values()} - {dark or ""})
            # and not the zone of a machine being rotated out (its storm guard would hold the rotation)
            zones = [z for z in zones if z not in self._hardware_zones()] or zones
            if not zones:
                return None
            self.spike_zone = self.rng.choice(zones)
        struck = {f.node for f in self.truth}
        candidates = [
            n
            for n in self.nodes.values()
            if n.inv.zone == self.spike_zone
            and n.name not in self.open_faults
            and n.name not in struck
            and n.healthy()
            and n.back_at is None
            and n.inv.kernel != self.spec.bad_kernel
        ]
        if not candidates:
            return None
        rack = min({n.inv.rack or "" for n in candidates}, key=lambda r: (self._spike_racks.get(r, 0.0), r))
        self._spike_racks[rack] = now
        return self.rng.choice([n for n in candidates if (n.inv.rack or "") == rack])

    def _apply(self, node: SimNode, fault: InjectedFault, now: float) -> None:
        t = self.timings
        samples = kernel_samples()
        release = node.inv.kernel or KERNELS[0]
        match fault.fault_class:
            case "power_loss":
                node.power_off()
            case "hang":
                node.hung = True
            case "load_storm":
                node.storm = True
            case "disk_fill":
                node.disk_fill_left = max(0.0, 99.0 - node.disk_used)
                node.disk_fill_per_s = node.disk_fill_left / max(1.0, t.disk_fill_to_full_s / t.probe_interval_s)
            case "fd_leak":
                node.fd_allocated = int(node.fd_max * 0.97)
            case "kubelet_crash":
                node.services["kubelet"] = "failed"
            case "runtime_crash":
                node.services["containerd"] = "failed"
            case "ops_agent_crash":
                node.services["ops-agent"] = "failed"
            case "disk_failure":
                io_lines, fs_lines = disk_failure_lines(samples)
                node.pending_kernel.extend(io_lines)
                node.pending_kernel.extend(fs_lines)
                node.readonly = True
            case "bad_kernel_crash":
                # one bug of the release on every node that runs it: a panic that names its function, with its trace
                # (crash_text: the public panic sample identifies no bug, and the diagnoser keeps it to its host)
                rng = host_rng(node.name, node.boot_id)
                self._crash(node, bad_kernel_panic_lines(release=release, uptime_s=now - node.booted_at, rng=rng), now)
            case "zone_crash":
                # one crash signature across the zone: a hard lockup that panics, stuck in the same function under the
                # same trace on every node (the same bucket), the numbers of each host its own
                rng = host_rng(node.name, node.boot_id)
                lockup = zone_lockup_lines(
                    release=release, cpu_model=node.inv.cpu_model or "", uptime_s=now - node.booted_at, rng=rng
                )
                self._crash(node, lockup, now)
            case "cloud_reboot" | "cloud_redeploy":
                event_type = (
                    "SystemMaintenance.Reboot"
                    if fault.fault_class == "cloud_reboot"
                    else ("SystemMaintenance.Redeploy")
                )
                if self.cloud is not None and node.inv.instance_id:
                    self.cloud.schedule_maintenance(
                        instance_id=node.inv.instance_id,
                        event_type=event_type,
                        not_before=datetime.fromtimestamp(now + self.rng.uniform(*t.maintenance_notice_s), tz=UTC),
                    )
            case "kernel_fault":
                klass = fault.kernel_class or "soft_lockup"
                lines = self.rng.choice(samples[klass])
                if klass in FATAL_KERNEL_CLASSES:
                    self._crash(node, lines, now)
                else:
                    node.pending_kernel.extend(lines)
                    self._kernel_side_effects(node, klass, now)
            case _:
                msg = f"unknown fault class {fault.fault_class!r}"
                raise ValueError(msg)

    def _crash(self, node: SimNode, lines: list[str], now: float) -> None:
        """The kernel dies: its last words go to pstore (and, on half of the nodes, kdump's
        vmcore-dmesg.txt), never to a probe; the machine goes dark at once and reboots by itself
        (kernel.panic=N / kdump's reboot after the dump). The agent of the next boot reads the files
        and sends the crash report (`_report_crashes`)."""
        if self.work_dir is not None:
            leave_crash_evidence(
                self.work_dir / escape_token(node.name),
                boot_id=node.boot_id,
                lines=with_kernel_release(lines, node.inv.kernel) if node.inv.kernel else lines,
                at=now,
                kdump=self.rng.random() < 0.5,
            )
            self.crashed.add(node.name)
        node.hung = False
        node.auto_reboot_at = now  # dark from the next world step, back `reboot_s` later
        self.timed.add(node)

    async def _report_crashes(self, now: float) -> None:
        """The first thing the agent of a rebooted node does after its probe: the previous boot's
        crash evidence, read by the agent's own `CrashCollector`, published on CRASHES with the
        agent's `Nats-Msg-Id` (once per boot)."""
        assert self.work_dir is not None
        for name in sorted(self.crashed):
            node = self.nodes[name]
            if not node.agent_alive or node.partitioned or node.back_at is not None or name not in self._agent_nc:
                continue
            collector = crash_collector(self.work_dir / escape_token(name), cluster=self.spec.cluster, node=name)
            report = await collector.check(
                boot_id=node.boot_id,
                kernel_release=node.inv.kernel,
                os_image=node.inv.os_image,
                uptime_s=max(0.0, now - node.booted_at),
            )
            if report is None:
                continue  # still the boot that crashed
            subject = crash_subject(self.spec.cluster, name, prefix=self.settings.prefix)
            msg_id = crash_msg_id(cluster=self.spec.cluster, node=name, boot_id=report.boot_id)
            try:
                await self._agent_nc[name].publish(subject, report.to_json(), headers={"Nats-Msg-Id": msg_id})
            except Exception:
                log.exception("crash report of %s not sent; retried", name)
                continue
            collector.reported(report)
            self.crashed.discard(name)
            self.stats.crash_reports += 1

    def _kernel_side_effects(self, node: SimNode, klass: str, now: float) -> None:
        """Keep the world consistent with the log lines a class emits (fatal classes: `_crash`)."""
        if klass in ("kubelet_down", "kubelet_unhealthy_pleg"):
            node.services["kubelet"] = "failed"
        elif klass == "container_runtime_down":
            node.services["containerd"] = "failed"
        elif klass in ("ext4_readonly_remount", "xfs_error"):
            node.readonly = True
        elif klass == "too_many_open_files":
            node.fd_allocated = int(node.fd_max * 0.97)
        elif klass == "disk_full_eviction":
            node.fill_disk(97.0 - node.disk_used)
        elif klass == "planned_shutdown_reboot":
            node.auto_reboot_at = now + self.timings.probe_interval_s * 1.2
            self.timed.add(node)
        elif klass in ("soft_lockup", "hung_task", "rcu_stall"):
            node.load_factor = 0.2

    def _inject_partition(self, now: float) -> list[InjectedFault]:
        struck = {f.node for f in self.truth}
        healthy_racks = [
            rack
            for rack, members in sorted(self.racks.items())
            if len(members) >= 8 and all(m.name not in self.open_faults and m.healthy() for m in members)
        ]
        # a rack none of whose nodes had a fault yet, when there is one: a node still settling from an
        # earlier fault would blur the storm scenario's ground truth
        untouched = [rack for rack in healthy_racks if not any(m.name in struck for m in self.racks[rack])]
        healthy_racks = untouched or healthy_racks
        # not in the zone of a machine being rotated out: a dark rack makes its zone a storm, and the storm
        # guard would hold the rotation until the zone recovers
        calm = [r for r in healthy_racks if self.racks[r] and self.racks[r][0].inv.zone not in self._hardware_zones()]
        healthy_racks = calm or healthy_racks
        if not healthy_racks:
            return []
        rack = self.rng.choice(healthy_racks)
        end = now + self.timings.partition_s
        self.partition = (rack, now, end)
        self.partition_log = self.partition
        out = []
        members = list(self.racks[rack])
        self.rng.shuffle(members)
        spread = min(self.timings.partition_spread_s, self.timings.partition_s / 2)
        for i, node in enumerate(members):
            self.touched.add(node)
            # one switch port after another: the rack goes dark over `spread` seconds, not at once
            dark_at = now + spread * i / max(1, len(members) - 1)
            self.going_dark[node] = dark_at
            self.dark_spans[node.name] = (dark_at, end)
            fault = InjectedFault(
                fault_id=f"f{len(self.truth) + 1:04d}",
                fault_class="rack_partition",
                node=node.name,
                injected_at=dark_at,
                rack=rack,
                zone=node.inv.zone,
                expected=expected_causes("rack_partition", None),
                category="network",
            )
            self.truth.append(fault)
            self.open_faults[node.name] = fault
            out.append(fault)
        return out

    # ------------------------------------------------------------------ health figures

    def sample_health(self) -> dict[str, float]:
        n = len(self.nodes)
        online = n - sum(1 for x in self.touched if not (x.powered and not x.partitioned))
        healthy = n - sum(1 for x in self.touched if not x.healthy())
        sample = {"t": self.clock(), "online": online / n, "healthy": healthy / n}
        self.stats.samples.append(sample)
        return sample

    def escaped(self, node: str) -> str:
        return escape_token(node)


def _forget_flush(orphans: set[asyncio.Future[None]]) -> Callable[[asyncio.Future[None]], None]:
    def done(task: asyncio.Future[None]) -> None:
        orphans.discard(task)
        if not task.cancelled():
            task.exception()  # retrieved: a timed-out flush of a lost connection is expected, not an error

    return done
