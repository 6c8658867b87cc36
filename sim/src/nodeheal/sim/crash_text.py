"""The crash text of the simulator's two bugs that strike many hosts: the zone spike and the bad kernel.

Every other fatal fault crashes with a public excerpt of its class (`faults.kernel_samples`). These two stand for
one bug on many hosts, and a real fleet shows such a bug as one crash signature: on every host the same function
the CPU was stuck in or the panic names, and the same top of the call trace (docs/diagnoser.md, "Crash
signatures"). The public samples of the two classes cannot stand for that: the hard-lockup panic shows only the NMI
watchdog's own frames and the panic sample only `Oops: Fatal exception`, reports that identify no bug — the
diagnoser keeps such a crash to its host and never makes it a fleet finding.

So the two reports are composed here, in the shapes an x86-64 5.10 kernel prints them in (the NMI watchdog's
`Watchdog detected hard LOCKUP on cpu N`, `show_regs()` with the stuck CPU's RIP and trace, then `panic()` with its
own stack; a stack-protector `panic()` from `__stack_chk_fail`); written for the simulator, not taken from a
machine or another project. What differs from host to host is what differs in a real fleet — uptime stamps, CPU,
PID and task, register and stack addresses, the callers below the top of the trace — never the functions the
crash bucket is made of. The kernel release in the `CPU:` lines is the node's (`faults.with_kernel_release` does
the same to the public excerpts).
"""

from __future__ import annotations

import random
import zlib

HARDWARE_NAME = "Alibaba Cloud Alibaba Cloud ECS, BIOS 449e491 04/01/2014"
KERNEL_OFFSET = (
    "Kernel Offset: 0x{off:x} from 0xffffffff81000000 (relocation range: 0xffffffff80000000-0xffffffffbfffffff)"
)


def host_rng(node: str, boot_id: str) -> random.Random:
    """The host's own numbers (CPU, PID, addresses) for the crash of this boot: derived from the node and its
    boot, so they differ between hosts and crashes and never draw from the simulator's fault stream."""
    return random.Random(zlib.crc32(f"{node}/{boot_id}".encode()))


def _stamped(lines: list[str], uptime_s: float) -> list[str]:
    """printk's `[seconds.micros]` stamps, a few microseconds apart from the crash's uptime on."""
    out = []
    at = max(1.0, uptime_s)
    for line in lines:
        out.append(f"[{at:12.6f}] {line}")
        at += 0.000037 + 0.000011 * (len(line) % 7)
    return out


def _regs(rng: random.Random) -> list[str]:
    """`__show_regs()`'s general registers: kernel stack and direct-map pointers, flags with interrupts off."""

    def ptr() -> str:
        return f"ffff{rng.choice('89ab')}{rng.getrandbits(44) & ~0x3F:011x}"

    return [
        f"RSP: 0018:ffffb{rng.getrandbits(44) & ~0x7:011x} EFLAGS: 00000002",
        f"RAX: 0000000000000001 RBX: {ptr()} RCX: 0000000000000001",
        f"RDX: 0000000000000000 RSI: 0000000000000001 RDI: {ptr()}",
        f"RBP: {ptr()} R08: 0000000000000000 R09: 0000000000000001",
        f"R10: 0000000000000000 R11: 0000000000000000 R12: {ptr()}",
        f"R13: 0000000000000000 R14: 0000000000000000 R15: {ptr()}",
    ]


def _user_regs(rng: random.Random, syscall: int) -> list[str]:
    """The user registers the trace ends with when the task came in by a system call (libc's syscall stub)."""
    rip = 0x7F0000000000 | rng.getrandbits(36)
    return [
        f"RIP: 0033:0x{rip:x}",
        f"Code: Unable to access opcode bytes at RIP 0x{rip - 42:x}.",
        f"RSP: 002b:00007ffc{rng.getrandbits(32) & ~0x7:08x} EFLAGS: 00000246 ORIG_RAX: {syscall:016x}",
    ]


