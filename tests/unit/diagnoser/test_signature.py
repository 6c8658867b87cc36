"""Crash signatures on the real oops / panic samples and on synthetic
reports that differ only in what must not change the bucket."""

from __future__ import annotations

from nodeheal.diagnoser.kb import extract_reports
from tests.unit.diagnoser.scenarios import OOPS_A, OOPS_B, sample_lines


def only(lines: list[str]):  # type: ignore[no-untyped-def]
    reports = extract_reports(lines)
    assert len(reports) == 1, reports
    return reports[0].signature()


def test_gpf_sample_rip_taint_release() -> None:
    sig = only(sample_lines("kernel_oops_gpf"))
    assert (sig.kind, sig.rip_func, sig.taint, sig.kernel_release) == ("gpf", "__dec_node_state", "GO", "4.19.81")


def test_divide_error_sample_module_from_rip() -> None:
    sig = only(sample_lines("kernel_oops_divide_error"))
    assert (sig.kind, sig.rip_func, sig.module) == ("divide_error", "pool_io_hints", "dm_thin_pool")
    assert sig.kernel_release == "3.16.0-4-amd64"


def test_bug_at_sample() -> None:
    sig = only(sample_lines("kernel_bug"))
    assert sig.kind == "invalid_opcode_BUG_at"
    assert sig.bug_at == "mm/percpu.c:694"


def test_null_deref_sample_ip_line() -> None:
    sig = only(sample_lines("kernel_oops_null_deref"))
    assert (sig.kind, sig.rip_func) == ("oops_null_deref", "flush_unmaps_timeout")


def test_hard_lockup_panic_strips_the_nmi_preamble() -> None:
    sig = only(sample_lines("hard_lockup", 1))
    assert sig.kind == "hard_lockup"
    assert sig.panic_string == "Hard LOCKUP"
    assert sig.top_frames == ()  # every frame of that trace is NMI / panic plumbing
    assert sig.taint == "GWOEK"
    assert sig.kernel_release == "3.10.0-862.mt20190308.130.el7.x86_64"


def test_fatal_mce_sample_has_taint_m() -> None:
    sig = only(sample_lines("mce_fatal_panic"))
    assert sig.kind == "mce_fatal"
    assert sig.taint is not None and "M" in sig.taint
    assert sig.panic_string == "Fatal Machine check"


def test_vmcore_sys_summary() -> None:
    sig = only(sample_lines("vmcore_crash_sys_summary"))
    assert (sig.kind, sig.panic_string, sig.kernel_release) == (
        "hung_task",
        "hung_task: blocked tasks",
        "5.15.0-53-generic",
    )


def test_panic_only_sample() -> None:
    sig = only(sample_lines("kernel_panic"))
    assert (sig.kind, sig.panic_string) == ("panic", "Oops: Fatal exception")


def test_hung_task_frames_skip_generic_scheduler_frames() -> None:
    sig = only(sample_lines("hung_task", 2))
    assert sig.top_frames[0] == "ovl_sync_fs"
    assert "schedule" not in sig.top_frames and "rwsem_down_read_slowpath" not in sig.top_frames


def test_frames_are_reliable_normalised_and_generic_free() -> None:
    sig = only(OOPS_A)
    assert sig.rip_func == "tcp_v4_rcv"
    assert sig.top_frames == (
        "ip_protocol_deliver_rcu",
        "ip_local_deliver_finish",  # .isra.0 stripped
        "ip_local_deliver",
        "__netif_receive_skb_one_core",
    )  # '? ktime_get' is unreliable, process_one_work is generic
    assert sig.panic_string == "Fatal exception in interrupt"


def test_same_crash_on_another_host_and_release_has_the_same_bucket() -> None:
    other = [
        line.replace("[ 100.", "[ 9999.").replace("5.10.134-16", "5.10.200-1").replace("0x3a/0x9c0", "0x4b/0x9d0")
        for line in OOPS_A
    ]
    other[0] = "[ 9999.1] BUG: unable to handle kernel NULL pointer dereference at 0000000000000ff8"
    a, b = only(OOPS_A), only(other)
    assert a.bucket == b.bucket
    assert a.kernel_release != b.kernel_release


