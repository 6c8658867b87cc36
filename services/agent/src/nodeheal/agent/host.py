"""Reading a node's state from its /proc, /sys and /etc under a configurable root.

`HostReader(root=Path("/host"))` reads `/host/proc/loadavg` and so on, which is how the agent runs in
a DaemonSet (the host's `/` mounted read-only at `/host`) and how tests run it against a temporary
directory that looks like a node. Every reader returns `None` (or an empty tuple) when its file is
missing or unreadable and records why in `problems`, so one broken source never hides the others.

Everything the reader looks at goes through `HostFiles`, a four-call interface (read a text file,
does a path exist, list a directory, statvfs of a path; host paths, not local ones). `LocalHostFiles` implements it with
the real file system under `root`; the fleet simulator implements it with each simulated node's state,
so the demo runs this very code for every node without touching a disk.
This module must never talk to NATS or change anything on the host.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol, TypeVar

from nodeheal.schemas.probe import FdHolder, FileHandles, FileSystem, LoadAverage

_T = TypeVar("_T")

StatVfs = Callable[[str], os.statvfs_result]
"""`os.statvfs` or a stand-in with the same signature (tests: a file system of a chosen fill level)."""


class HostFiles(Protocol):
    """The node as the probe collector sees it. Paths are host paths (`/proc/loadavg`)."""

    def read_text(self, host_path: str) -> str:
        """The file's text; `OSError` when it is missing or unreadable."""
        ...

    def exists(self, host_path: str) -> bool: ...

    def list_dir(self, host_path: str) -> Sequence[str]:
        """The names in a directory (`/proc`, `/proc/PID/fd`); `OSError` when it cannot be listed."""
        ...

    def statvfs(self, host_path: str) -> os.statvfs_result:
        """`statvfs(2)` of the file system holding the path; `OSError` when it cannot be had."""
        ...


@dataclass(frozen=True, slots=True)
class LocalHostFiles:
    """`HostFiles` on the real file system: host path `/x` is `<root>/x` in this process."""

    root: Path
    stat: StatVfs = os.statvfs

    def path(self, host_path: str) -> Path:
        return self.root / host_path.lstrip("/")

    def read_text(self, host_path: str) -> str:
        return self.path(host_path).read_text(encoding="utf-8", errors="replace")

    def exists(self, host_path: str) -> bool:
        return self.path(host_path).exists()

    def list_dir(self, host_path: str) -> Sequence[str]:
        return os.listdir(self.path(host_path))

    def statvfs(self, host_path: str) -> os.statvfs_result:
        return self.stat(str(self.path(host_path)))


DEFAULT_FS_TYPES: tuple[str, ...] = ("ext4", "xfs", "btrfs", "ext3", "ext2", "zfs")
"""Disk-backed file systems; overlay/tmpfs mounts of containers are not the node's disks."""
DEFAULT_EXCLUDED_PREFIXES: tuple[str, ...] = (
    "/var/lib/kubelet/pods/",
    "/run/containerd/",
    "/var/lib/containerd/io.containerd.",
    "/var/lib/docker/",
    "/snap/",
)
"""Bind mounts of pod volumes and container internals: the same disk seen again."""


@dataclass(frozen=True, slots=True)
class Mount:
    device: str
    mount_point: str
    fs_type: str
    options: tuple[str, ...]

    @property
    def readonly(self) -> bool:
        return "ro" in self.options


def _unescape_mount(value: str) -> str:
    # /proc/mounts escapes space, tab, newline and backslash as octal (\040 ...)
    if "\\" not in value:
        return value
    out, i = [], 0
    while i < len(value):
        if value[i] == "\\" and value[i + 1 : i + 4].isdigit() and len(value[i + 1 : i + 4]) == 3:
            out.append(chr(int(value[i + 1 : i + 4], 8)))
            i += 4
        else:
            out.append(value[i])
            i += 1
    return "".join(out)