# the zone spike: the CPU spins with interrupts off on a virtio-blk queue lock while the zone's block storage
# stalls (the hard lockup's RIP and trace); the top of the trace is the same on every host
_LOCKUP_RIP = "RIP: 0010:native_queued_spin_lock_slowpath+0x66/0x1d0"
_LOCKUP_CODE = (
    "Code: 6c f0 0f ba 2f 08 0f 92 c0 0f b6 c0 c1 e0 08 89 c2 8b 07 30 e4 09 d0 a9 00 01 ff ff 75 43 85 c0 74 0e"
    " 8b 07 84 c0 74 08 f3 90 <8b> 07 84 c0 75 f8 b8 01 00 00 00 66 89 07 c3 8b 37 81 fe 00 01 00 00 75"
)
_LOCKUP_TOP = [
    "_raw_spin_lock_irqsave+0x3a/0x40",
    "virtio_queue_rq+0x1b9/0x560 [virtio_blk]",
    "blk_mq_dispatch_rq_list+0x12e/0x810",
    "__blk_mq_do_dispatch_sched+0x1d4/0x310",
    "__blk_mq_sched_dispatch_requests+0x135/0x170",
    "blk_mq_sched_dispatch_requests+0x30/0x60",
    "__blk_mq_run_hw_queue+0x51/0xd0",
    "__blk_mq_delay_run_hw_queue+0x141/0x160",
    "blk_mq_sched_insert_requests+0x6a/0xf0",
    "blk_mq_flush_plug_list+0x125/0x1f0",
    "blk_flush_plug_list+0xd7/0x100",
    "blk_finish_plug+0x21/0x30",
]
# who flushed the plug: a container's fsync, the writeback worker, or the ext4 journal's commit
_LOCKUP_CALLERS: tuple[tuple[str, tuple[str, ...]], ...] = (
    (
        "{comm}",
        (
            "ext4_writepages+0x2f5/0xe80 [ext4]",
            "do_writepages+0x34/0xc0",
            "__filemap_fdatawrite_range+0xc5/0x100",
            "file_write_and_wait_range+0x61/0xb0",
            "ext4_sync_file+0x73/0x370 [ext4]",
            "do_fsync+0x38/0x70",
            "__x64_sys_fsync+0x10/0x20",
            "do_syscall_64+0x33/0x40",
            "entry_SYSCALL_64_after_hwframe+0x61/0xc6",
        ),
    ),
    (
        "kworker/u{u}:{w}",
        (
            "ext4_writepages+0x2f5/0xe80 [ext4]",
            "do_writepages+0x34/0xc0",
            "__writeback_single_inode+0x39/0x2a0",
            "writeback_sb_inodes+0x20d/0x490",
            "__writeback_inodes_wb+0x4c/0xe0",
            "wb_writeback+0x1d6/0x2c0",
            "wb_workfn+0x29b/0x4d0",
            "process_one_work+0x1b4/0x380",
            "worker_thread+0x53/0x3e0",
            "kthread+0x118/0x140",
            "ret_from_fork+0x1f/0x30",
        ),
    ),
    (
        "jbd2/vda1-8",
        (
            "jbd2_journal_commit_transaction+0x122d/0x1a90 [jbd2]",
            "kjournald2+0xb6/0x280 [jbd2]",
            "kthread+0x118/0x140",
            "ret_from_fork+0x1f/0x30",
        ),
    ),
)
_CONTAINER_TASKS = ("etcd", "mysqld", "postgres", "java", "containerd", "prometheus")
_NMI_STACK = [
    "<NMI>",
    "dump_stack+0x57/0x6e",
    "panic+0x10d/0x2e9",
    "nmi_panic.cold+0xc/0xc",
    "watchdog_overflow_callback.cold+0x5c/0x70",
    "__perf_event_overflow+0x52/0xf0",
    "{pmu}",
    "perf_event_nmi_handler+0x28/0x50",
    "nmi_handle+0x5e/0x120",
    "default_do_nmi+0x40/0x100",
    "exc_nmi+0x139/0x160",
    "end_repeat_nmi+0x16/0x55",
]
# the PMU interrupt the watchdog's perf event overflowed in: Intel's and AMD's handlers
_PMU_FRAMES = {
    "intel": ("handle_pmi_common+0x1ba/0x2a0", "intel_pmu_handle_irq+0xc8/0x160"),
    "amd": ("x86_pmu_handle_irq+0x10a/0x1b0", "amd_pmu_handle_irq+0x1a/0x40"),
}
_MODULES = (
    "Modules linked in: xt_conntrack xt_MASQUERADE nf_conntrack_netlink nfnetlink xt_addrtype iptable_filter"
    " iptable_nat nf_nat nf_conntrack nf_defrag_ipv6 nf_defrag_ipv4 br_netfilter bridge stp llc overlay ext4 mbcache"
    " jbd2 intel_rapl_msr intel_rapl_common crct10dif_pclmul crc32_pclmul ghash_clmulni_intel virtio_net"
    " net_failover failover virtio_blk virtio_pci virtio_ring virtio"
)


