"""Crash signatures (docs/diagnoser.md): cut a log into crash reports and bucket them.

A report starts at a crash header (oops, GPF, divide error, BUG at, soft/hard lockup, hung task, RCU
stall, fatal MCE, panic, crash(8) `sys` summary) and collects the panic string, the RIP line, the
`CPU: … Tainted: … <release>` line and the reliable frames of its call trace. Two bucket levels, as
ABRT/FAF and SysOM do: `bucket()` is the exact key (kind + top frames, or the RIP function without a
trace), and `similarity()` / `cluster_reports()` group reports of one bug across kernel builds and partial
copies. Release, taint and hardware stay outside the key so fleet correlation can find one bucket
concentrated in one kernel or model. Pure.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from dataclasses import dataclass, field

from nodeheal.diagnoser.kb.logline import split_line
from nodeheal.schemas.diagnosis import CrashSignature

MAX_FRAMES = 6
MAX_REPORT_LINES = 400

# ABRT's generic frames + the NMI/watchdog preamble + panic/dump plumbing + syzkaller's hang skips.
GENERIC_FRAMES: frozenset[str] = frozenset(
    {
        "do_softirq", "do_vfs_ioctl", "dump_stack", "dump_stack_lvl", "flush_kthread_worker", "gs_change",
        "irq_exit", "kernel_thread_helper", "kthread", "process_one_work", "system_call_fastpath",
        "warn_slowpath_common", "warn_slowpath_fmt", "warn_slowpath_fmt_taint", "warn_slowpath_null",
        "worker_thread", "ret_from_fork", "ret_from_fork_asm", "entry_SYSCALL_64_after_hwframe",
        "do_syscall_64", "panic", "nmi_panic", "watchdog_overflow_callback", "__perf_event_overflow",
        "perf_event_overflow", "intel_pmu_handle_irq", "perf_event_nmi_handler", "nmi_handle", "do_nmi",
        "end_repeat_nmi", "watchdog_timer_fn", "__hrtimer_run_queues", "hrtimer_interrupt",
        "smp_apic_timer_interrupt", "apic_timer_interrupt", "notifier_call_chain", "__ratelimit",
        "print_mce", "mce_panic", "do_machine_check", "machine_check", "oops_end", "die", "do_trap",
        "do_error_trap", "show_stack", "__schedule", "schedule", "schedule_timeout", "io_schedule",
        "io_schedule_timeout", "wait_for_completion", "wait_for_common", "__mutex_lock_slowpath",
        "mutex_lock", "rwsem_down_read_slowpath", "rwsem_down_write_slowpath", "rwsem_down_read_failed",
        "rwsem_down_write_failed", "call_rwsem_down_read_failed", "call_rwsem_down_write_failed",
        "warn_alloc", "warn_alloc_failed", "asm_exc_invalid_op", "exc_invalid_op", "handle_bug",
        "asm_common_interrupt", "asm_sysvec_apic_timer_interrupt", "sysvec_apic_timer_interrupt",
        "machine_kexec", "__crash_kexec", "crash_kexec",
    }
)  # fmt: skip

_HEADERS: tuple[tuple[str, re.Pattern[str]], ...] = (
    (
        "oops_null_deref",
        re.compile(
            r"BUG: (?:unable to handle kernel NULL pointer|kernel NULL pointer dereference)"
            r"|Unable to handle kernel NULL pointer dereference|BUG: unable to handle kernel NULL\s*$"
        ),
    ),
    (
        "paging_request",
        re.compile(
            r"BUG: unable to handle (?:kernel paging request|page fault for address)|Unable to handle kernel paging"
        ),
    ),
    ("gpf", re.compile(r"general protection fault")),
    ("divide_error", re.compile(r"divide error: 0000")),
    ("invalid_opcode_BUG_at", re.compile(r"kernel BUG at |invalid opcode: 0000")),
    ("warning", re.compile(r"WARNING: CPU: \d+ PID: \d+ at ")),
    ("soft_lockup", re.compile(r"BUG: soft lockup - CPU#\d+")),
    ("hard_lockup", re.compile(r"Watchdog detected hard LOCKUP")),
    ("hung_task", re.compile(r"INFO: task .+:\d+ blocked for more than")),
    ("rcu_stall", re.compile(r"rcu_\w+ (?:self-)?detected stalls?|rcu_\w+ kthread starved")),
    ("mce_fatal", re.compile(r"Machine check: Processor context corrupt|Machine Check Exception")),
    ("sysrq", re.compile(r"sysrq triggered crash|SysRq : Trigger a crash")),
    # an oops line with no BUG/GPF header before it (arm64 "Internal error: Oops:", 6.9+ "Oops: Oops: 0000 [#1]")
    ("oops", re.compile(r"Internal error: Oops|^Oops: (?:Oops: )?\d{4} \[#\d+\]")),
)
# headers that go on an open report instead of starting one (one oops prints several header lines)
_CONTINUING = frozenset({"invalid_opcode_BUG_at", "mce_fatal", "oops_null_deref", "gpf", "oops"})
_PANIC = re.compile(r"Kernel panic - not syncing: ?(?P<panic>.*?)\s*(?:\]---)?\s*$")
_VMCORE_KEY = re.compile(r"^\s*(?P<key>KERNEL|DUMPFILE|RELEASE|VERSION|PANIC|NODENAME|MACHINE|CPUS):\s+(?P<value>.*)$")
_PANIC_KINDS: tuple[tuple[str, re.Pattern[str]], ...] = (
    ("hard_lockup", re.compile(r"[Hh]ard LOCKUP")),
    ("soft_lockup", re.compile(r"softlockup")),
    ("hung_task", re.compile(r"hung_task")),
    ("mce_fatal", re.compile(r"[Mm]achine check")),
    ("oom_panic", re.compile(r"Out of memory")),
    ("sysrq", re.compile(r"sysrq", re.IGNORECASE)),
)
_RIP = re.compile(
    r"(?:RIP: 00(?P<cs>[0-9a-f]{2}):(?:\[<[0-9a-f]+>\]\s+\[<[0-9a-f]+>\]\s+)?|\bIP: (?:\[<[0-9a-f]+>\]\s+)?|"
    r"\bRIP  \[<[0-9a-f]+>\]\s+|"  # the old oops trailer: 'RIP  [<ffffffff817ee088>] sock_sendmsg+0x45/0x7a'
    r"\bpc : |PC is at |EIP: (?:\[<[0-9a-f]+>\]\s+)?)"
    r"(?P<func>[A-Za-z_][\w.]*)\+0x[0-9a-f]+/0x[0-9a-f]+(?:\s+\[(?P<mod>[^\]\s]+)\])?"
)
_TAINT = re.compile(
    r"(?:CPU: \d+ PID: \d+ Comm: |Pid: \d+, comm: ).*?(?:Tainted: (?P<taint>[A-Z][A-Z -]*?)|Not tainted)\s+"
    r"(?P<release>\d+\.\d+[\w.+~-]*)"
)
_CALL_TRACE = re.compile(r"Call Trace:|Call trace:|Backtrace:")
_FRAME = re.compile(
    r"(?:^|[\s>\]])(?P<unrel>\?\s+)?(?P<func>[A-Za-z_][\w.]*)\+0x[0-9a-f]+/0x[0-9a-f]+(?:\s+\[(?P<mod>[^\]\s]+)\])?"
)
_CRASH_BT = re.compile(r"^\s*#\d+\s+\[[0-9a-f]+\]\s+(?P<func>[A-Za-z_][\w.]*)\s+at\s+[0-9a-f]+")
_NUMBERS = re.compile(r"0x[0-9a-fA-F]+|\b[0-9a-fA-F]{8,}\b|\d+")
_BUG_AT = re.compile(r"kernel BUG at (?P<path>\S+?):(?P<line>\d+)!")
_BUILD_PREFIX = re.compile(r"^.*/linux-[^/]+/")
_HUNG_COMM = re.compile(r"INFO: task (?P<comm>.+):\d+ blocked")
_SOFT_COMM = re.compile(r"stuck for \d+s! \[(?P<comm>.+):\d+\]")
_CPU_COMM = re.compile(r"(?:CPU: \d+ (?:UID: \d+ )?PID: \d+ Comm: |Pid: \d+, comm: )(?P<comm>\S+)")
SIMILARITY_THRESHOLD = 0.5  # level 2: reports at least this similar share a cluster (FAF cuts at distance 0.3)
# kinds that are one family for level-2 merging (syzbot "alt titles": bad access, hangs, stalls)
_FAMILY = {
    "oops_null_deref": "bad_access",
    "paging_request": "bad_access",
    "gpf": "bad_access",
    "soft_lockup": "stall",
    "hard_lockup": "stall",
    "rcu_stall": "stall",
}


def normalise(text: str) -> str:
    """Numbers and addresses → N, so that the same message from two hosts compares equal."""
    return _NUMBERS.sub("N", text).strip()


def strip_suffix(func: str) -> str:
    """`nmi_handle.isra.0` → `nmi_handle` (ABRT cuts function names at the first '.')."""
    return func.split(".", 1)[0]


@dataclass(slots=True)
class CrashReport:
    kind: str
    start: int
    line_indices: list[int] = field(default_factory=list)
    panic_string: str | None = None
    rip_func: str | None = None
    module: str | None = None
    frames: list[tuple[str, str | None]] = field(default_factory=list)
    bug_at: str | None = None
    taint: str | None = None
    kernel_release: str | None = None
    comm: str | None = None
    cpu_comm: str | None = None  # from the `CPU: … Comm:` line, which every copy of an oops carries
    in_trace: bool = False
    vmcore: bool = False

    def top_frames(self) -> tuple[str, ...]:
        out: list[str] = []
        for func, module in self.frames:
            if func in GENERIC_FRAMES and module is None:
                continue
            if self.rip_func is not None and not out and func == self.rip_func:
                continue
            out.append(func)
            if len(out) == MAX_FRAMES:
                break
        return tuple(out)

    def task(self) -> str | None:
        """The stuck / hung task: from the watchdog header, else from the `CPU: … Comm:` line."""
        comm = self.comm or (self.cpu_comm if self.kind in {"soft_lockup", "hard_lockup"} else None)
        return normalise(comm) if comm else None

    def functions(self) -> tuple[str, ...]:
        """The crashing function and the top reliable frames: what a copy of the report carries."""
        frames = self.top_frames()
        return (self.rip_func, *frames) if self.rip_func else frames

    def identified(self) -> bool:
        """Does this copy carry anything that identifies the bug (functions, BUG-at, a specific panic
        string)? A bare watchdog line does not, nor a stuck task's name alone: its bucket is its kind
        (+ task), which groups occurrences on one node but cannot tell two bugs apart."""
        specific_panic = bool(self.panic_string) and not _GENERIC_PANICS.match(normalise(self.panic_string or ""))
        return bool(self.functions() or self.bug_at or specific_panic)

    def bucket(self) -> str:
        """Level 1, the exact key (ABRT's duphash idea): kind + the top reliable frames; the RIP function
        only when the trace is missing, so a copy without its RIP line keeps the bucket of the full copy."""
        frames = self.top_frames()
        anchor = "" if frames else (self.rip_func or "")
        task = (self.task() or "") if self.kind in {"hung_task", "soft_lockup"} and not frames else ""
        panic = normalise(self.panic_string) if self.panic_string and not frames and not self.rip_func else ""
        key = "|".join([self.kind, anchor, *frames, task, panic, self.bug_at or ""])
        return hashlib.sha1(key.encode(), usedforsecurity=False).hexdigest()[:16]

    def signature(self) -> CrashSignature:
        return CrashSignature(
            kind=self.kind,
            bucket=self.bucket(),
            panic_string=normalise(self.panic_string) if self.panic_string else None,
            rip_func=self.rip_func,
            module=self.module,
            top_frames=self.top_frames(),
            bug_at=self.bug_at,
            taint=self.taint,
            kernel_release=self.kernel_release,
        )


def _panic_kind(panic: str) -> str:
    for kind, pattern in _PANIC_KINDS:
        if pattern.search(panic):
            return kind
    return "panic"


def extract_reports(lines: Sequence[str]) -> list[CrashReport]:
    """Every crash report in the input, in order."""
    reports: list[CrashReport] = []
    current: CrashReport | None = None
    for index, raw in enumerate(lines):
        message = split_line(raw).message
        if current is not None and index - current.start > MAX_REPORT_LINES:
            current = None
        vm = _VMCORE_KEY.match(message)
        if vm:
            key, value = vm.group("key"), vm.group("value").strip()
            if current is None or not current.vmcore:
                current = CrashReport(kind="panic", start=index, vmcore=True)
                reports.append(current)
            current.line_indices.append(index)
            if key == "RELEASE":
                current.kernel_release = value.split()[0] if value else None
            elif key == "PANIC":
                text = value.strip('"')
                panic = _PANIC.search(text)
                current.panic_string = panic.group("panic") if panic else text
                current.kind = _panic_kind(current.panic_string)
                for kind, pattern in _HEADERS:
                    if pattern.search(text):
                        current.kind = kind
                        break
            continue
        header = next((kind for kind, pattern in _HEADERS if pattern.search(message)), None)
        panic = _PANIC.search(message)
        if header is not None:
            # one oops prints several header lines (BUG at → invalid opcode; MCE per CPU → context corrupt)
            continues = (
                current is not None
                and (current.kind == header or header == "oops")
                and header in _CONTINUING
                and not current.frames
                and current.panic_string is None
                and index - current.start <= 12
            )
            if current is None or not continues:
                current = CrashReport(kind=header, start=index)
                reports.append(current)
            current.line_indices.append(index)
            bug_at = _BUG_AT.search(message)
            if bug_at:
                current.bug_at = _BUILD_PREFIX.sub("", bug_at.group("path")) + ":" + bug_at.group("line")
            comm = _HUNG_COMM.search(message) or _SOFT_COMM.search(message)
            if comm and current.comm is None:
                current.comm = comm.group("comm")
            if panic:
                current.panic_string = panic.group("panic")
            continue
        if panic:
            if current is None or current.panic_string is not None:
                current = CrashReport(kind=_panic_kind(panic.group("panic")), start=index)
                reports.append(current)
            elif current.kind == "panic":
                current.kind = _panic_kind(panic.group("panic"))
            current.panic_string = panic.group("panic")
            current.line_indices.append(index)
            continue
        if current is None:
            # a copy that lost its header (a pstore part, a paste that starts mid-oops): a kernel RIP line
            # opens a report of unknown kind, so its function and frames still identify it
            rip = _RIP.search(message)
            if rip is None or rip.group("cs") == "33" or not rip.group("cs"):
                continue
            current = CrashReport(kind="oops", start=index)
            reports.append(current)
        cpu_comm = _CPU_COMM.search(message)
        if cpu_comm and current.cpu_comm is None:
            current.cpu_comm = cpu_comm.group("comm")
        taint = _TAINT.search(message)
        if taint:
            if current.kernel_release is None:
                current.kernel_release = taint.group("release").rstrip("-")
            if current.taint is None:
                letters = re.sub(r"[\s-]", "", taint.group("taint") or "")
                current.taint = letters or None
            continue
        rip = _RIP.search(message)
        if rip and rip.group("cs") != "33" and current.rip_func is None:
            current.rip_func = strip_suffix(rip.group("func"))
            current.module = rip.group("mod").split("@", 1)[0] if rip.group("mod") else None
            continue
        if _CALL_TRACE.search(message):
            # the watchdog rule (ChromeOS): a later trace replaces the first only if that one was all generic
            if current.frames and not current.top_frames():
                current.frames.clear()
            current.in_trace = True
            continue
        bt = _CRASH_BT.match(message)
        frame = bt or (_FRAME.search(message) if current.in_trace else None)
        if frame is not None:
            if bt is None and frame.group("unrel"):
                continue
            module = frame.groupdict().get("mod")
            current.frames.append((strip_suffix(frame.group("func")), module.split("@", 1)[0] if module else None))
    return reports


# panic strings that name only the kind of crash, not the bug (the watchdog and oops panics)
_GENERIC_PANICS = re.compile(
    r"^(?:Fatal exception|Oops|Attempted to kill|Kernel panic|(?:Watchdog detected )?hard LOCKUP|softlockup: hung"
    r"|hung_task: blocked|Fatal machine check|Fatal Machine check)",
    re.IGNORECASE,
)


def _family(kind: str) -> str:
    return _FAMILY.get(kind, kind)


def similarity(a: CrashReport, b: CrashReport) -> float:
    """Level 2 (ABRT/FAF, SysOM): how alike two reports are across kernel builds, in [0, 1].

    Same exact key → 1. Otherwise only reports of one family compare (syzbot's alt titles: NULL deref /
    paging / GPF are one "bad access"; soft / hard lockup and RCU stall one "stall"); a bare panic line
    compares with any kind. Then: the same `BUG at` file:line; the same crashing function; else the
    Jaccard similarity of the crashing function + top frames; with no functions, the same specific panic
    string or the same stuck task.
    """
    if a.bucket() == b.bucket():
        return 1.0
    if _family(a.kind) != _family(b.kind) and "panic" not in (a.kind, b.kind) and "oops" not in (a.kind, b.kind):
        return 0.0
    if a.bug_at and b.bug_at:
        return 1.0 if a.bug_at == b.bug_at else 0.0
    fa, fb = a.functions(), b.functions()
    if fa and fb:
        if a.rip_func and a.rip_func == b.rip_func:
            return 1.0
        sa, sb = set(fa), set(fb)
        return len(sa & sb) / len(sa | sb)
    pa = normalise(a.panic_string) if a.panic_string else None
    pb = normalise(b.panic_string) if b.panic_string else None
    if pa and pa == pb and not _GENERIC_PANICS.match(pa):
        return 0.9
    ta, tb = a.task(), b.task()
    if ta and ta == tb and not fa and not fb and _family(a.kind) == _family(b.kind):
        return 0.6
    return 0.0


def cluster_reports(reports: Sequence[CrashReport], *, threshold: float = SIMILARITY_THRESHOLD) -> list[int]:
    """Level 2 buckets: single-linkage clusters of reports at least `threshold` similar (index of each
    report's cluster, numbered by first member). Quadratic; meant for one fleet's open reports."""
    parent = list(range(len(reports)))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for i in range(len(reports)):
        for j in range(i + 1, len(reports)):
            if root(i) != root(j) and similarity(reports[i], reports[j]) >= threshold:
                parent[root(j)] = root(i)
    return [root(i) for i in range(len(reports))]
