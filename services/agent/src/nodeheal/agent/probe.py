"""Turning one look at the host into a `NodeProbe`, and the bounded outbox that keeps probes while
NATS is away. No NATS here.

Full probes and heartbeats: the collector reads everything (systemctl, every file system, fd holders)
only every `full_every` probes, staggered by node, and sends a cheap heartbeat (`full=False`: boot id,
uptime, load, file handles, new kernel lines) in between. A full probe also comes at once when a cheap
reading says something changed: the first probe (the agent started, e.g. after a boot), a new boot id,
file handles at the fd-holder threshold (the full probe names the holders), and the probe after a node
command (`want_full`). New kernel lines ride in whichever probe comes next, heartbeat or full, so a kernel
fault is seen at once; they do not force a full probe (a chatty kernel would make every probe full).
docs/node-agent.md has the arithmetic of the 1-5-10 promise."""

from __future__ import annotations

import asyncio
import json
import logging
import time
import zlib
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from nodeheal.agent.host import HostReader, top_fd_holders
from nodeheal.agent.kmsg import KernelLogSource
from nodeheal.agent.systemd import Systemd, UnitStatus
from nodeheal.schemas.base import trusted, utcnow
from nodeheal.schemas.health import FD_CLEAR_RATIO
from nodeheal.schemas.ids import new_id
from nodeheal.schemas.probe import MAX_KERNEL_LINES, PROBE_SCHEMA, FdHolder, NodeProbe, Reachability, ServiceState

log = logging.getLogger("nodeheal.agent.probe")

FULL_WITHIN_S: Final = 30.0
"""The default cadence gives a full probe at least this often: a dead kubelet, a full disk or a failed
mount is seen within 30 s plus the transport, inside the 1-minute detection budget."""


def full_every_for(interval_s: float, full_every: int | None) -> int:
    """Probes per full probe: `full_every` when set, else as many intervals as fit in `FULL_WITHIN_S`
    (6 at 5 s, 3 at 10 s, 1 at 30 s or more)."""
    if full_every is not None:
        return max(1, full_every)
    return max(1, int(FULL_WITHIN_S / interval_s + 1e-9))


def full_phase(node: str, full_every: int) -> int:
    """Where in the `full_every` cycle this node's full probes fall: spread by node name, so a fleet
    whose agents started together does not collect its full probes in the same interval."""
    return zlib.crc32(node.encode()) % full_every if full_every > 1 else 0


class SequenceCounter:
    """Monotonic probe sequence across restarts: continues from the state file when there is one,
    otherwise starts at the current Unix second (greater than any earlier run at ≤ 1 probe/s)."""

    def __init__(self, *, state_file: Path | None) -> None:
        self.state_file = state_file
        start = int(time.time())
        if state_file is not None:
            try:
                start = int(json.loads(state_file.read_text())["seq"]) + 1
            except (OSError, ValueError, KeyError, TypeError):
                pass
        self._next = start

    def take(self) -> int:
        seq = self._next
        self._next += 1
        if self.state_file is not None:
            try:
                self.state_file.write_text(json.dumps({"seq": seq}))
            except OSError as exc:
                log.warning("cannot save probe sequence", extra={"error": str(exc)})
        return seq


