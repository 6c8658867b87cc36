"""The real node agent on a simulated node.

The node agent reads a node through three narrow interfaces (`nodeheal.agent.host.HostFiles`: text
files under /proc, /sys and /etc, listings of /proc and /proc/PID/fd, statvfs;
`nodeheal.agent.systemd.CommandRunner`: the two `systemctl` command lines it runs;
`nodeheal.agent.kmsg.KmsgDevice`: /dev/kmsg records). This module implements them from a `SimNode`'s
state, in memory, so the simulator runs the agent's own `ProbeCollector` (parsers, filters, bounds,
sequence and message ids) for every node and probe without touching a disk.

Commands run through the agent's own `CommandExecutor` (allow-lists, idempotence, dry run, the real
`os.walk`/`unlink` of `clean_disk`). Deleting files is what `clean_disk` does, so a node that receives
a command gets a small real directory tree (`<run dir>/nodes/<node>/`) holding its reclaimable files
as sparse files of the simulated sizes (rotated pod logs older than the agent's age limit, unused
container images); after the command the node's disk usage is recomputed from what is left. Image
pruning runs `python -m nodeheal.sim.crictl` (a stand-in for `crictl rmi --prune`) as the real
subprocess the executor starts.

A kernel crash leaves its story where a real one does (`leave_crash_evidence`): a pstore ramoops
record (`/sys/fs/pstore/dmesg-ramoops-N`) and, when kdump is configured, a kdumpctl directory with
`vmcore-dmesg.txt` under `/var/crash`, written in the node's directory tree with the crash's time,
plus the crash state the agent of the crashed boot had saved. After the reboot the agent's own
`CrashCollector` (`crash_collector`) finds them, exactly as on a real node.
"""

from __future__ import annotations

import dataclasses
import os
import sys
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, overload

from nodeheal.agent.commands import CleanPolicy, CommandExecutor
from nodeheal.agent.crash import CrashCollector, CrashState
from nodeheal.agent.host import HostReader
from nodeheal.agent.kmsg import KmsgReader
from nodeheal.agent.probe import ProbeCollector, SequenceCounter, full_every_for
from nodeheal.agent.systemd import SystemctlClient
from nodeheal.schemas.commands import NodeCommand, NodeCommandResult
from nodeheal.schemas.probe import NodeProbe
from nodeheal.schemas.subjects import escape_token
from nodeheal.sim.fleet import DISK_BYTES

if TYPE_CHECKING:
    from nodeheal.sim.fleet import SimNode

BLOCK = 4096
IMAGES_DIR = "/var/lib/containerd/io.containerd.content.v1.content/blobs/unused"
"""Where the simulated node keeps unused image blobs (what `crictl rmi --prune` removes)."""
POD_LOGS_DIR = "/var/log/pods"
OLD = 30 * 86_400  # rotated logs are a month old: older than the agent's clean age limit
KMSG_RING = 512  # records the simulated kernel ring keeps
CRASH_STATE = "/var/lib/nodeheal-agent/crash-state.json"
"""Where the simulated node's agent keeps its crash state (the agent's state directory on the host)."""


def leave_crash_evidence(root: Path, *, boot_id: str, lines: Sequence[str], at: float, kdump: bool) -> list[str]:
    """What a crashing kernel leaves behind on the node under `root`; the host paths written.

    First the state the running agent had saved for this boot (it saw the boot, nothing orderly
    happened since), so the next boot's agent knows the reboot was unexpected; then the panic as a
    ramoops record (`Panic#1 Part1` header, the log after it) and, with kdump, as a kdumpctl
    `vmcore-dmesg.txt`. Files carry the crash's time."""
    state_file = root / CRASH_STATE.lstrip("/")
    state_file.parent.mkdir(parents=True, exist_ok=True)
    state = CrashState.load(state_file) or CrashState()
    if state.boot_id != boot_id:
        state = CrashState(boot_id=boot_id, previous_boot_id=state.boot_id, handled=True, seen=state.seen)
    state.orderly = False
    state.save(state_file)
    text = "\n".join(lines) + "\n"
    written: list[tuple[Path, str]] = []
    pstore = root / "sys/fs/pstore"
    pstore.mkdir(parents=True, exist_ok=True)
    ramoops = pstore / f"dmesg-ramoops-{len(list(pstore.glob('dmesg-ramoops-*')))}"
    written.append((ramoops, "Panic#1 Part1\n" + text))
    if kdump:
        stamp = time.strftime("%Y-%m-%d-%H:%M:%S", time.gmtime(at))
        written.append((root / "var/crash" / f"127.0.0.1-{stamp}" / "vmcore-dmesg.txt", text))
    out = []
    for path, body in written:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(body)
        os.utime(path, (at, at))
        out.append("/" + str(path.relative_to(root)))
    return out


