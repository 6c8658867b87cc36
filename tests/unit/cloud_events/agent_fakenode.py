"""A temporary directory that looks like a node to the agent: /proc files, /etc/os-release, a mount
table, a kmsg file in /dev/kmsg's format, and a `systemctl` executable (a real script run as a
subprocess) whose units' states live in files the test can change and whose restarts are logged (a unit
with a `<unit>.slow` file takes that many seconds to restart, one with a `<unit>.fail` file fails it, after
the slow part; every restart asked, failed or not, is logged as its begin and end in `restart.calls`)."""

from __future__ import annotations

import os
import stat
import textwrap
from dataclasses import dataclass
from pathlib import Path

SYSTEMCTL = textwrap.dedent(
    """\
    #!/bin/sh
    # fake systemctl: units' ActiveState in $STATE/<unit>.state, NRestarts in $STATE/<unit>.restarts
    STATE="{state}"
    cmd="$1"; shift
    case "$cmd" in
      show)
        shift 2  # -p Id,ActiveState,NRestarts
        first=1
        for unit in "$@"; do
          [ $first -eq 1 ] || echo
          first=0
          echo "Id=$unit"
          if [ -f "$STATE/$unit.state" ]; then echo "ActiveState=$(cat "$STATE/$unit.state")"; else echo "ActiveState=inactive"; fi
          if [ -f "$STATE/$unit.restarts" ]; then echo "NRestarts=$(cat "$STATE/$unit.restarts")"; else echo "NRestarts=0"; fi
        done
        ;;
      restart)
        unit="$1"
        echo "begin $unit" >> "$STATE/restart.calls"
        if [ -f "$STATE/$unit.slow" ]; then sleep "$(cat "$STATE/$unit.slow")"; fi
        if [ -f "$STATE/$unit.fail" ]; then echo "end $unit" >> "$STATE/restart.calls"; echo "Job for $unit failed" >&2; exit 1; fi
        echo "$unit" >> "$STATE/restart.log"
        echo "end $unit" >> "$STATE/restart.calls"
        n=0; [ -f "$STATE/$unit.restarts" ] && n=$(cat "$STATE/$unit.restarts")
        echo $((n + 1)) > "$STATE/$unit.restarts"
        echo active > "$STATE/$unit.state"
        ;;
      *) echo "unknown command $cmd" >&2; exit 2 ;;
    esac
    """
)


@dataclass
class FakeNode:
    root: Path
    bin: Path
    state: Path
    kmsg_seq: int = 0

    @property
    def systemctl(self) -> str:
        return str(self.bin / "systemctl")

    def write(self, host_path: str, text: str) -> Path:
        path = self.root / host_path.lstrip("/")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        return path

    def set_unit(self, unit: str, state: str, restarts: int | None = None) -> None:
        (self.state / f"{unit}.state").write_text(state)
        if restarts is not None:
            (self.state / f"{unit}.restarts").write_text(str(restarts))

    def restarts_logged(self) -> list[str]:
        log = self.state / "restart.log"
        return log.read_text().split() if log.exists() else []

    def restart_calls(self) -> list[str]:
        """Every restart asked of this systemctl, failed ones too, as `begin <unit>` / `end <unit>` lines in order."""
        log = self.state / "restart.calls"
        return log.read_text().splitlines() if log.exists() else []

    def most_restarts_at_once(self) -> int:
        """How many restarts this systemctl ever ran at the same time (from the order of their begins and ends)."""
        running = most = 0
        for line in self.restart_calls():
            running += 1 if line.startswith("begin ") else -1
            most = max(most, running)
        return most

    def kmsg(self, *messages: str) -> None:
        """Append records in /dev/kmsg's format, with a continuation line like the kernel writes."""
        with (self.root / "dev/kmsg").open("a") as f:
            for message in messages:
                self.kmsg_seq += 1
                f.write(f"6,{self.kmsg_seq},{self.kmsg_seq * 1000},-;{message}\n SUBSYSTEM=test\n")


def make_fake_node(tmp: Path, *, mounts: list[tuple[str, str, str, str]] | None = None) -> FakeNode:
    root, bin_dir, state = tmp / "root", tmp / "bin", tmp / "systemd-state"
    for d in (root, bin_dir, state):
        d.mkdir(parents=True, exist_ok=True)
    node = FakeNode(root=root, bin=bin_dir, state=state)
    node.write("/proc/loadavg", "1.50 0.75 0.25 3/812 12345\n")
    node.write("/proc/sys/fs/file-nr", "4160\t0\t9223372036854775807\n")
    node.write("/proc/sys/kernel/random/boot_id", "0f0e0d0c-1111-2222-3333-444455556666\n")
    node.write("/proc/uptime", "12345.67 54321.00\n")
    node.write("/proc/sys/kernel/osrelease", "5.10.134-16.al8.x86_64\n")
    node.write("/sys/devices/system/cpu/online", "0-63\n")
    node.write("/etc/os-release", 'NAME="Alibaba Cloud Linux"\nPRETTY_NAME="Alibaba Cloud Linux 3.2104 U10"\n')
    mounts = mounts or [
        ("/dev/vda1", "/", "ext4", "rw,relatime"),
        ("/dev/nvme0n1", "/var/lib/containerd", "xfs", "rw,noatime"),
        ("/dev/nvme1n1", "/data", "ext4", "ro,relatime"),
        ("overlay", "/run/containerd/io.containerd.runtime.v2.task/k8s.io/abc/rootfs", "overlay", "rw"),
        ("tmpfs", "/run", "tmpfs", "rw"),
        ("/dev/vda1", "/var/lib/kubelet/pods/uid/volumes/x", "ext4", "rw"),
    ]
    node.write("/proc/1/mounts", "".join(f"{d} {m} {t} {o} 0 0\n" for d, m, t, o in mounts))
    for _, mount_point, _, _ in mounts:
        (root / mount_point.lstrip("/")).mkdir(parents=True, exist_ok=True)
    node.write("/dev/kmsg", "")
    script = bin_dir / "systemctl"
    script.write_text(SYSTEMCTL.format(state=state))
    script.chmod(script.stat().st_mode | stat.S_IEXEC | stat.S_IXGRP | stat.S_IXOTH)
    return node


def statvfs_with(fill: dict[str, tuple[int, int]]) -> object:
    """`os.statvfs` that reports the given (used %, inodes used %) for paths ending in a key.

    Used only where the test needs a disk at a fill level a temp directory cannot have (97 %)."""

    def statvfs(path: str) -> os.statvfs_result:
        for suffix, (used_pct, inodes_pct) in fill.items():
            if path.rstrip("/").endswith(suffix):
                blocks, files = 100_000, 10_000
                free = blocks * (100 - used_pct) // 100
                ffree = files * (100 - inodes_pct) // 100
                return os.statvfs_result((4096, 4096, blocks, free, free, files, ffree, ffree, 0, 255))
        return os.statvfs(path)

    return statvfs