@dataclass
class ProbeCollector:
    cluster: str
    node: str
    host: HostReader
    systemd: Systemd
    services: tuple[str, ...]
    kernel_log: KernelLogSource | None
    max_kernel_lines: int
    sequence: SequenceCounter
    fd_holders_at: float = FD_CLEAR_RATIO
    full_every: int = 1
    """1: every probe is full; k: a full probe every k probes (staggered by node) and heartbeats between."""
    collected: int = field(default=0, init=False)
    full_reason: str = field(default="", init=False)
    """Why the last probe was full ("" for a heartbeat): first probe, new boot, node command, file handles,
    cadence."""
    _want_full: str | None = field(default="first probe", init=False, repr=False)
    _last_boot: str | None = field(default=None, init=False, repr=False)
    _boot_facts: tuple[str, str | None, str | None, int | None] | None = field(default=None, init=False, repr=False)
    """(boot id, kernel release, OS image, online CPUs) as read at the first probe of this boot."""
    _beat: tuple[Reachability, ...] | None = field(default=None, init=False, repr=False)
    _last_services: tuple[tuple[UnitStatus, ...], tuple[ServiceState, ...]] | None = field(
        default=None, init=False, repr=False
    )
    _phase: tuple[str, int, int] | None = field(default=None, init=False, repr=False)
    """(node, full_every, its `full_phase`): computed again only when one of them changes."""
    _validated: tuple[object, ...] | None = field(default=None, init=False, repr=False)
    """The per-boot values (cluster, node, boot id, boot facts, heartbeat) of the last probe built validated:
    a heartbeat with the same values is assembled without validating them again (`_probe`)."""

    def boot_facts(self, boot_id: str | None) -> tuple[str | None, str | None, int | None]:
        """Kernel release, OS image and online CPUs: read once per boot (a new boot id reads them again;
        a fact that could not be read is tried again at the next probe)."""
        cached = self._boot_facts
        if cached is not None and boot_id is not None and cached[0] == boot_id:
            return cached[1], cached[2], cached[3]
        facts = (self.host.kernel_release(), self.host.os_image(), self.host.cpu_count())
        if boot_id is not None and None not in facts:
            self._boot_facts = (boot_id, *facts)
        return facts

    @property
    def _heartbeat(self) -> tuple[Reachability, ...]:
        beat = self._beat
        if beat is None or beat[0].target != self.node:
            beat = self._beat = (Reachability(check="agent", target=self.node, ok=True),)
        return beat

    def want_full(self, reason: str) -> None:
        """The next probe is a full one (a node command ran: its verification waits for one)."""
        if self._want_full is None:
            self._want_full = reason

    def _full_due(self, *, boot_id: str | None, fd_high: bool) -> str:
        """Why this probe must be full, or "" for a heartbeat."""
        if self._want_full is not None:
            return self._want_full
        if boot_id != self._last_boot:
            return "new boot"
        if fd_high:
            return "file handles"
        k = self.full_every
        if k <= 1:
            return "cadence"
        phase = self._phase
        if phase is None or phase[0] != self.node or phase[1] != k:
            phase = self._phase = (self.node, k, full_phase(self.node, k))
        if (self.collected + phase[2]) % k == 0:
            return "cadence"
        return ""

    async def collect(self) -> NodeProbe:
        self.host.problems.clear()
        boot_id = self.host.boot_id()
        kernel_release, os_image, cpu_count = self.boot_facts(boot_id)
        kernel_lines: tuple[str, ...] = ()
        dropped = 0
        if self.kernel_log is not None:
            try:
                batch = await self.kernel_log.read_new(max_lines=self.max_kernel_lines)
                kernel_lines, dropped = batch.lines, batch.dropped
            except Exception as exc:
                self.host.problems.append(f"kernel log: {exc}")
        file_handles = self.host.file_handles()
        fd_high = file_handles is not None and file_handles.allocated >= self.fd_holders_at * file_handles.max
        reason = self._full_due(boot_id=boot_id, fd_high=fd_high)
        self.collected += 1
        self.full_reason = reason
        services: tuple[ServiceState, ...] = ()
        holders: tuple[FdHolder, ...] = ()
        if reason:
            self._want_full = None
            self._last_boot = boot_id
            services, holders = await self._full_parts(fd_high=fd_high)
        probe = self._probe(
            seq=self.sequence.take(),
            boot_id=boot_id,
            uptime_s=self.host.uptime_s(),
            load=self.host.load(),
            cpu_count=cpu_count,
            filesystems=self.host.filesystems() if reason else (),
            file_handles=file_handles,
            fd_holders=holders,
            services=services,
            kernel_log=kernel_lines,
            kernel_log_dropped=dropped,
            kernel_release=kernel_release,
            os_image=os_image,
            full=bool(reason),
        )
        if self.host.problems:
            log.warning("probe incomplete", extra={"node": self.node, "problems": list(self.host.problems)})
        return probe

    def _probe(self, **values: Any) -> NodeProbe:
        """The probe, validated — except a heartbeat whose every value is already known to be valid.

        A heartbeat (5 of every 6 probes at the default cadence) carries the same per-boot values as the
        last validated probe (cluster, node, boot id, boot facts, the agent's reachability entry) and
        readings that are validated models already (`LoadAverage`, `FileHandles` from the host reader) or
        plain numbers whose bounds are checked here (sequence, uptime, kernel lines and the dropped count).
        Such a heartbeat is assembled without pydantic validating it again (`nodeheal.schemas.base.trusted`),
        the same instance field for field (tests/unit/cloud_events/test_agent_probe_fast.py); anything else —
        every full probe, the first probe of a boot, a fact that changed, a number out of bounds — is
        built validated, so a bad reading still fails as it always did."""
        head = (
            self.cluster,
            self.node,
            values["boot_id"],
            values["cpu_count"],
            values["kernel_release"],
            values["os_image"],
            self._heartbeat,
        )
        uptime = values["uptime_s"]
        if (
            not values["full"]
            and head == self._validated
            and values["seq"] >= 0
            and (uptime is None or uptime >= 0.0)
            and len(values["kernel_log"]) <= MAX_KERNEL_LINES
            and values["kernel_log_dropped"] >= 0
        ):
            # in the model's field order: the serializer writes the keys in the order of the instance's values
            return trusted(
                NodeProbe,
                {
                    "schema_": PROBE_SCHEMA,
                    "id": new_id(),
                    "time": utcnow(),
                    "cluster": self.cluster,
                    "node": self.node,
                    "source": "agent",
                    "seq": values["seq"],
                    "boot_id": values["boot_id"],
                    "uptime_s": uptime,
                    "reachability": head[-1],
                    "load": values["load"],
                    "cpu_count": values["cpu_count"],
                    "filesystems": values["filesystems"],
                    "file_handles": values["file_handles"],
                    "services": values["services"],
                    "kernel_log": values["kernel_log"],
                    "kernel_log_dropped": values["kernel_log_dropped"],
                    "kernel_release": values["kernel_release"],
                    "os_image": values["os_image"],
                    "ready": None,
                    "fd_holders": values["fd_holders"],
                    "full": False,
                },
            )
        probe = NodeProbe(cluster=self.cluster, node=self.node, source="agent", reachability=head[-1], **values)
        self._validated = head
        return probe

    async def _full_parts(self, *, fd_high: bool) -> tuple[tuple[ServiceState, ...], tuple[FdHolder, ...]]:
        """What only a full probe carries besides the file systems: the units' states and, when handles
        run high, who holds them."""
        services: tuple[ServiceState, ...] = ()
        if self.services:
            try:
                statuses = tuple(await self.systemd.status(self.services))
                last = self._last_services
                if last is not None and last[0] == statuses:
                    services = last[1]  # unchanged since the last probe: the same (immutable) values
                else:
                    services = tuple(ServiceState(name=s.unit, state=s.state, restarts=s.restarts) for s in statuses)
                    self._last_services = (statuses, services)
            except Exception as exc:
                self.host.problems.append(f"service states: {exc}")
                services = tuple(ServiceState(name=s, state="unknown") for s in self.services)
        holders: tuple[FdHolder, ...] = ()
        if fd_high:
            # who holds the handles, so a repair restarts that service and not a guess
            holders = tuple(await asyncio.to_thread(top_fd_holders, self.host.view, limit=3))
        return services, holders


@dataclass
class Outbox:
    """Probes waiting for the stream's acknowledgement, oldest first. When full, the oldest probe is
    dropped and counted: a fresh probe is worth more to the detector than a stale one. A probe is re-sent
    as it was (same `id`, same `seq`): the detector counts a probe it has just seen once."""

    capacity: int
    pending: deque[NodeProbe] = field(default_factory=deque)
    dropped: int = 0

    def add(self, probe: NodeProbe) -> None:
        self.pending.append(probe)
        while len(self.pending) > self.capacity:
            self.pending.popleft()
            self.dropped += 1

    def __len__(self) -> int:
        return len(self.pending)