def parse_mounts(text: str) -> list[Mount]:
    mounts: list[Mount] = []
    for line in text.splitlines():
        parts = line.split()
        if len(parts) < 4:
            continue
        mounts.append(
            Mount(
                device=_unescape_mount(parts[0]),
                mount_point=_unescape_mount(parts[1]),
                fs_type=parts[2],
                options=tuple(parts[3].split(",")),
            )
        )
    return mounts


def parse_loadavg(text: str) -> LoadAverage:
    load1, load5, load15 = (float(x) for x in text.split()[:3])
    return LoadAverage(load1=load1, load5=load5, load15=load15)


def parse_file_nr(text: str) -> FileHandles:
    allocated, _unused, maximum = (int(x) for x in text.split()[:3])
    return FileHandles(allocated=allocated, max=max(maximum, 1))


def parse_uptime(text: str) -> float:
    return float(text.split()[0])


def parse_os_release(text: str) -> str | None:
    values: dict[str, str] = {}
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        if sep:
            values[key.strip()] = value.strip().strip('"').strip("'")
    return values.get("PRETTY_NAME") or values.get("NAME")


def parse_cpu_list(text: str) -> int:
    """`0-3,8-11` (the format of /sys/devices/system/cpu/online) → 8."""
    count = 0
    for part in text.strip().split(","):
        if not part:
            continue
        lo, sep, hi = part.partition("-")
        count += (int(hi) - int(lo) + 1) if sep else 1
    return count


def fs_usage(st: os.statvfs_result) -> tuple[float, float]:
    """(used %, inodes used %) computed the way `df` does: reserved blocks count as unavailable."""
    used_blocks = st.f_blocks - st.f_bfree
    usable = used_blocks + st.f_bavail
    used_pct = 100.0 * used_blocks / usable if usable > 0 else 0.0
    inodes_pct = 100.0 * (st.f_files - st.f_ffree) / st.f_files if st.f_files > 0 else 0.0
    return round(min(max(used_pct, 0.0), 100.0), 2), round(min(max(inodes_pct, 0.0), 100.0), 2)


