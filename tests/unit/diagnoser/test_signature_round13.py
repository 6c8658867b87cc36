"""Round 13 of the crash buckets (branch bucket10, docs/BENCHMARKS.md): identities written from what the kernel and
its modules print (the emitters' format strings, cited in docs/diagnoser.md), tested on lines constructed from those
formats (our own text, made-up values) and on rows of the tracker same-bug set's tuning half
(tests/data/kb/tracker_same_bug.jsonl, `half_of`)."""

from __future__ import annotations

import json
from pathlib import Path

from nodeheal.diagnoser.kb.signature import (
    SIMILARITY_THRESHOLD,
    CrashReport,
    cluster_reports,
    extract_reports,
    similarity,
)
from nodeheal.sim.bench.kb import half_of

DATA = Path(__file__).resolve().parents[2] / "data" / "kb"
TRACKER = {
    row["id"]: row
    for row in (
        json.loads(line) for line in (DATA / "tracker_same_bug.jsonl").read_text(encoding="utf-8").splitlines() if line
    )
}


def tuning_row(row_id: str) -> list[str]:
    row = TRACKER[row_id]
    assert half_of(row["group"]) == "tune", f"{row_id} is in the held-out half: no test may read it"
    return list(row["lines"])


def first_report(lines: list[str]) -> CrashReport:
    return next(r for r in extract_reports(lines) if r.identified())


# --- 1. the transmit-queue watchdog: one generic reporter, the driver is the bug ---------------------------------


def tx_timeout(driver: str, *, before: bool, queue: int = 0, offset: str = "0x2dc/0x2e4") -> list[str]:
    """Constructed from net/sched/sch_generic.c's `WARN_ONCE(1, "NETDEV WATCHDOG: %s (%s): transmit queue %u timed
    out\\n", …)` and kernel/panic.c's `__warn()` banner: x86 (`__WARN_FLAGS`) prints the message before the
    `WARNING:` line, the generic `warn_slowpath_fmt` after it."""
    message = f"NETDEV WATCHDOG: eth0 ({driver}): transmit queue {queue} timed out"
    banner = f"WARNING: CPU: 1 PID: 0 at net/sched/sch_generic.c:477 dev_watchdog+{offset}"
    return [
        "------------[ cut here ]------------",
        *([message, banner] if before else [banner, message]),
        "Modules linked in: nf_tables",
        "CPU: 1 PID: 0 Comm: swapper/1 Not tainted 5.15.0-test #1",
        "RIP: 0010:dev_watchdog+0x2dc/0x2e4",
        "Call Trace:",
        " <IRQ>",
        " call_timer_fn+0x29/0x130",
        " __run_timers+0x1e8/0x270",
        " run_timer_softirq+0x2a/0x50",
        " __do_softirq+0xd9/0x2e8",
        " </IRQ>",
    ]


def test_two_drivers_timing_out_are_two_buckets_whatever_the_order_of_the_lines() -> None:
    a_x86, a_arm = first_report(tx_timeout("e1000e", before=True)), first_report(tx_timeout("e1000e", before=False))
    b_x86 = first_report(tx_timeout("igb", before=True))
    assert (a_x86.culprit, a_arm.culprit, b_x86.culprit) == ("netdev:e1000e", "netdev:e1000e", "netdev:igb")
    assert a_x86.bucket() == a_arm.bucket() != b_x86.bucket()
    assert similarity(a_x86, b_x86) == 0.0  # same function, same file, same frames: still two bugs
    # another queue and another build of the same driver: one bucket
    again = first_report(tx_timeout("e1000e", before=True, queue=3, offset="0x2f0/0x300"))
    assert again.bucket() == a_x86.bucket()
    # the later wording with the time (`… timed out %u ms`)
    with_ms = [line + " 5032 ms" if "NETDEV" in line else line for line in tx_timeout("e1000e", before=True)]
    assert first_report(with_ms).bucket() == a_x86.bucket()


def test_a_copy_without_the_watchdog_line_cannot_chain_two_drivers() -> None:
    """A copy that lost the message line has no driver: it may join either driver's bucket at level 2, never
    both (the cannot-link keeps two drivers apart)."""
    bare = [line for line in tx_timeout("e1000e", before=True) if "NETDEV" not in line]
    reports = [
        first_report(tx_timeout("e1000e", before=True)),
        first_report(bare),
        first_report(tx_timeout("igb", before=True)),
    ]
    assert reports[1].culprit is None
    clusters = cluster_reports(reports)
    assert clusters[0] != clusters[2]