def test_different_crashes_have_different_buckets() -> None:
    assert only(OOPS_A).bucket != only(OOPS_B).bucket


def test_two_reports_in_one_log() -> None:
    reports = extract_reports([*OOPS_A, *OOPS_B])
    assert [r.kind for r in reports] == ["oops_null_deref", "gpf"]


# ---- partial copies of real reports (tests/data/kb/corpus.jsonl)
def corpus(excerpt: str) -> list[str]:
    import json
    from pathlib import Path

    path = Path(__file__).resolve().parents[2] / "data" / "kb" / "corpus.jsonl"
    return next(r["lines"] for r in map(json.loads, path.read_text().splitlines()) if r["id"] == excerpt)


def test_a_copy_without_the_rip_line_keeps_the_bucket() -> None:
    lines = corpus("kb-136")  # CachyOS 7.2 divide error in enqueue_task_fair
    without_rip = [line for line in lines if not line.startswith("RIP:")]
    assert only(without_rip).bucket == only(lines).bucket


def test_a_copy_without_the_watchdog_header_keeps_the_bucket_through_the_cpu_comm_line() -> None:
    lines = corpus("kb-014")  # SONiC soft lockup: header [kworker/2:1:...], panic, `CPU: … Comm: kworker/2:1`
    full, headless = extract_reports(lines), extract_reports(lines[1:])
    assert [r.kind for r in full] == [r.kind for r in headless] == ["soft_lockup"]
    assert full[0].bucket() == headless[0].bucket()


def test_the_same_bug_on_two_kernel_builds_shares_a_level_two_bucket() -> None:
    from nodeheal.diagnoser.kb.signature import cluster_reports

    a, b = extract_reports(corpus("kb-136")), extract_reports(corpus("kb-141"))  # one CachyOS issue, two paths
    assert a[0].bucket() != b[0].bucket()  # different call paths: level 1 splits them
    other = extract_reports(corpus("kb-083"))  # xfrm_lookup NULL deref
    clusters = cluster_reports([a[0], b[0], other[0]])
    assert clusters[0] == clusters[1] != clusters[2]


def test_the_old_rip_trailer_names_the_crashing_function() -> None:
    sig = only(corpus("kb-171"))  # ESOS 3.14: 'IP:' printed before the BUG line, 'RIP  [<…>] func' after it
    assert (sig.kind, sig.rip_func) == ("oops_null_deref", "sock_sendmsg")


def test_a_copy_without_its_header_still_identifies_the_bug() -> None:
    from nodeheal.diagnoser.kb.signature import cluster_reports

    zfs = extract_reports(corpus("kb-105"))  # pasted from the register dump on: no 'divide error' line
    assert [(r.kind, r.rip_func, r.module) for r in zfs] == [("oops", "spa_taskq_dispatch_ent", "zfs")]
    full = corpus("kb-141")
    headless = [line for line in full if "divide error" not in line]
    a, b = extract_reports(full), extract_reports(headless)
    assert (a[0].kind, b[0].kind) == ("divide_error", "oops")
    assert cluster_reports([a[0], b[0], zfs[0]]) == [0, 0, 2]


# ---- syzbot-style crashes, constructed: the kernel's report format with made-up offsets, tasks and callers
# (these tests first ran on a syzkaller test-data set that was removed: tests/data/README.md "Provenance")
def constructed(lines: list[str]):  # type: ignore[no-untyped-def]
    return next(r for r in extract_reports(lines) if r.identified())