@dataclass
class HostReader:
    """Reads one node. `root` is where the node's `/` is visible (`/` on the node itself, `/host` in a pod)."""

    root: Path
    mounts_file: str = "proc/1/mounts"
    mount_points: Sequence[str] = ()
    fs_types: Sequence[str] = DEFAULT_FS_TYPES
    excluded_prefixes: Sequence[str] = DEFAULT_EXCLUDED_PREFIXES
    statvfs: StatVfs = os.statvfs
    fs_markers: Mapping[str, str] = field(default_factory=dict)
    """Host mount point → a directory in this process on that file system, measured instead of
    `<root><mount point>` (the DaemonSet mounts an empty marker per file system, never the host's /).
    With markers and no `mount_points`, exactly the marked mount points are reported."""
    problems: list[str] = field(default_factory=list)
    files: HostFiles | None = None
    """Where the node is read; `None`: the local file system under `root` (with `statvfs`)."""

    def statfs_path(self, host_path: str) -> str:
        """Where to statvfs the file system of `host_path`: its marker, else the path under `root`."""
        return self.fs_markers.get(host_path) or str(self.path(host_path))

    def path(self, host_path: str) -> Path:
        """The path inside this process of `host_path` on the node (`/var/log` → `<root>/var/log`)."""
        return self.root / host_path.lstrip("/")

    @property
    def view(self) -> HostFiles:
        # built on each use: `statvfs` may be replaced after construction (the agent's tests do)
        return self.files if self.files is not None else LocalHostFiles(self.root, self.statvfs)

    def _read(self, host_path: str) -> str | None:
        try:
            return self.view.read_text(host_path)
        except OSError as exc:
            self.problems.append(f"cannot read {self.path(host_path)}: {exc.strerror or exc}")
            return None

    def _parse(self, host_path: str, parse: Callable[[str], _T]) -> _T | None:
        text = self._read(host_path)
        if text is None:
            return None
        try:
            return parse(text)
        except (ValueError, IndexError) as exc:
            self.problems.append(f"cannot parse {self.path(host_path)}: {exc}")
            return None

    def load(self) -> LoadAverage | None:
        return self._parse("/proc/loadavg", parse_loadavg)

    def file_handles(self) -> FileHandles | None:
        return self._parse("/proc/sys/fs/file-nr", parse_file_nr)

    def boot_id(self) -> str | None:
        return self._parse("/proc/sys/kernel/random/boot_id", lambda t: t.strip() or None)

    def uptime_s(self) -> float | None:
        return self._parse("/proc/uptime", parse_uptime)

    def kernel_release(self) -> str | None:
        return self._parse("/proc/sys/kernel/osrelease", lambda t: t.strip() or None)

    def os_image(self) -> str | None:
        view = self.view
        for candidate in ("/etc/os-release", "/usr/lib/os-release"):
            if view.exists(candidate):
                return self._parse(candidate, parse_os_release)
        self.problems.append(f"no os-release under {self.root}")
        return None

    def cpu_count(self) -> int | None:
        if self.view.exists("/sys/devices/system/cpu/online"):
            return self._parse("/sys/devices/system/cpu/online", parse_cpu_list)
        return os.cpu_count()

    def mounts(self) -> list[Mount]:
        text = self._read(self.mounts_file)
        if text is None:
            return []
        wanted_points = set(self.mount_points) or set(self.fs_markers)
        wanted_types = set(self.fs_types)
        chosen: dict[str, Mount] = {}
        for mount in parse_mounts(text):
            if wanted_points and mount.mount_point not in wanted_points:
                continue
            if not wanted_points and (
                mount.fs_type not in wanted_types or mount.mount_point.startswith(tuple(self.excluded_prefixes))
            ):
                continue
            chosen[mount.mount_point] = mount  # the last mount on a point is the visible one
        return list(chosen.values())

    def filesystems(self) -> tuple[FileSystem, ...]:
        result: list[FileSystem] = []
        view = self.view
        for mount in self.mounts():
            try:
                if self.files is not None:  # a simulated node: its own answer for the mount point
                    st = view.statvfs(mount.mount_point)
                else:  # the real node: the marker directory of that file system, else the path under root
                    st = self.statvfs(self.statfs_path(mount.mount_point))
            except OSError as exc:
                self.problems.append(f"statvfs {mount.mount_point}: {exc.strerror or exc}")
                continue
            used_pct, inodes_pct = fs_usage(st)
            result.append(
                FileSystem(
                    mount=mount.mount_point,
                    device=mount.device,
                    used_pct=used_pct,
                    inodes_used_pct=inodes_pct,
                    readonly=mount.readonly,
                )
            )
        return tuple(result)


def unit_of_cgroup(text: str) -> str | None:
    """The systemd service of a process from its /proc/PID/cgroup (`0::/system.slice/kubelet.service` →
    `kubelet.service`); None for pods, scopes, sessions and anything else that is not a service."""
    for line in text.splitlines():
        path = line.rsplit(":", 1)[-1]
        for part in reversed(path.strip("/").split("/")):
            if part.endswith(".service"):
                return part
            if part.endswith((".scope", ".slice")):
                break
    return None


def top_fd_holders(files: HostFiles, *, limit: int = 3) -> list[FdHolder]:
    """The processes with the most entries in /proc/PID/fd, largest first (unreadable ones skipped), read
    through the host interface: the real node's /proc under the agent's root, or a simulated node's."""
    counts: list[tuple[int, int]] = []
    try:
        entries = list(files.list_dir("/proc"))
    except OSError:
        return []
    for name in entries:
        if not name.isdigit():
            continue
        try:
            n = len(files.list_dir(f"/proc/{name}/fd"))
        except OSError:
            continue
        counts.append((n, int(name)))
    counts.sort(reverse=True)
    out: list[FdHolder] = []
    for n, pid in counts[:limit]:
        try:
            name = files.read_text(f"/proc/{pid}/comm").strip() or "?"
        except OSError:
            name = "?"
        try:
            unit = unit_of_cgroup(files.read_text(f"/proc/{pid}/cgroup"))
        except OSError:
            unit = None
        out.append(FdHolder(pid=pid, name=name, fds=n, unit=unit))
    return out