def test_the_openbmc_watchdog_warning_names_its_driver() -> None:
    # trk-033 (openbmc/openbmc#2228, tuning half): ftgmac100 on an ASPEED BMC, arm, the message after the banner
    report = first_report(tuning_row("trk-033"))
    assert (report.kind, report.rip_func, report.culprit) == ("warning", "dev_watchdog", "netdev:ftgmac100")
    other = first_report(tx_timeout("bcmgenet", before=False))
    assert similarity(report, other) < SIMILARITY_THRESHOLD


def test_a_build_prefix_is_stripped_from_the_warning_file_after_the_driver_is_read() -> None:
    """Out-of-tree builds print `__FILE__` whole (trk-033: Yocto's `…/kernel-source/`): the file compares as the
    source tree names it, and the watchdog's two drivers still stay apart by their driver."""
    openbmc = first_report(tuning_row("trk-033"))
    assert openbmc.subkind == "net/sched/sch_generic.c"
    in_tree = first_report(tx_timeout("ftgmac100", before=False))
    assert in_tree.subkind == openbmc.subkind
    assert similarity(openbmc, first_report(tx_timeout("bcmgenet", before=False))) == 0.0


def test_build_prefixes_of_other_trees_are_stripped_and_a_relative_path_is_kept() -> None:
    def warning_file(path: str) -> str | None:
        line = f"WARNING: CPU: 2 PID: 77 at {path}:1043 ext4_evict_inode+0x5e/0x640"
        return first_report([line, "CPU: 2 PID: 77 Comm: kworker/2:1 Not tainted 5.4.0-test #1"]).subkind

    assert warning_file("/build/linux-hwe-5.4-Ab12/fs/ext4/inode.c") == "fs/ext4/inode.c"
    assert warning_file("/home/builder/kernel/tree/fs/ext4/inode.c") == "fs/ext4/inode.c"
    assert warning_file("fs/ext4/inode.c") == "fs/ext4/inode.c"
    # an absolute path with no top-level source directory this code trusts stays whole (not guessed)
    assert warning_file("/srv/build/kernel/sched/core.c") == "/srv/build/kernel/sched/core.c"


# --- 2. the WARNING banner in every wording of kernel/panic.c's __warn() --------------------------------------------


def warning(banner: str, *, callback: str = "dev_watchdog") -> list[str]:
    """Constructed: a WARNING raised in a timer callback, x86 (the trace starts at the callback's caller)."""
    return [
        "------------[ cut here ]------------",
        banner,
        "CPU: 0 PID: 0 Comm: swapper/0 Not tainted 6.6.0-test #1",
        f"RIP: 0010:{callback}+0x330/0x33c",
        "Call Trace:",
        " <IRQ>",
        " call_timer_fn+0x29/0x130",
        " __run_timers+0x1e8/0x270",
        " run_timer_softirq+0x2a/0x50",
        " </IRQ>",
    ]


def test_a_warning_banner_without_file_and_line_names_its_function() -> None:
    # `WARNING: CPU: %d PID: %d at %pS` (__warn() when the WARN site carries no file)
    bare = first_report(warning("WARNING: CPU: 0 PID: 0 at dev_watchdog+0x330/0x33c"))
    assert (bare.kind, bare.rip_func, bare.subkind) == ("warning", "dev_watchdog", None)
    assert bare.identified()
    # two WARN sites in two timer callbacks share every frame: without a file, the function tells them apart
    other = first_report(warning("WARNING: CPU: 0 PID: 0 at clocksource_watchdog+0x1a/0x40", callback="x"))
    assert other.rip_func == "clocksource_watchdog" and other.bucket() != bare.bucket()
    # a build that prints the file: another exact key (the file is in it), one level-2 bucket
    with_file = first_report(warning("WARNING: CPU: 1 PID: 0 at net/sched/sch_generic.c:525 dev_watchdog+0x20a/0x210"))
    assert similarity(bare, with_file) >= SIMILARITY_THRESHOLD


