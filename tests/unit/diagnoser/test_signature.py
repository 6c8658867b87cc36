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


# ---- real syzbot crashes (tests/data/kb/syzbot_same_bug.jsonl): the bug syzbot filed each one under
def syzbot(crash: str):  # type: ignore[no-untyped-def]
    import json
    from pathlib import Path

    path = Path(__file__).resolve().parents[2] / "data" / "kb" / "syzbot_same_bug.jsonl"
    lines = next(r["lines"] for r in map(json.loads, path.read_text().splitlines()) if r["id"] == crash)
    return next(r for r in extract_reports(lines) if r.identified())


def test_warnings_raised_by_a_shared_helper_are_blamed_on_their_callers() -> None:
    from nodeheal.diagnoser.kb.signature import is_generic_frame, similarity

    # ODEBUG warnings: every RIP is in the debug-objects helper, the bugs are the callers syzbot names
    netdev = [syzbot("syz-0415"), syzbot("syz-0525")]  # 'ODEBUG bug in netdev_freemem', two kernel builds
    psock, xt = syzbot("syz-0173"), syzbot("syz-0210")
    assert all(r.rip_func and is_generic_frame(r.rip_func) for r in (*netdev, psock, xt))
    assert (psock.guilty(), xt.guilty()) == ("unreserve_psock", "xt_free_table_info")
    assert similarity(netdev[0], netdev[1]) >= 0.5
    assert similarity(netdev[0], psock) < 0.5 and similarity(psock, xt) < 0.5


def test_a_stall_report_is_keyed_by_the_stalled_code_not_by_the_timer_interrupt_that_reported_it() -> None:
    from nodeheal.diagnoser.kb.signature import cluster_reports

    stalls = [syzbot(c) for c in ("syz-0275", "syz-0292", "syz-0300")]  # 'rcu detected stall in smp_call_function'
    other = syzbot("syz-0271")  # 'rcu detected stall in fuse_dev_release'
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

    # 'rcu detected stall in kvm_vcpu_ioctl': each crash caught the vCPU loop at another function
    kvm = [syzbot(c) for c in ("syz-0268", "syz-0273", "syz-0279", "syz-0282")]
    assert len({r.guilty() for r in kvm}) == 4
    other = syzbot("syz-0271")  # 'rcu detected stall in fuse_dev_release'
    clusters = cluster_reports([*kvm, other])
    assert len(set(clusters[:4])) == 1 and clusters[4] != clusters[0]
