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
        r"|critical medium error|Medium Error|I/O error, dev|blk_update_request: .*error",
    ),
    ("lockup", r"soft lockup|hard LOCKUP|rcu_\w+ (?:self-)?detected stall|blocked for more than \d+ seconds"),
    (
        "crash",
        r"Kernel panic|kernel BUG at|BUG: unable to handle|BUG: kernel NULL pointer dereference"
        r"|general protection fault|divide error:|\bOops\b"
        r"|unregister_netdevice: waiting|Call Trace:",
    ),
    (
        "filesystem",
        r"EXT4-fs error|Remounting filesystem read-only|Aborting journal"
        r"|XFS \([^)]*\): .*(?:error|Corruption|shutdown)",
    ),
    ("memory", r"Out of memory|out of memory|invoked oom-killer|oom_reaper|Killed process \d+|page allocation failure"),
    ("resource", r"[Tt]oo many open files|file-max limit \d+ reached|nf_conntrack: .*table full"),
    (
        "runtime",
        r"PLEG is not healthy|kubelet\.service: (?:Main process exited|Failed)|cannot connect to (?:the )?Docker"
        r"|containerd\.service: (?:Main process exited|Failed)|eviction manager: .*reclaim"
        r"|EvictionThresholdMet|NodeHasDiskPressure",
    ),
    # an orderly shutdown or reboot: the diagnoser needs these lines to tell a planned power-off from a crash
    (
        "planned",
        r"systemd-logind\[\d+\]: (?:Power key pressed|Powering Off|System is (?:powering down|rebooting|halting))"
        r"|reboot: (?:Restarting system|Power down)",
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