def test_the_reworded_banner_keys_like_the_old_one() -> None:
    # `WARNING: %s:%d at %pS, CPU#%d: %s/%d` and, without the file, `WARNING: at %pS, CPU#%d: %s/%d`
    old = first_report(warning("WARNING: CPU: 1 PID: 0 at net/sched/sch_generic.c:525 dev_watchdog+0x20a/0x210"))
    new = first_report(warning("WARNING: net/sched/sch_generic.c:525 at dev_watchdog+0x20a/0x210, CPU#1: swapper/1/0"))
    assert (new.kind, new.rip_func, new.subkind) == ("warning", "dev_watchdog", "net/sched/sch_generic.c")
    assert new.bucket() == old.bucket()
    bare = first_report(warning("WARNING: at dev_watchdog+0x20a/0x210 [sch_generic], CPU#1: swapper/1/0"))
    assert bare.bucket() == first_report(warning("WARNING: CPU: 1 PID: 0 at dev_watchdog+0x330/0x33c")).bucket()


def test_other_warning_lines_open_no_report() -> None:
    # lockdep's and the other checkers' `WARNING:` titles are no __warn() banner; neither is a sentence
    for line in (
        "WARNING: suspicious RCU usage",
        "WARNING: possible circular locking dependency detected",
        "WARNING: at least one of the disks is degraded",
        "WARNING: CPU: 0 is offline",
    ):
        assert extract_reports([line, "CPU: 0 PID: 1 Comm: init Not tainted 6.6.0-test #1"]) == [], line


# --- 3. the RIP line with any kernel code segment, and as decode_stacktrace.sh prints it ----------------------------


def corpus_row(row_id: str) -> dict[str, object]:
    rows = (json.loads(line) for line in (DATA / "corpus.jsonl").read_text(encoding="utf-8").splitlines() if line)
    return next(row for row in rows if row["id"] == row_id)


def test_a_xen_guest_rip_line_names_the_crashing_function() -> None:
    # kb-067 (moby/moby#30554, a `train` excerpt): a Xen PV guest's GPF, `RIP: e030:[<…>]  [<…>] put_mountpoint+…`
    row = corpus_row("kb-067")
    assert row["split"] == "train"
    lines = row["lines"]
    assert isinstance(lines, list)
    report = first_report([str(line) for line in lines])
    assert (report.kind, report.rip_func) == ("gpf", "put_mountpoint")


def test_a_user_mode_rip_line_of_any_segment_names_no_kernel_function() -> None:
    # user_mode(): the code segment's privilege bits. 0033 / 0023 native, e033 / e023 a Xen PV guest's user space
    for cs in ("0033", "0023", "e033", "e023"):
        line = f"RIP: {cs}:[<00007f3a9c2d1000>]  [<00007f3a9c2d1000>] g_main_loop_run+0x12/0x40"
        assert extract_reports([line]) == [], cs
        header = ["general protection fault: 0000 [#1] SMP", "CPU: 0 PID: 9 Comm: x Not tainted 4.4.0-test #1", line]
        assert extract_reports(header)[0].rip_func is None, cs
    for cs in ("0010", "e030"):
        line = f"RIP: {cs}:[<ffffffff8121c6ab>]  [<ffffffff8121c6ab>] put_mountpoint+0x4b/0x80"
        assert extract_reports([line])[0].rip_func == "put_mountpoint", cs


def test_a_decoded_copy_keys_like_the_raw_one() -> None:
    # trk-015 / trk-016 (multipath-tcp/mptcp#461, tuning half): one NULL dereference posted raw and passed through
    # decode_stacktrace.sh, `RIP: 0010:tcp_v4_send_reset (/…/net/ipv4/tcp_ipv4.c:690)`
    raw, decoded = first_report(tuning_row("trk-015")), first_report(tuning_row("trk-016"))
    assert decoded.rip_func == raw.rip_func == "tcp_v4_send_reset"
    assert decoded.bucket() == raw.bucket()


