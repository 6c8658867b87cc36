"""Crash signatures (docs/diagnoser.md): cut a log into crash reports and bucket them.

A report starts at a crash header (oops, GPF, divide error, BUG at, soft/hard lockup, hung task, RCU
stall, fatal MCE, panic, crash(8) `sys` summary) and collects the panic string, the RIP line, the
`CPU: … Tainted: … <release>` line and the reliable frames of its call trace. The bucket key is a hash
of (kind, RIP function, top frames) — release, taint and hardware stay outside the key so fleet
correlation can find one bucket concentrated in one kernel or model. Pure.
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
    ("oops_null_deref", re.compile(r"BUG: (?:unable to handle kernel NULL pointer|kernel NULL pointer dereference)")),
    ("paging_request", re.compile(r"BUG: unable to handle (?:kernel paging request|page fault for address)")),
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
)
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

    def bucket(self) -> str:
        frames = self.top_frames()
        comm = normalise(self.comm) if self.comm and self.kind in {"hung_task", "soft_lockup"} else ""
        panic = normalise(self.panic_string) if self.panic_string and not frames and not self.rip_func else ""
        key = "|".join([self.kind, self.rip_func or "", *frames, comm, panic])
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
                and current.kind == header
                and header in {"invalid_opcode_BUG_at", "mce_fatal", "oops_null_deref", "gpf"}
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
            continue
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