def crash_collector(root: Path, *, cluster: str, node: str) -> CrashCollector:
    """The agent's crash capture over the simulated node's files (no journal on a simulated node)."""
    return CrashCollector(
        cluster=cluster, node=node, root=root, state_file=root / CRASH_STATE.lstrip("/"), journal_command=None
    )


PROCESSES: dict[int, tuple[str, str, int]] = {
    1: ("systemd", "0::/init.scope", 180),
    812: ("containerd", "0::/system.slice/containerd.service", 1400),
    845: ("kubelet", "0::/system.slice/kubelet.service", 2600),
    903: ("ops-agent", "0::/system.slice/ops-agent.service", 900),
}
"""The simulated node's processes in /proc: pid → (comm, cgroup, open descriptors when healthy)."""
LEAKER = 903
"""The process that holds every descriptor above the healthy count (a leak is the ops agent's: its
restart, in `SimSystemctl`, gives them back)."""


class FdTable(Sequence[str]):
    """/proc/PID/fd of a simulated process: `n` entries named 0..n-1, without building them."""

    def __init__(self, n: int) -> None:
        self.n = max(0, n)

    def __len__(self) -> int:
        return self.n

    @overload
    def __getitem__(self, index: int) -> str: ...
    @overload
    def __getitem__(self, index: slice) -> Sequence[str]: ...
    def __getitem__(self, index: int | slice) -> str | Sequence[str]:
        if isinstance(index, slice):
            return [str(i) for i in range(self.n)[index]]
        return str(range(self.n)[index])


@dataclass
class SimKmsg:
    """One boot's kernel ring buffer: records in /dev/kmsg's format, read once per reader."""

    boot_time: float
    seq: int = 0
    ring: deque[str] = field(default_factory=lambda: deque(maxlen=KMSG_RING))
    unread: int = 0

    def log(self, message: str, *, now: float, level: int = 4) -> None:
        usec = int(max(0.0, now - self.boot_time) * 1e6)
        self.ring.append(f"{level},{self.seq},{usec},-;{message}")
        self.seq += 1
        self.unread = min(self.unread + 1, KMSG_RING)

    def read_records(self) -> list[str]:
        if not self.unread:
            return []
        out = list(self.ring)[-self.unread :]
        self.unread = 0
        return out


_MOUNTS = (
    "/dev/nvme0n1p1 / ext4 {opts} 0 0\n"
    "proc /proc proc rw,nosuid,nodev,noexec,relatime 0 0\n"
    "tmpfs /run tmpfs rw,nosuid,nodev,size=13148548k,mode=755 0 0\n"
    "overlay /run/containerd/io.containerd.runtime.v2.task/k8s.io/1f3a/rootfs overlay rw 0 0\n"
    "/dev/nvme0n1p1 /var/lib/kubelet/pods/5c1e/volumes ext4 {opts} 0 0\n"
)
MOUNTS_TEXT = {ro: _MOUNTS.format(opts="ro,relatime" if ro else "rw,relatime") for ro in (False, True)}
"""/proc/1/mounts of a simulated node, read-write and after a read-only remount (the same two strings for
every node: the agent's parser sees the text it saw last time and does not parse it again)."""