def odebug(caller: str, release: str, offsets: tuple[str, str], below: list[str]) -> list[str]:
    # constructed: an ODEBUG warning raised in the debug-objects helper while `caller` frees an active object
    return [
        "------------[ cut here ]------------",
        "ODEBUG: free active (active state 0) object type: timer_list hint: delayed_work_timer_fn+0x0/0x90",
        f"WARNING: CPU: 1 PID: 8012 at lib/debugobjects.c:325 debug_print_object+0x{offsets[0]}/0x250",
        "Modules linked in:",
        f"CPU: 1 PID: 8012 Comm: worker Not tainted {release} #0",
        f"RIP: 0010:debug_print_object+0x{offsets[0]}/0x250",
        "Call Trace:",
        " __debug_check_no_obj_freed lib/debugobjects.c:785 [inline]",
        f" debug_check_no_obj_freed+0x{offsets[1]}/0x464",
        " kfree+0xbd/0x230",
        f" {caller}+0x4c/0x70",
        *(f" {frame}" for frame in below),
    ]


def test_warnings_raised_by_a_shared_helper_are_blamed_on_their_callers() -> None:
    from nodeheal.diagnoser.kb.signature import is_generic_frame, similarity

    # ODEBUG warnings: every RIP is in the debug-objects helper, the bugs are the callers
    release = ["device_release+0x7e/0x210", "kobject_put+0x2a4/0x5a0", "netdev_run_todo+0x6f1/0xc00"]
    netdev = [
        constructed(odebug("netdev_freemem", "4.17.0-rc3", ("16e", "29f"), release)),
        constructed(odebug("netdev_freemem", "4.19.0+", ("171", "2a3"), [*release[:2], "rtnl_unlock+0xe/0x10"])),
    ]
    conn = constructed(odebug("rds_conn_destroy", "4.18.0", ("16e", "29f"), ["rds_conn_net_exit+0x1c1/0x2b0"]))
    table = constructed(odebug("xt_free_table_info", "4.18.0", ("16e", "29f"), ["translate_table+0x1a0/0x1c30"]))
    assert all(r.rip_func and is_generic_frame(r.rip_func) for r in (*netdev, conn, table))
    assert (conn.guilty(), table.guilty()) == ("rds_conn_destroy", "xt_free_table_info")
    assert similarity(netdev[0], netdev[1]) >= 0.5
    assert similarity(netdev[0], conn) < 0.5 and similarity(conn, table) < 0.5


def stall(rip: str, frames: list[str], pid: int) -> list[str]:
    # constructed: an RCU stall detected in the timer interrupt, the stalled code after the interrupt frames
    return [
        "rcu: INFO: rcu_sched self-detected stall on CPU",
        "rcu: \t0-....: (10500 ticks this GP) idle=5ae/1/0x4000000000000002 softirq=15071/15071 fqs=5196",
        "rcu: \t (t=10502 jiffies g=10625 q=412)",
        "NMI backtrace for cpu 0",
        f"CPU: 0 PID: {pid} Comm: worker Not tainted 4.20.0+ #0",
        "Call Trace:",
        " <IRQ>",
        " dump_stack+0x1db/0x2d0",
        " nmi_cpu_backtrace.cold+0x63/0xa4",
        " nmi_trigger_cpumask_backtrace+0x1be/0x236",
        " rcu_dump_cpu_stacks+0x183/0x1cf",
        " print_cpu_stall.cold+0x227/0x40c",
        " rcu_check_callbacks+0xf5f/0x1410",
        " update_process_times+0x32/0x80",
        " tick_sched_handle+0xa2/0x190",
        " tick_sched_timer+0x47/0x130",
        " __hrtimer_run_queues+0x3a7/0x1050",
        " hrtimer_interrupt+0x314/0x770",
        " smp_apic_timer_interrupt+0x18d/0x760",
        " apic_timer_interrupt+0xf/0x20",
        " </IRQ>",
        f"RIP: 0010:{rip}",
        "RSP: 0018:ffff8880a5cbf6c0 EFLAGS: 00000293 ORIG_RAX: ffffffffffffff13",
        *(f" {frame}" for frame in frames),
    ]