def test_decoded_call_trace_frames_are_read_and_unreliable_ones_dropped() -> None:
    """Constructed: decode_stacktrace.sh prints `func (file:line)` for `func+off/size`, addr2line's inlined chain
    and discriminators inside the parentheses, `? ` kept."""
    decoded = [
        "BUG: kernel NULL pointer dereference, address: 0000000000000078",
        "RIP: 0010:tcp_v4_send_reset (net/ipv4/tcp_ipv4.c:690)",
        "Call Trace:",
        " ? tcp_v4_rcv (net/ipv4/tcp_ipv4.c:2005)",
        " tcp_v4_do_rcv (net/ipv4/tcp_ipv4.c:1620 (discriminator 3))",
        " tcp_v4_rcv (include/net/tcp.h:1280 net/ipv4/tcp_ipv4.c:2005)",
        " ip_protocol_deliver_rcu (net/ipv4/ip_input.c:204)",
    ]
    raw = [
        "BUG: kernel NULL pointer dereference, address: 0000000000000078",
        "RIP: 0010:tcp_v4_send_reset+0x1d7/0xa90",
        "Call Trace:",
        " ? tcp_v4_rcv+0x9a1/0xb20",
        " tcp_v4_do_rcv+0x1a0/0x1f0",
        " tcp_v4_rcv+0x9a1/0xb20",
        " ip_protocol_deliver_rcu+0x30/0x1b0",
    ]
    assert first_report(decoded).functions() == first_report(raw).functions()
    assert first_report(decoded).bucket() == first_report(raw).bucket()


# --- 4. ZFS / SPL assertion panics -----------------------------------------------------------------------------------


def spl_panic(message: str, line: int, *, stack: list[str], halt: bool = False) -> list[str]:
    """Constructed from module/os/linux/spl/spl-err.c `spl_panic()`: the VERIFY message, `PANIC at %s:%d:%s()`,
    `Showing stack for process %d` and dump_stack() (with spl_panic_halt=1, `panic("%s", msg)` as well)."""
    return [
        f"[ 9052.112230] {message}",
        f"[ 9052.112241] PANIC at arc.c:{line}:arc_release()",
        *(["[ 9052.112250] Kernel panic - not syncing: " + message] if halt else []),
        "[ 9052.112252] Showing stack for process 2291",
        "[ 9052.112259] CPU: 3 PID: 2291 Comm: z_wr_iss Tainted: P           OE     5.15.0-test #1",
        "[ 9052.112266] Call Trace:",
        "[ 9052.112270]  <TASK>",
        "[ 9052.112274]  dump_stack_lvl+0x4a/0x63",
        "[ 9052.112291]  spl_panic+0xd1/0xe9 [spl]",
        *(f"[ 9052.1123{i:02d}]  {frame} [zfs]" for i, frame in enumerate(stack)),
    ]


STACK_A = [
    "arc_release+0x2e6/0x640",
    "dbuf_release_bp+0x28/0x40",
    "dbuf_write+0xa1/0x5d0",
    "dbuf_sync_leaf+0x140/0x6a0",
]
STACK_B = ["? zio_create+0x3d0/0x500", "arc_release+0x31a/0x6a0", "dmu_buf_will_dirty_impl+0x60/0x100"]


def test_one_zfs_assertion_on_two_releases_and_in_a_two_line_copy_is_one_bucket() -> None:
    full = first_report(spl_panic("VERIFY(HDR_EMPTY(hdr)) failed", 6787, stack=STACK_A))
    assert (full.kind, full.subkind, full.rip_func, full.assertion) == (
        "spl_panic",
        "arc.c",
        "arc_release",
        "HDR_EMPTY(hdr)",
    )
    other_release = first_report(spl_panic("VERIFY(HDR_EMPTY(hdr)) failed", 6439, stack=STACK_B))
    two_lines = first_report(spl_panic("VERIFY(HDR_EMPTY(hdr)) failed", 6439, stack=[])[:2])
    halted = first_report(spl_panic("VERIFY(HDR_EMPTY(hdr)) failed", 6787, stack=STACK_A, halt=True))
    assert full.bucket() == other_release.bucket() == two_lines.bucket() == halted.bucket()
    assert "spl_panic" not in full.functions()  # the SPL's reporter is machinery, like XFS's assfail