class SimHostFiles:
    """`HostFiles` answered from a simulated node's state (no file IO).

    A file's text is rendered from the state it shows, and again only when that state changed (the
    static files once per boot); load average and uptime change with every probe and are rendered each
    time."""

    def __init__(self, node: SimNode, *, clock: float | None = None) -> None:
        self.node = node
        self.now = clock or time.time()
        self.noise = 0.0
        self._static: dict[str, str] = {}
        self._static_boot: str | None = None
        self._file_nr_text: tuple[int, int, str] | None = None
        self._statvfs: tuple[float, os.statvfs_result] | None = None

    def _static_files(self) -> dict[str, str]:
        n = self.node
        if self._static_boot != n.boot_id:
            self._static = {
                "/proc/sys/kernel/random/boot_id": n.boot_id + "\n",
                "/proc/sys/kernel/osrelease": f"{n.inv.kernel}\n",
                "/etc/os-release": f'NAME="Alibaba Cloud Linux"\nPRETTY_NAME="{n.inv.os_image}"\n',
                "/sys/devices/system/cpu/online": f"0-{n.cpu_count - 1}\n",
            }
            self._static_boot = n.boot_id
        return self._static

    def read_text(self, host_path: str) -> str:
        n = self.node
        if self._static_boot != n.boot_id:
            self._static_files()
        # the static files first, then the ones a heartbeat reads, each by one dictionary look-up (this runs
        # four times per probe of every simulated node)
        static = self._static.get(host_path)
        if static is not None:
            return static
        dynamic = _DYNAMIC_FILES.get(host_path)
        if dynamic is not None:
            return dynamic(self, n)
        if not host_path.startswith("/"):
            return self.read_text("/" + host_path)
        if host_path.startswith("/proc/") and host_path.endswith(("/comm", "/cgroup")):
            pid, _, leaf = host_path.removeprefix("/proc/").partition("/")
            proc = PROCESSES.get(int(pid)) if pid.isdigit() else None
            if proc is not None:
                return (proc[0] if leaf == "comm" else proc[1]) + "\n"
        raise FileNotFoundError(2, "No such file or directory", host_path)

    def _loadavg(self, n: SimNode) -> str:
        load1 = n.load1(self.noise)
        return f"{load1:.2f} {load1 * 0.9:.2f} {load1 * 0.8:.2f} 3/1843 {4000 + n.seq % 30000}\n"

    def _mounts(self, n: SimNode) -> str:
        return MOUNTS_TEXT[bool(n.readonly)]

    def _file_nr(self, n: SimNode) -> str:
        cached = self._file_nr_text
        if cached is None or cached[0] != n.fd_allocated or cached[1] != n.fd_max:
            cached = self._file_nr_text = (n.fd_allocated, n.fd_max, f"{n.fd_allocated}\t0\t{n.fd_max}\n")
        return cached[2]

    def _uptime(self, n: SimNode) -> str:
        up = max(0.0, self.now - n.booted_at)
        return f"{up:.2f} {up * n.cpu_count * 0.8:.2f}\n"

    def list_dir(self, host_path: str) -> Sequence[str]:
        """/proc (the processes) and /proc/PID/fd: the leaking process holds what the node has above normal."""
        if host_path.rstrip("/") == "/proc":
            return [*map(str, PROCESSES), "self", "sys"]
        pid, _, leaf = host_path.removeprefix("/proc/").partition("/")
        if leaf.rstrip("/") == "fd" and pid.isdigit() and int(pid) in PROCESSES:
            fds = PROCESSES[int(pid)][2]
            if int(pid) == LEAKER:
                fds += max(0, self.node.fd_allocated - sum(p[2] for p in PROCESSES.values()))
            return FdTable(fds)
        raise FileNotFoundError(2, "No such file or directory", host_path)

    def exists(self, host_path: str) -> bool:
        return host_path in ("/etc/os-release", "/sys/devices/system/cpu/online")

    def statvfs(self, host_path: str) -> os.statvfs_result:
        del host_path  # one file system
        used = self.node.disk_used
        cached = self._statvfs
        if cached is None or cached[0] != used:
            cached = self._statvfs = (used, disk_statvfs(used, inodes_pct=4.0))
        return cached[1]


_DYNAMIC_FILES: dict[str, Callable[[SimHostFiles, SimNode], str]] = {
    "/proc/loadavg": SimHostFiles._loadavg,
    "/proc/1/mounts": SimHostFiles._mounts,
    "/proc/sys/fs/file-nr": SimHostFiles._file_nr,
    "/proc/uptime": SimHostFiles._uptime,
}
"""The files whose text follows the node's state, rendered on each read (`SimHostFiles.read_text`)."""


