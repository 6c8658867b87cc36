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
        r"|HANDLING MCE MEMORY ERROR|CPU context corrupt|Machine check events logged|This is not a software error"
        r"|bank Unified Memory Controller",
    ),
    (
        "lockup",
        r"soft lockup|lockup - CPU#\d+ stuck|hard LOCKUP|Hard LOCKUP|rcu_\w+ (?:self-)?detected (?:expedited )?stall"
        r"|blocked for more than \d+ seconds|jiffies,? g=-?\d+",
    ),
    (
        "crash",
        r"Kernel panic|kernel BUG at|Kernel BUG at|BUG: unable to handle|BUG: kernel NULL pointer dereference"
        r"|general protection fault|divide error:|\bOops\b|Unable to handle kernel|invalid opcode: 0000"
        r"|unregister_netdevice: waiting|Call Trace:",
    ),
    (
        "filesystem",
        r"EXT4-fs error|Remounting filesystem read-only|Aborting journal|error count since last fsck"
        r"|error reading directory block"
        r"|XFS \([^)]*\): .*(?:error|Error|[Cc]orruption|shutdown|Shutting down)|XFS: Internal error|aborted journal"
        r"|Journal has aborted",
    ),
    (
        "memory",
        r"Out of memory|out of memory|invoked oom-killer|oom_reaper|Killed process \d+|page allocation failure"
        r"|killed as a result of limit of|kB, failcnt \d+",
    ),
    (
        "resource",
        r"Too many open files|too many open files|file-max limit \d+ reached"
        r"|nf_conntrack: .*table full|ip_conntrack: .*table full",
    ),
    (
        "runtime",
        r"PLEG is not healthy|kubelet\.service: (?:Main process exited|Failed)|cannot connect to (?:the )?Docker"
        r"|containerd\.service: (?:Main process exited|Failed)|eviction manager: .*(?:reclaim|reduce \w+ pressure)"
        r"|Eviction manager: .*reclaim"
        r"|container runtime is down"
        r"|EvictionThresholdMet|NodeHasDiskPressure|kubelet\.service: main process exited"
        r"|Unit kubelet\.service entered failed state|dial unix \S*\.sock: connect|runtime API version: rpc error"
        r"|from runtime service failed|Cannot connect to the Docker daemon at unix"
        r"|dial unix \S*docker\.sock: (?:no such file|connection refused|resource temporarily)"
        r"|containerd\.service(?:: main process exited| holdoff time over| failed\.)"
        r"|docker\.service(?:: (?:[Mm]ain process exited|Failed|Unit entered failed)| failed\.| holdoff time over"
        r"| stop-sigterm timed out)|Unit (?:containerd|docker|crio)\.service entered failed state",
    ),
    # an orderly shutdown or reboot: the diagnoser needs these lines to tell a planned power-off from a crash
    (
        "planned",
        r"systemd-logind\[\d*\]: (?:Power key pressed|Powering Off|System is (?:powering down|rebooting|halting))"
        r"|reboot: (?:Restarting system|Power down)|The system will (?:power off|reboot|halt|soft-reboot|kexec)"
        r"|System userspace is rebooting|Stopped target (?:(?:multi-user|graphical|getty)\.target - )?"
        r"(?:Multi-User System|Graphical Interface|Login Prompts)"
        r"|Show Plymouth (?:Reboot|Power Off|Halt)(?: with kexec)? Screen"
        r"|Shutdown manager (?:killing pod with gracePeriod|finished killing pod|completed processing shutdown event"
        r"|detected new shutdown event, isNodeShuttingDownNow(?::\s*|\"?\s+event=)true)"
        r"|reboot: System halted|systemd-shutdown\[\d+\]: |systemd\[1\]: Shutting down\."
        r"|Reached target (?:(?:poweroff|reboot|halt|kexec|final|shutdown)\.target - )?(?:Power-Off|Reboot|Halt"
        r"|System (?:Power Off|Reboot|Halt|Shutdown)|Final Step|Late Shutdown Services)\b"
        r"|Stopp(?:ed|ing) (?:systemd-user-sessions\.service - )?Permit User Sessions"
        r"|Stopping (?:(?:serial-)?getty@\S+\.service - )?(?:Serial )?Getty on ",
    ),
)

KERNEL_CLASSES: Final[tuple[str, ...]] = tuple(name for name, _ in _PATTERNS)

_ALTERNATION: Final = re.compile("|".join(f"(?P<{name}>{pattern})" for name, pattern in _PATTERNS))


def _top_level_branches(pattern: str) -> list[str]:
    """The alternatives of a pattern at its top level (not inside groups or character classes)."""
    branches, depth, start, i, in_class = [], 0, 0, 0, False
    while i < len(pattern):
        char = pattern[i]
        if char == "\\":
            i += 2
            continue
        if in_class:
            in_class = char != "]"
        elif char == "[":
            in_class = True
        elif char == "(":
            depth += 1
        elif char == ")":
            depth -= 1
        elif char == "|" and depth == 0:
            branches.append(pattern[start:i])
            start = i + 1
        i += 1
    branches.append(pattern[start:])
    return branches


# The screen: the same alternatives, flat and each starting with a literal (a leading \b dropped, so it
# accepts a superset), which lets `re` skip every position whose character cannot start one. A benign
# line (most of a node's log) is rejected by the screen alone; the grouped pattern names the class.
_SCREEN: Final = re.compile(
    "|".join(b.removeprefix(r"\b") for _, pattern in _PATTERNS for b in _top_level_branches(pattern))
)


def classify_line(line: str) -> str | None:
    """The coarse class of one kernel-log line, or None when it is not known trouble."""
    if _SCREEN.search(line) is None:
        return None
    match = _ALTERNATION.search(line)
    return match.lastgroup if match is not None else None


def classify_lines(lines: list[str]) -> dict[str, list[str]]:
    """Group the lines of known trouble by coarse class (lines of no class are dropped)."""
    found: dict[str, list[str]] = {}
    screen, search = _SCREEN.search, _ALTERNATION.search
    for line in lines:
        match = search(line) if screen(line) is not None else None
        if match is not None:
            cls = match.lastgroup
            assert cls is not None
            found.setdefault(cls, []).append(line)
    return found