def zone_lockup_lines(*, release: str, cpu_model: str, uptime_s: float, rng: random.Random) -> list[str]:
    """The zone spike's crash: a hard lockup that panics (`kernel.hardlockup_panic=1`), as the NMI watchdog and
    `panic()` print it — the stuck CPU's registers and trace, then the panic with the NMI's own stack (through
    the PMU interrupt of the node's CPU vendor)."""
    pmu = _PMU_FRAMES["amd" if "AMD" in cpu_model else "intel"]
    nmi_stack = [line for frame in _NMI_STACK for line in (pmu if frame == "{pmu}" else (frame,))]
    cpu = rng.randrange(64)
    pid = rng.randrange(300, 4_000_000)
    comm_form, callers = rng.choice(_LOCKUP_CALLERS)
    comm = comm_form.format(comm=rng.choice(_CONTAINER_TASKS), u=rng.choice((128, 256)), w=rng.randrange(1, 9))
    if comm.startswith("jbd2"):
        pid = rng.randrange(300, 1200)
    cpu_line = f"CPU: {cpu} PID: {pid} Comm: {comm} Not tainted {release} #1"
    trace = [f" {frame}" for frame in (*_LOCKUP_TOP, *callers)]
    user = _user_regs(rng, 74) if callers[-1].startswith("entry_SYSCALL_64") else []  # fsync(2)
    regs = _regs(rng)
    lines = [
        f"NMI watchdog: Watchdog detected hard LOCKUP on cpu {cpu}",
        _MODULES,
        cpu_line,
        f"Hardware name: {HARDWARE_NAME}",
        _LOCKUP_RIP,
        _LOCKUP_CODE,
        *regs,
        "Call Trace:",
        *trace,
        *user,
        "Kernel panic - not syncing: Hard LOCKUP",
        cpu_line,
        f"Hardware name: {HARDWARE_NAME}",
        "Call Trace:",
        *(f" {frame}" for frame in nmi_stack),
        _LOCKUP_RIP,
        _LOCKUP_CODE,
        *regs,
        " </NMI>",
        *trace,
        *user,
        KERNEL_OFFSET.format(off=rng.randrange(1, 0x3E) << 24),
        "---[ end Kernel panic - not syncing: Hard LOCKUP ]---",
    ]
    return _stamped(lines, uptime_s)


# the bad kernel: its overlayfs copy-up overruns a stack buffer, and the stack protector panics on the way out
_STACK_CHK_FUNC = "ovl_copy_up_flags+0x5b1/0x5c0 [overlay]"
_STACK_CHK_PANIC = f"stack-protector: Kernel stack is corrupted in: {_STACK_CHK_FUNC}"
_STACK_CHK_TRACE = [
    "dump_stack+0x57/0x6e",
    "panic+0x10d/0x2e9",
    f"? {_STACK_CHK_FUNC}",
    "__stack_chk_fail+0x10/0x10",
    _STACK_CHK_FUNC,
    "ovl_maybe_copy_up+0x7d/0x90 [overlay]",
    "ovl_open+0x4c/0xb0 [overlay]",
    "do_dentry_open+0x14f/0x3a0",
    "path_openat+0xae9/0x10b0",
    "do_filp_open+0x88/0x130",
    "do_sys_openat2+0x97/0x150",
    "__x64_sys_openat+0x54/0xa0",
    "do_syscall_64+0x33/0x40",
    "entry_SYSCALL_64_after_hwframe+0x61/0xc6",
]
# the processes that open a file of a container's lower layer for writing (the copy-up)
_COPY_UP_TASKS = ("runc:[2:INIT]", "java", "python3", "nginx", "dpkg", "node", "sh")


def bad_kernel_panic_lines(*, release: str, uptime_s: float, rng: random.Random) -> list[str]:
    """The bad kernel's crash: a stack-protector panic (`__stack_chk_fail` names the function whose canary was
    overwritten), with the panicking task's trace and the user registers of the syscall it came in by."""
    cpu = rng.randrange(64)
    pid = rng.randrange(300, 4_000_000)
    lines = [
        f"Kernel panic - not syncing: {_STACK_CHK_PANIC}",
        f"CPU: {cpu} PID: {pid} Comm: {rng.choice(_COPY_UP_TASKS)} Not tainted {release} #1",
        f"Hardware name: {HARDWARE_NAME}",
        "Call Trace:",
        *(f" {frame}" for frame in _STACK_CHK_TRACE),
        *_user_regs(rng, 257),  # openat(2)
        KERNEL_OFFSET.format(off=rng.randrange(1, 0x3E) << 24),
        f"---[ end Kernel panic - not syncing: {_STACK_CHK_PANIC} ]---",
    ]
    return _stamped(lines, uptime_s)