def disk_statvfs(used_pct: float, *, inodes_pct: float) -> os.statvfs_result:
    blocks = DISK_BYTES // BLOCK
    used = int(blocks * min(max(used_pct, 0.0), 100.0) / 100)
    files = 13_107_200
    ffree = int(files * (1 - inodes_pct / 100))
    # (bsize, frsize, blocks, bfree, bavail, files, ffree, favail, flag, namemax); no reserved blocks
    return os.statvfs_result((BLOCK, BLOCK, blocks, blocks - used, blocks - used, files, ffree, ffree, 0, 255))


class SimSystemctl:
    """`systemctl show -p Id,ActiveState,NRestarts <units>` and `systemctl restart <unit>` on a simulated node."""

    def __init__(self, node: SimNode) -> None:
        self.node = node

    async def __call__(self, argv: Sequence[str], *, timeout_s: float) -> tuple[int, str, str]:
        del timeout_s
        args = list(argv[1:])
        n = self.node
        if args[:1] == ["show"]:
            units = args[3:]
            blocks = []
            for unit in units:
                short = unit.removesuffix(".service")
                state = n.services.get(short)
                if state is None:
                    blocks.append(f"Id={unit}\nActiveState=inactive\nNRestarts=0\n")
                else:
                    blocks.append(f"Id={unit}\nActiveState={state}\nNRestarts={n.restarts.get(short, 0)}\n")
            return 0, "\n".join(blocks), ""
        if args[:1] == ["restart"] and len(args) == 2:
            short = args[1].removesuffix(".service")
            if short not in n.services:
                return 5, "", f"Failed to restart {args[1]}: Unit {args[1]} not found.\n"
            n.services[short] = "active"
            n.restarts[short] = n.restarts.get(short, 0) + 1
            if short == "ops-agent":
                n.fd_allocated = 6000  # the ops agent was the process leaking descriptors
            return 0, "", ""
        return 1, "", f"unknown command line {' '.join(argv)}\n"


@dataclass
class AgentProfile:
    """The agent's configuration on every simulated node (the DaemonSet's environment)."""

    services: tuple[str, ...] = ("kubelet", "containerd", "ops-agent")
    max_kernel_lines: int = 200
    full_every: int | None = None
    """A full probe every this many probes, heartbeats between (`ProbeCollector.full_every`); None: the
    agent's default for the simulator's probe interval (`nodeheal.agent.probe.full_every_for`), which
    `FleetSimulator` fills in; a `SimAgent` given None probes full every time."""
    clean: CleanPolicy = field(
        default_factory=lambda: CleanPolicy(allowed_dirs=("/var/log/pods", "/var/crash", "/var/lib/systemd/coredump"))
    )

    def at_interval(self, interval_s: float) -> AgentProfile:
        """This profile with `full_every` filled in as the agent's settings would for `interval_s`."""
        if self.full_every is not None:
            return self
        return dataclasses.replace(self, full_every=full_every_for(interval_s, None))


