"""A cheap pre-filter for kernel-log lines: is this line one of a known class of trouble?

The detector only answers "something of class X arrived" with a small, fast regex set (one compiled
alternation, one `search` per line); naming the exact cause is the diagnoser's job (it gets the raw
lines in the anomaly's evidence). The coarse classes here are deliberately few. This module must
never import the transport.
"""

from __future__ import annotations

import re
from typing import Final

from nodeheal.schemas.shutdown import UNIT_STOP, shutdown_stop_run

# (coarse class, pattern). Order matters only for lines that match two classes: the first wins.
_PATTERNS: Final[tuple[tuple[str, str], ...]] = (
    (
        "hardware",
        r"\[Hardware Error\]|Machine Check|mcelog|\bEDAC\b"
        r"|nvme\d*: I/O \d+ QID|nvme\w*: .*(?:timeout|not ready)"
        r"|critical medium error|Medium Error|I/O error, dev|blk_update_request: .*error|Buffer I/O error on dev"
        r"|HANDLING MCE MEMORY ERROR|CPU context corrupt|Machine check events logged|This is not a software error"
        r"|bank Unified Memory Controller"
        # a corrected-error storm and the rate limit of 'Machine check events logged' (docs/diagnoser.md, kb11 rows)
        r"|CMCI storm detected|mce_notify_irq: \d+ callbacks suppressed",
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
        r"|unregister_netdevice: waiting|Call Trace:"
        # ARM's __div0() (arch/arm/kernel/traps.c): no divide trap, the division helpers report it (branch kb10)
        r"|Division by zero in kernel\.",
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
        r"|killed as a result of limit of|kB, failcnt \d+|oom-kill:constraint=",
    ),
    (
        "resource",
        r"Too many open files|too many open files|file-max limit \d+ reached"
        r"|nf_conntrack: .*table full|ip_conntrack: .*table full"
        r"|Слишком много открытых файлов|打开的文件过多|inotify resources exhausted",
    ),
    (
        "runtime",
        r"PLEG is not healthy|kubelet\.service: (?:Main process exited|Failed)|cannot connect to (?:the )?Docker"
        r"|containerd\.service: (?:Main process exited|Failed)|eviction manager: .*(?:reclaim|reduce \w+ pressure)"
        r"|Eviction manager: .*(?:reclaim|resource pressure)"
        r"|container runtime (?:is (?:down|not up)|not ready: (?:RuntimeReady=false|<nil>))"
        r"|Container runtime (?:sanity check failed|not ready(?::\s*|\"\s+runtimeReady=\")(?:RuntimeReady=false|<nil>))"
        r"|failed to run Kubelet: validate service connection: validate CRI v1 runtime API for endpoint "
        r"|addrConn\.createTransport failed to connect to \{(?:Addr: \\?\")?(?:unix://)?\S*(?:containerd|crio|dockershim"
        r"|cri-dockerd|docker)\.sock"
        # the runtime daemon's own fatal exit (docs/diagnoser.md, emitter table)
        r"|docker(?:d\[\d+\]: (?:failed to start daemon: |Error starting daemon: |Failed to connect to containerd: "
        r"|time=\"[^\"]*\" level=fatal msg=|fatal error: |panic: )"
        r"|\[\d+\]: (?:time=\"[^\"]*\" level=fatal msg=\")?Error starting daemon: )"
        r"|containerd\[\d+\]: (?:containerd: |time=\"[^\"]*\" level=fatal msg=|fatal error: |panic: )"
        r"|crio(?:\[\d+\]: (?:time=\"[^\"]*\" level=fatal msg=|fatal error: |panic: )"
        r"|\.service:? (?:(?:[Ss]tart(?:-pre)? )?operation timed out\.|[Ss]tart request repeated too quickly))"
        r"|EvictionThresholdMet|NodeHasDiskPressure|kubelet\.service: main process exited"
        r"|Unit kubelet\.service entered failed state|dial unix \S*\.sock: connect|runtime API version: rpc error"
        r"|from runtime service failed|Cannot connect to the Docker daemon at unix"
        r"|dial unix \S*docker\.sock: (?:no such file|connection refused|resource temporarily)"
        # (branch kb10, docs/diagnoser.md, emitter table: systemd killing a runtime whose start timed out, service.c;
        # docker's socket unit failing, socket.c; folded into the existing branches, each new top-level branch costs
        # the screen about 1 %)
        r"|containerd\.service(?:: main process exited| holdoff time over| failed\."
        r"|:? (?:(?:[Ss]tart(?:-pre)? )?operation timed out\.|[Ss]tart request repeated too quickly))"
        r"|docker\.(?:service(?:: (?:[Mm]ain process exited|Failed|Unit entered failed)| failed\.| holdoff time over"
        r"| stop-sigterm timed out|:? (?:(?:[Ss]tart(?:-pre)? )?operation timed out\."
        r"|[Ss]tart request repeated too quickly))"
        r"|socket:? (?:[Cc]ontrol process exited|Failed with result|Unit entered failed))"
        r"|Unit (?:(?:containerd|docker|crio)\.service|docker\.socket) entered failed state"
        # branch kb12 (docs/diagnoser.md, emitter table): systemd's start limit for a runtime unit (219's wording; later
        # ones are folded into the unit branches above), PID 1's failed or dependency-failed start job of a runtime
        # unit by its Description (job.c), dockerd 18.x unable to reach its own containerd (folded into `docker…` above)
        r"|start request repeated too quickly for (?:containerd|docker|crio)\.service"
        # (branch kb13: the same job results for the kubelet's unit by its Description, kubelet.systemd_job_failed,
        # folded into these two branches; the job's 'Job kubelet.service/start failed with result …' notice always
        # follows the line they pass)
        r"|Failed to start (?:(?:(?:docker|containerd|crio)\.service - )?(?:Docker Application Container Engine"
        r"|containerd container runtime|Container Runtime Interface for OCI \(CRI-O\)"
        r"|Open Container Initiative Daemon)\.|kubelet\.service - |kubelet: The Kubernetes Node Agent\."
        r"|Kubernetes Kubelet(?: Server| Service)?\.|Kubelet\.)"
        r"|Dependency failed for (?:(?:(?:docker|containerd|crio)\.service - )?(?:Docker Application Container Engine"
        r"|containerd container runtime|Container Runtime Interface for OCI \(CRI-O\)"
        r"|Open Container Initiative Daemon)\.|kubelet\.service - |kubelet: The Kubernetes Node Agent\."
        r"|Kubernetes Kubelet(?: Server| Service)?\.|Kubelet\.)"
        # branch kb10: the kubelet's PLEG relist and pod cleanup getting no answer from the runtime (pleg/generic.go,
        # kubelet.go, dockertools' operationTimeout)
        r"|GenericPLEG: Unable to retrieve pods(?::\s*|\"\s+err=\")(?:(?:rpc error: code = (?:Unknown|2) desc = )?"
        r"operation timeout: |rpc error: code = (?:DeadlineExceeded|Unavailable|4|14) )"
        r"|Error listing containers: dockertools\.operationTimeout"
        # the kubelet's own disk-pressure log lines (docs/diagnoser.md, emitter table): its admission refusal and its
        # image GC failure; pod messages, node conditions and scheduler events are not node log lines
        r"|Failed to admit pod .*(?:node has conditions: |nodeCondition=)\[DiskPressure\]"
        r"|Image garbage collection failed.* required amount of images|FreeDiskSpaceFailed"
        r"|space with errors in image deletion",
    ),
    # an orderly shutdown or reboot: the diagnoser needs these lines to tell a planned power-off from a crash
    (
        "planned",
        r"systemd-logind\[\d*\]: (?:Power key pressed|Powering [Oo]ff|System is (?:powering down|rebooting|halting)"
        r"|Rebooting\.\.\.|Halting\.\.\.|Rebooting via kexec\.\.\.)"
        # PID 1's debug job log naming a shutdown-only job (ops.pid1_shutdown_jobs; a superset: the KB drops user
        # managers)
        r"|Pulling in \S+ from (?:(?:reboot|poweroff|halt|kexec|shutdown|final|umount)\.target"
        r"|systemd-(?:reboot|poweroff|halt|kexec)\.service)/start"
        r"|Installed new job (?:(?:reboot|poweroff|halt|kexec|shutdown|final|umount)\.target"
        r"|systemd-(?:reboot|poweroff|halt|kexec)\.service)/start"
        r"|Added job (?:(?:reboot|poweroff|halt|kexec|shutdown|final|umount)\.target"
        r"|systemd-(?:reboot|poweroff|halt|kexec)\.service)/start"
        r"|Job (?:(?:reboot|poweroff|halt|kexec|shutdown|final|umount)\.target"
        r"|systemd-(?:reboot|poweroff|halt|kexec)\.service)/start"
        r"|reboot: (?:Restarting system|Power down)"
        # locksmithd (Container Linux / Flatcar) executing an update reboot (ops.locksmithd_reboot_delay / _sent)
        # (each behind its daemon's journal tag: a branch opening on a rarer literal costs the screen less, measured)
        r"|locksmithd\[\d+\]: (?:Logins detected, delaying reboot for|Reboot sent\. Going to sleep)"
        # zincati (Fedora CoreOS) finalizing a staged update, which reboots (ops.zincati_finalize)
        r"|zincati\[\d+\]: .*?(?:proceeding to finalize it|update applied, waiting for reboot: )"
        r"|The system (?:will (?:power off|reboot|halt|soft-reboot|kexec)"
        r"|is going down for (?:reboot|power-?off|halt|system halt|kexec reboot) NOW!)"
        r"|System (?:userspace is rebooting|halted\.\s*$)|Stopped target (?:(?:multi-user|graphical|getty)\.target - )?"
        r"(?:Multi-User System|Graphical Interface|Login Prompts)"
        r"|Show Plymouth (?:Reboot|Power Off|Halt)(?: with kexec)? Screen"
        r"|Shutdown manager (?:killing pod with gracePeriod|finished killing pod|completed processing shutdown event"
        r"|detected new shutdown event, isNodeShuttingDownNow(?::\s*|\"?\s+event=)true"
        # (kbshut4: the rest of processShutdownEvent(), the 1.2x event="shutdown"; ops.kubelet_shutdown_processing)
        r"|processing shutdown event|pod killing time out|failed killing pod"
        r"|detected new shutdown event\\?\"?\s+event=\\?\"?shutdown\b)"
        r"|reboot: System halted|systemd-shutdown\[\d+\]: "
        r"|from PID 1 \(systemd-shutdow\)|systemd-shutdow: \d+ output lines suppressed"
        r"|systemd\[1\]: (?:Shutting down\.|Reached target (?:Shutdown|Unmount All Filesystems)\.)"
        r"|Reached target (?:(?:poweroff|reboot|halt|kexec|final|shutdown|umount)\.target - )?(?:Power-Off|Reboot|Halt"
        r"|System (?:Power Off|Reboot|Halt|Shutdown)|Final Step|Late Shutdown Services|Unmount All Filesystems)\b"
        r"|Stopp(?:ed|ing) (?:(?:systemd-user-sessions\.service - )?Permit User Sessions"
        r"|(?:systemd-update-utmp\.service - )?(?:Update UTMP about|Record) System Boot/Shutdown)"
        r"|Stopping (?:(?:serial-)?getty@\S+\.service - )?(?:Serial )?Getty on "
        # 3.10's restart lines without 'reboot: ', ACPI S5, kvm's reboot notifier, power-off / reboot units, sysvinit
        r"|Restarting system(?: with command '[^']*')?\.\s*$|Power down\.\s*$|Preparing to enter system sleep state S5"
        r"|kvm: exiting hardware virtualization|INIT: Switching to runlevel: [06]"
        r"|Starting (?:systemd-(?:poweroff|reboot|halt|kexec)\.service - )?(?:System )?"
        r"(?:Power-Off|Power Off|Reboot|Halt)(?: via kexec)?\.\.\."
        # sysvinit's shutdown executing (ops.sysvinit_shutdown_syslog), mkinitcpio's shutdown-ramfs unit
        # (ops.shutdown_ramfs); a scheduled shutdown's wall (ops.scheduled_shutdown_wall) is left out: it goes to
        # terminals (only logind's newer 'The system will … at' is logged, passed above), and its cancellation,
        # which vetoes it in the diagnoser, is passed by nothing here
        r"|shutdown\[\d+\]: shutting down for system (?:halt|reboot)"
        r"|Generate shutdown-ramfs|mkinitcpio-generate-shutdown-ramfs\.service: "
        # OpenWrt's sysupgrade second stage killing every process before it flashes and reboots
        # (ops.openwrt_sysupgrade_stage2; common.sh's v() logs it with `logger -t upgrade` in later versions); its
        # 'Commencing upgrade.' comes before the hand-over to procd and is not passed
        r"|upgrade: Sending (?:TERM|KILL) to remaining processes \.\.\."
        # branch kbshut4: the kernel's kexec reboot (ops.kexec_starting_new_kernel; behind its pr_fmt prefix only),
        # systemd-shutdown's lines under the ident 'shutdown' (ops.shutdown_pid1_ident),
        # OpenShift's machine-config daemon initiating its reboot (its journal tag) and PID 1 starting the reboot unit
        # it asks systemd-run for (ops.mcd_initiating_reboot); kured logs in its pod and is not passed
        r"|kexec(?:_core)?: Starting new kernel\s*$|shutdown\[1\]: "
        r"|machine-config-daemon(?:\[\d+\])?:? \"?initiating reboot: "
        r"|Started (?:machine-config-daemon-reboot\.service - )?machine-config-daemon: "
        # branch round17: Talos's machined starting an operator's reboot / shutdown / upgrade sequence
        # (ops.talos_shutdown_sequence; its failure, the diagnoser's veto, is passed by nothing here)
        r"|\[talos\] (?:reboot|shutdown|upgrade|stageUpgrade) sequence: \d+ phase\(s\)"
        # branch shut18: its stopServices phase starting, a phase only sequences that reboot or power off hold
        # (ops.talos_stop_services_phase)
        r"|\[talos\] phase stopServices \(\d+/\d+\): \d+ tasks?\(s\)",
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


# PID 1 stopping an early-boot unit or a basic system target (the diagnoser's run `ops.shutdown_stop_run`,
# docs/diagnoser.md "Evidence across lines"): one such line is a restart as often as a shutdown, so they pass as
# `planned` only when a batch holds STOP_RUN_MIN different ones; the diagnoser then decides (restarts, time window).
# The units, the threshold, the user-manager skip and the initrd veto are the knowledge base's own, read from
# nodeheal.schemas (shutdown_stop_run.json): one list for both services.
_RUN: Final = shutdown_stop_run()
STOP_RUN_MIN: Final = _RUN.min_items
# a unit's stop line: the verb, then `[target ]<name or description>` or `<name> - <description>` to the line's end
# (the KB's regex per unit, `unit_patterns`, as one generic capture and a table: one search per line, not one per unit)
_UNIT_STOP: Final = re.compile(UNIT_STOP + r"(?:target )?(?P<what>.+)")
_UNIT_KEYS: Final = {
    said: item.key
    for item in _RUN.items
    for said in (
        *item.units,
        *item.descriptions,
        *(f"{unit} - {description}" for unit in item.units for description in item.descriptions),
    )
}
# the items with their own stop regexes (mounts, swap), a named group each (`_i<n>`: the item's index)
_OTHER_STOP: Final = re.compile("|".join(f"(?P<_i{n}>{i.stop})" for n, i in enumerate(_RUN.items) if not i.units))
# a line holding none of the run's literals that a stop regex spells (`Stopp`, `Unmount`, `Deactivat`) is no stop
_STOP_WORDS: Final = re.compile("|".join(re.escape(c) for c in _RUN.contains if any(c in i.stop for i in _RUN.items)))
# the initrd's switch-root stops the same units at every boot, and a user manager (systemd[N], N != 1) its own
_INITRD: Final = re.compile(_RUN.veto)
_USER_MANAGER: Final = re.compile(_RUN.skip)


def stop_run_item(line: str) -> str | None:
    """The key of the early-boot unit (or `mounts` / `swap devices`) a PID 1 stop line names, else None."""
    if _STOP_WORDS.search(line) is None:
        return None
    unit = _UNIT_STOP.search(line)
    key = None
    if unit is not None:  # the rest of the line, less its end: `...` or `.`, then blanks (the KB's `unit_patterns`)
        what = unit.group("what").rstrip()
        key = _UNIT_KEYS.get(what[:-3] if what.endswith("...") else what[:-1] if what.endswith(".") else what)
    if key is None:
        other = _OTHER_STOP.search(line)
        key = _RUN.items[int(other.lastgroup[2:])].key if other is not None and other.lastgroup else None
    if key is None or _USER_MANAGER.search(line) is not None:
        return None
    return key


def _stop_run(lines: list[str]) -> list[str]:
    """The early-boot stop lines of the batch when it holds at least STOP_RUN_MIN different ones, else []."""
    words = _STOP_WORDS.search
    hits = [(line, item) for line in lines if words(line) and (item := stop_run_item(line)) is not None]
    if len({item for _, item in hits}) < STOP_RUN_MIN or any(_INITRD.search(line) for line in lines):
        return []
    return [line for line, _ in hits]


def classify_lines(lines: list[str]) -> dict[str, list[str]]:
    """Group the lines of known trouble by coarse class (lines of no class are dropped); a run of early-boot
    stop lines (`_stop_run`) joins `planned`."""
    found: dict[str, list[str]] = {}
    screen, search = _SCREEN.search, _ALTERNATION.search
    for line in lines:
        match = search(line) if screen(line) is not None else None
        if match is not None:
            cls = match.lastgroup
            assert cls is not None
            found.setdefault(cls, []).append(line)
    run = _stop_run(lines)
    if run:
        planned = found.setdefault("planned", [])
        planned.extend(line for line in run if line not in planned)
    return found
