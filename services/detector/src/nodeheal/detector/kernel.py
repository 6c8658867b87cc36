"""A cheap pre-filter for kernel-log lines: is this line one of a known class of trouble?

The detector only answers "something of class X arrived" with a small, fast regex set (one compiled
alternation, one `search` per line); naming the exact cause is the diagnoser's job (it gets the raw
lines in the anomaly's evidence). The coarse classes here are deliberately few. This module must
never import the transport.
"""

from __future__ import annotations

import re
from typing import Final

# (coarse class, pattern). Order matters only for lines that match two classes: the first wins.
_PATTERNS: Final[tuple[tuple[str, str], ...]] = (
    (
        "hardware",
        r"\[Hardware Error\]|Machine Check|mcelog|\bEDAC\b"
        r"|nvme\d*: I/O \d+ QID|nvme\w*: .*(?:timeout|not ready)"
        r"|critical medium error|Medium Error|I/O error, dev|blk_update_request: .*error|Buffer I/O error on dev"
        r"|HANDLING MCE MEMORY ERROR|CPU context corrupt",
    ),
    (
        "lockup",
        r"soft lockup|lockup - CPU#\d+ stuck|hard LOCKUP|rcu_\w+ (?:self-)?detected (?:expedited )?stall"
        r"|blocked for more than \d+ seconds",
    ),
    (
        "crash",
        r"Kernel panic|kernel BUG at|BUG: unable to handle|BUG: kernel NULL pointer dereference"
        r"|general protection fault|divide error:|\bOops\b|Unable to handle kernel|exc_divide_error\+"
        r"|invalid opcode: 0000"
        r"|unregister_netdevice: waiting|Call Trace:",
    ),
    (
        "filesystem",
        r"EXT4-fs error|Remounting filesystem read-only|Aborting journal"
        r"|XFS \([^)]*\): .*(?:error|[Cc]orruption|shutdown)|XFS: Internal error|aborted journal|Journal has aborted",
    ),
    (
        "memory",
        r"Out of memory|out of memory|invoked oom-killer|oom_reaper|Killed process \d+|page allocation failure"
        r"|killed as a result of limit of|OOMController|\b(?:out_of_memory|oom_kill_process)\+0x",
    ),
    ("resource", r"[Tt]oo many open files|file-max limit \d+ reached|(?:nf|ip)_conntrack: .*table full"),
    (
        "runtime",
        r"PLEG is not healthy|kubelet\.service: (?:Main process exited|Failed)|cannot connect to (?:the )?Docker"
        r"|containerd\.service: (?:Main process exited|Failed)|eviction manager: .*reclaim"
        r"|EvictionThresholdMet|NodeHasDiskPressure|low on resource: ephemeral-storage"
        r"|kubelet\.service: main process exited|Unit kubelet\.service entered failed state"
        r"|ExecStart=\S*/kubelet\b.*code="
        r"|dial unix \S*\.sock: connect|container runtime is not running|runtime API version: rpc error"
        r"|from runtime service failed",
    ),
    # an orderly shutdown or reboot: the diagnoser needs these lines to tell a planned power-off from a crash
    (
        "planned",
        r"systemd-logind\[\d*\]: (?:Power key pressed|Powering Off|System is (?:powering down|rebooting|halting))"
        r"|reboot: (?:Restarting system|Power down)|MESSAGE_ID=98268866d1d54a499c4e98921d93bc40",
    ),
)

KERNEL_CLASSES: Final[tuple[str, ...]] = tuple(name for name, _ in _PATTERNS)

_ALTERNATION: Final = re.compile("|".join(f"(?P<{name}>{pattern})" for name, pattern in _PATTERNS))


def classify_line(line: str) -> str | None:
    """The coarse class of one kernel-log line, or None when it is not known trouble."""
    match = _ALTERNATION.search(line)
    return match.lastgroup if match is not None else None


def classify_lines(lines: list[str]) -> dict[str, list[str]]:
    """Group the lines of known trouble by coarse class (lines of no class are dropped)."""
    found: dict[str, list[str]] = {}
    search = _ALTERNATION.search
    for line in lines:
        match = search(line)
        if match is not None:
            cls = match.lastgroup
            assert cls is not None
            found.setdefault(cls, []).append(line)
    return found