def test_two_assertions_in_one_zfs_function_are_two_buckets() -> None:
    refcount = "VERIFY3(remove_reference(hdr, hdr) > 0) failed (0 > 0)"
    a = first_report(spl_panic(refcount, 6610, stack=STACK_A))
    b = first_report(spl_panic("VERIFY(HDR_EMPTY(hdr)) failed", 6610, stack=STACK_A))
    assert a.assertion == "remove_reference(hdr, hdr) > N"  # the values printed after `failed` are data
    assert a.bucket() != b.bucket() and similarity(a, b) == 0.0
    # the same VERIFY3 with other values is the same check
    assert first_report(
        spl_panic("VERIFY3(remove_reference(hdr, hdr) > 0) failed (7 > 0)", 6610, stack=[])
    ).bucket() == (first_report(spl_panic(refcount, 6610, stack=[])).bucket())


def test_zfs_assertions_of_the_tuning_half_are_identified_at_their_site() -> None:
    # the look-alikes of the tracker set's tuning half (openzfs/zfs#12257, #6881, #5920, #17812, #8918)
    sites = {
        row_id: (r.subkind, r.rip_func)
        for row_id in ("trk-037", "trk-038", "trk-039", "trk-041", "trk-042")
        for r in [first_report(tuning_row(row_id))]
    }
    assert sites == {
        "trk-037": ("arc.c", "arc_buf_untransform_in_place"),
        "trk-038": ("arc.c", "arc_write_done"),
        "trk-039": ("arc.c", "arc_write_done"),
        "trk-041": ("range_tree.c", "zfs_range_tree_remove_impl"),
        "trk-042": ("space_map.c", "space_map_load"),
    }
    reports = [first_report(tuning_row(row_id)) for row_id in sites]
    assert len(set(cluster_reports(reports))) == 5  # five bugs, two of them in arc_write_done (two assertions)


def test_user_space_panic_lines_open_no_report() -> None:
    # `PANIC at %s:%d:%s(): <message>`: user-space helpers' format (and OSv's SPL port, `SPL PANIC at …(): `)
    for line in (
        "PANIC at waves.c:88:next_edge(): signal index 7 is invalid",
        "SPL PANIC at arc.c:6787:arc_release(): VERIFY(HDR_EMPTY(hdr)) failed",
        "VERIFY(HDR_EMPTY(hdr)) failed",
    ):
        assert extract_reports([line]) == [], line


def test_two_header_only_timeouts_pasted_close_together_stay_two_reports() -> None:
    """A repeated WARNING banner within a few lines continues one report (a symbolized WARNING prints one banner per
    inlined frame, before any message); a watchdog message in between means a second timeout."""
    pasted = [tx_timeout("e1000e", before=False)[i] for i in (1, 2)] + [
        tx_timeout("igb", before=False)[i] for i in (1, 2)
    ]
    x86 = [tx_timeout("e1000e", before=True)[i] for i in (1, 2)] + [tx_timeout("igb", before=True)[i] for i in (1, 2)]
    for lines in (pasted, x86):
        reports = extract_reports(lines)
        assert [r.culprit for r in reports] == ["netdev:e1000e", "netdev:igb"], lines


def test_zfs_user_space_assertions_open_no_report() -> None:
    """Real look-alikes: the user-space SPL (libspl, zdb) prints a failed assertion as `<expr> (<values>)` then
    `ASSERT at <file>:<line>:<func>()` and aborts — a tool's crash, not the kernel's. Lines as the search tool's
    issues corpus shows them (query "zdb ASSERT at failed VERIFY3 user space abort core dumped")."""
    # https://github.com/openzfs/zfs/pull/8948 (description)
    zdb_bookmarks = [
        'snprintf(buf, sizeof (buf), "%s#%s", osname, attr.za_name) == 0 (0xe == 0)',
        "ASSERT at zdb.c:1943:dump_bookmarks()Aborted (core dumped)",
    ]
    # https://github.com/openzfs/zfs/issues/15423 (description, the second run)
    zdb_deadlist = [
        "dmu_bonus_hold(os, object, dl, &dl->dl_dbuf) == 0 (0x34 == 0)",
        "ASSERT at ../../module/zfs/dsl_deadlist.c:308:dsl_deadlist_open()Aborted (core dumped)",
    ]
    assert extract_reports(zdb_bookmarks) == [] and extract_reports(zdb_deadlist) == []