SMP_CALLERS = [
    ["smp_call_function_many+0x7b5/0x9f0", "on_each_cpu+0x2d/0x70", "text_poke_bp+0x11b/0x140"],
    ["smp_call_function_many+0x7b5/0x9f0", "on_each_cpu_mask+0x4d/0xc0", "flush_tlb_mm_range+0x2a0/0x3d0"],
    ["on_each_cpu+0x2d/0x70", "clock_was_set+0x21/0x30", "timekeeping_inject_offset+0x4b1/0x5d0"],
]
FUSE = [
    "fuse_abort_conn+0x2d1/0x9e0",
    "fuse_dev_release+0x2fd/0x4f0",
    "__fput+0x2e0/0x8e0",
    "task_work_run+0x14a/0x1c0",
]


def test_a_stall_report_is_keyed_by_the_stalled_code_not_by_the_timer_interrupt_that_reported_it() -> None:
    from nodeheal.diagnoser.kb.signature import cluster_reports

    rip = "smp_call_function_single+0x1b1/0x4c0"
    stalls = [constructed(stall(rip, callers, 9401 + i)) for i, callers in enumerate(SMP_CALLERS)]
    other = constructed(stall("_raw_spin_lock+0x2d/0x40", FUSE, 9500))
    for report in (*stalls, other):
        frames = report.significant_frames()
        assert "rcu_check_callbacks" not in frames and "update_process_times" not in frames
    assert {r.guilty() for r in stalls} == {"smp_call_function_single"}
    clusters = cluster_reports([*stalls, other])
    assert clusters[0] == clusters[1] == clusters[2] != clusters[3]


def test_syscall_frames_have_one_name_across_kernel_builds() -> None:
    from nodeheal.diagnoser.kb.signature import canonical_frame

    names = {canonical_frame(f) for f in ("SyS_ioctl", "__x64_sys_ioctl", "__do_sys_ioctl", "ksys_ioctl", "sys_ioctl")}
    assert names == {"sys_ioctl"}
    assert canonical_frame("nmi_handle.isra.0") == "nmi_handle"
    assert canonical_frame("sysfs_remove_group") == "sysfs_remove_group"


def test_root_fs_panics_carry_no_bug_identity() -> None:
    # three different users' 'VFS: Unable to mount root fs' panics: boot-path frames and a generic string
    for excerpt in ("kb-117", "kb-118", "kb-120"):
        reports = [r for r in extract_reports(corpus(excerpt)) if "Unable to mount root fs" in (r.panic_string or "")]
        assert reports and not any(r.identified() for r in reports), excerpt


def test_stalls_caught_at_different_depths_of_one_loop_share_a_level_two_bucket() -> None:
    from nodeheal.diagnoser.kb.signature import cluster_reports

    # a vCPU loop stalled, each report caught it at another function of the loop (constructed)
    loop = ["kvm_arch_vcpu_ioctl_run+0x3d5/0x1230", "kvm_vcpu_ioctl+0x4dc/0xfd0", "do_vfs_ioctl+0x1de/0x1790"]
    loop += ["ksys_ioctl+0xab/0xd0", "__x64_sys_ioctl+0x73/0xb0", "do_syscall_64+0x1a3/0x800"]
    depths = [
        ("vmx_vcpu_run+0x8c5/0x2610", ["vcpu_enter_guest+0x1d1c/0x5e60", *loop]),
        ("vcpu_enter_guest+0x1e91/0x5e60", loop),
        ("kvm_arch_vcpu_ioctl_run+0x2b1/0x1230", loop[1:]),
        ("kvm_check_async_pf_completion+0x6c/0x2c0", ["vcpu_enter_guest+0x97/0x5e60", *loop]),
    ]
    kvm = [constructed(stall(rip, frames, 7000 + i)) for i, (rip, frames) in enumerate(depths)]
    assert len({r.guilty() for r in kvm}) == 4
    other = constructed(stall("_raw_spin_lock+0x2d/0x40", FUSE, 9500))
    clusters = cluster_reports([*kvm, other])
    assert len(set(clusters[:4])) == 1 and clusters[4] != clusters[0]