class SimAgent:
    """The node agent's collector and command handler for one simulated node (one boot)."""

    def __init__(self, node: SimNode, *, cluster: str, profile: AgentProfile, work_dir: Path | None) -> None:
        self.node = node
        self.boot_id = node.boot_id  # the boot this agent process was started in
        self.profile = profile
        self.work_dir = work_dir
        self.files = SimHostFiles(node)
        self.systemctl = SimSystemctl(node)
        self.systemd = SystemctlClient(runner=self.systemctl)
        self.kmsg = SimKmsg(boot_time=node.booted_at)
        # a root that does not exist: code that bypassed `files` would fail to read, never read this machine
        host = HostReader(root=Path("/nonexistent-simulated-node") / escape_token(node.name), files=self.files)
        self.collector = ProbeCollector(
            cluster=cluster,
            node=node.name,
            host=host,
            systemd=self.systemd,
            services=profile.services,
            kernel_log=KmsgReader(path=Path("/dev/kmsg"), state_file=None, boot_id=node.boot_id, device=self.kmsg),
            max_kernel_lines=profile.max_kernel_lines,
            sequence=SequenceCounter(state_file=None),
            full_every=profile.full_every or 1,
        )
        self._commands_seen = node.commands_done
        self.cluster = cluster
        self._executor: CommandExecutor | None = None
        # every command answered: (time, command, result, ran) — `ran` is False for a replay of a known
        # action id the executor answered from its memory (no side effect)
        self.executed: list[tuple[float, NodeCommand, NodeCommandResult, bool]] = []

    async def collect(self, *, now: float, noise: float) -> NodeProbe:
        self.files.now = now
        self.files.noise = noise
        if self.node.commands_done != self._commands_seen:
            # a node command ran (here or, with probe shards, in the main process): as the real agent does
            # after answering one, the next probe is full
            self._commands_seen = self.node.commands_done
            self.collector.want_full("node command")
        return await self.collector.collect()

    # -- commands ---------------------------------------------------------------------------------

    @property
    def root(self) -> Path:
        assert self.work_dir is not None
        return self.work_dir / escape_token(self.node.name)

    def _materialize(self) -> None:
        """Write the node's reclaimable bytes as sparse files the real executor can delete."""
        root = self.root
        for sub in (*self.profile.clean.allowed_dirs, IMAGES_DIR, "/var/lib/containerd"):
            (root / sub.lstrip("/")).mkdir(parents=True, exist_ok=True)
        n = self.node
        logs = root / POD_LOGS_DIR.lstrip("/") / f"default_app-{n.index}_{n.index:08x}" / "app"
        logs.mkdir(parents=True, exist_ok=True)
        old = time.time() - OLD
        self._write_sparse(logs, "0.log.20261101-000000", n.old_logs_bytes, mtime=old)
        images = root / IMAGES_DIR.lstrip("/")
        self._write_sparse(images, f"sha256-{n.index:064x}"[:71], n.unused_image_bytes, mtime=old)
        n.old_logs_bytes = n.unused_image_bytes = 0  # the files hold them now

    @staticmethod
    def _write_sparse(directory: Path, name: str, size: int, *, mtime: float) -> None:
        if size <= 0:
            return
        path = directory / name
        with open(path, "ab") as f:
            f.truncate(path.stat().st_size + size)
        os.utime(path, (mtime, mtime))

    def _files_bytes(self) -> int:
        total = 0
        for dirpath, _dirs, names in os.walk(self.root):
            for name in names:
                try:
                    total += os.lstat(os.path.join(dirpath, name)).st_size
                except OSError:
                    continue
        return total

    def _statvfs(self, path: str) -> os.statvfs_result:
        del path
        return disk_statvfs(self.node.disk_used_with(self._files_bytes()), inodes_pct=4.0)

    def _state_dir(self) -> Path:
        """The agent's STATE_DIR (a hostPath): beside the node's file tree, so its bytes are not disk usage."""
        assert self.work_dir is not None
        state = self.work_dir / f"{escape_token(self.node.name)}.agent-state"
        state.mkdir(parents=True, exist_ok=True)
        return state

    def executor(self) -> CommandExecutor:
        if self._executor is None:
            assert self.work_dir is not None, "commands need a work directory"
            self._materialize()
            clean = self.profile.clean
            prune = (sys.executable, "-m", "nodeheal.sim.crictl", "--root", str(self.root), "rmi", "--prune")
            policy = CleanPolicy(
                allowed_dirs=clean.allowed_dirs,
                max_age_days=clean.max_age_days,
                image_prune_command=prune,
                image_fs_path="/var/lib/containerd",
                command_timeout_s=clean.command_timeout_s,
                # a simulated node has no journal: never run this machine's journalctl --vacuum
                journal_vacuum_command=(),
            )
            self._executor = CommandExecutor(
                node=self.node.name,
                cluster=self.cluster,
                host_root=self.root,
                services=self.profile.services,
                systemd=self.systemd,
                clean=policy,
                statvfs=self._statvfs,
                files=self.files,  # the fd holder is read from the simulated node's /proc
                # the agent's state directory: a re-sent command is answered, not re-run, also by the agent
                # of the node's next boot
                results_file=self._state_dir() / "command-results.jsonl",
            )
        return self._executor

    async def execute(self, command: NodeCommand) -> NodeCommandResult:
        executor = self.executor()
        self._materialize()  # garbage that grew since the last command
        before = executor.executed
        result = await executor.execute(command)
        self.node.garbage_on_disk = self._files_bytes()
        self.node.commands_done += 1
        self.executed.append((time.time(), command, result, executor.executed > before))
        return result
