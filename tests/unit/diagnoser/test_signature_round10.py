"""Crash identity, round 10 (branch bucket7): each change on short reports constructed here.

Every report below is constructed (our own text): the kernel's report format instantiated with made-up
addresses, offsets, tasks and assertion expressions. The real reports that showed each change came from a
data set that was removed (tests/data/README.md "Provenance")."""

from __future__ import annotations

from nodeheal.diagnoser.kb.signature import CrashReport, cluster_reports, conflict, extract_reports, similarity


def first(lines: list[str]) -> CrashReport:
    """The report the bench scores: the first identified one of the input."""
    return next(r for r in extract_reports(lines) if r.identified())


def xfs_assert_x86(expression: str, rip: str = "assfail+0x2c/0x40 [xfs]") -> list[str]:
    # constructed: a failed XFS ASSERT on an x86-64 guest, raised through the reporter (assfail)
    return [
        f"[ 2210.481230] XFS: Assertion failed: {expression}, file: fs/xfs/libxfs/xfs_bmap.c, line: 5123",
        "[ 2210.490112] ------------[ cut here ]------------",
        "[ 2210.494801] WARNING: CPU: 3 PID: 40112 at fs/xfs/xfs_message.c:104 assfail+0x2c/0x40 [xfs]",
        "[ 2210.503550] Modules linked in: xfs libcrc32c virtio_blk",
        "[ 2210.509021] CPU: 3 PID: 40112 Comm: fsstress Not tainted 6.6.0-rc4 #1",
        f"[ 2210.515713] RIP: 0010:{rip}",
        "[ 2210.520402] Call Trace:",
        "[ 2210.523011]  <TASK>",
        "[ 2210.525220]  xfs_bmap_del_extent_real+0x6f1/0x9a0 [xfs]",
        "[ 2210.530871]  __xfs_bunmapi+0x4b2/0xe10 [xfs]",
        "[ 2210.535420]  xfs_itruncate_extents_flags+0x11c/0x3b0 [xfs]",
        "[ 2210.541320]  xfs_inactive_truncate+0xa5/0x100 [xfs]",
        "[ 2210.546712]  xfs_inactive+0x1e1/0x2a0 [xfs]",
        "[ 2210.551102]  </TASK>",
        "[ 2210.553301] ---[ end trace 0000000000000000 ]---",
    ]


# constructed: the same failed assertion on a ppc64le LPAR (NIP / LR lines, another build)
XFS_ASSERT_PPC = [
    "XFS: Assertion failed: ip->i_df.if_nextents > 0, file: fs/xfs/libxfs/xfs_bmap.c, line: 5131",
    "------------[ cut here ]------------",
    "WARNING: CPU: 11 PID: 2231 at fs/xfs/xfs_message.c:104 assfail+0x4c/0x70 [xfs]",
    "Modules linked in: xfs",
    "CPU: 11 PID: 2231 Comm: xfs_io Not tainted 6.6.0-rc4-ppc64le #3",
    "NIP:  c008000004a1e2dc LR: c008000004a1e2d8 CTR: c000000000b3f4a0",
    "NIP [c008000004a1e2dc] assfail+0x4c/0x70 [xfs]",
    "LR [c008000004a1e2d8] assfail+0x48/0x70 [xfs]",
    "Call Trace:",
    "[c00000001e2ab920] [c0080000049ab1f4] xfs_bmap_del_extent_real+0x6f4/0xa10 [xfs]",
    "[c00000001e2aba10] [c0080000049ae218] __xfs_bunmapi+0x4c8/0xe80 [xfs]",
    "[c00000001e2abb20] [c0080000049f20ac] xfs_itruncate_extents_flags+0x14c/0x3d0 [xfs]",
    "[c00000001e2abc00] [c0080000049f5d40] xfs_inactive_truncate+0xb0/0x110 [xfs]",
    "[c00000001e2abc80] [c0080000049f6a10] xfs_inactive+0x1f0/0x2b0 [xfs]",
]


def test_two_failed_xfs_assertions_are_two_bugs_though_both_warn_in_assfail() -> None:
    # two different expressions failing under one caller, both raised through assfail: the caller is blamed,
    # the reporter is not, and the expressions keep them apart
    nextents = first(xfs_assert_x86("ip->i_df.if_nextents > 0"))
    delta = first(xfs_assert_x86("del->br_blockcount <= got.br_blockcount"))
    assert nextents.assertion is not None and nextents.assertion.startswith("ip->i_df.if_nextents")
    assert delta.assertion is not None and delta.assertion.startswith("del->br_blockcount")
    assert nextents.guilty() == "xfs_bmap_del_extent_real" and "assfail" not in nextents.functions()
    assert conflict(nextents, delta)
    assert similarity(nextents, delta) == 0.0
    assert nextents.bucket() != delta.bucket()


def test_one_failed_assertion_on_x86_and_on_ppc64le_is_one_bucket() -> None:
    # a guard: the same assertion on two architectures and builds stays one exact key and one cluster
    reports = [first(xfs_assert_x86("ip->i_df.if_nextents > 0")), first(XFS_ASSERT_PPC)]
    assert len({r.bucket() for r in reports}) == 1
    assert len(set(cluster_reports(reports))) == 1


def test_a_wrapped_copy_of_an_assertion_is_a_prefix_not_another_check() -> None:
    whole = first(xfs_assert_x86("ip->i_df.if_nextents > 0"))
    cut = CrashReport(kind="warning", start=0, assertion="ip->i_df.if_nextents")  # a mailer wrapped the line
    assert not conflict(whole, cut)


def dma_warning(at: str, offset: str, caller: str) -> list[str]:
    # constructed: a WARN_ON raised while mapping an URB, reached from a USB driver
    return [
        f"WARNING: CPU: 1 PID: 812 at {at} usb_hcd_map_urb_for_dma+{offset}/0x590",
        "Modules linked in: usbhid",
        "CPU: 1 PID: 812 Comm: kworker/1:3 Not tainted 6.1.0 #1",
        f"RIP: 0010:usb_hcd_map_urb_for_dma+{offset}/0x590",
        "Call Trace:",
        " <TASK>",
        " usb_hcd_submit_urb+0x9a/0xb90",
        " usb_submit_urb+0x25a/0x5d0",
        f" {caller}+0x71/0x120",
        " </TASK>",
    ]


def test_two_warn_ons_in_two_source_files_are_two_bugs() -> None:
    # one blamed function, two checks: a WARN inlined from a header and one in the function's own file
    header = first(dma_warning("include/linux/dma-mapping.h:331", "0x3b1", "touchpad_open"))
    own = first(dma_warning("drivers/usb/core/hcd.c:1462", "0x1d6", "cardreader_read"))
    assert header.guilty() == own.guilty() == "usb_hcd_map_urb_for_dma"
    assert header.subkind == "include/linux/dma-mapping.h" and own.subkind == "drivers/usb/core/hcd.c"
    assert conflict(header, own)
    assert similarity(header, own) == 0.0


RELOG = [
    # constructed: a WARNING in an XFS log item's relog, as the reporter pasted it
    "[ 5120.318820] WARNING: CPU: 2 PID: 7781 at fs/xfs/xfs_extfree_item.c:702 xfs_efi_item_relog+0x1fc/0x270 [xfs]",
    "[ 5120.327410] Modules linked in: xfs",
    "[ 5120.331002] CPU: 2 PID: 7781 Comm: kworker/2:1 Not tainted 6.2.0 #1",
    "[ 5120.337201] RIP: 0010:xfs_efi_item_relog+0x1fc/0x270 [xfs]",
    "[ 5120.342540] Call Trace:",
    "[ 5120.345021]  <TASK>",
    "[ 5120.347220]  xfs_defer_relog+0x88/0x1b0 [xfs]",
    "[ 5120.351873]  xfs_defer_finish_noroll+0x2f1/0x6a0 [xfs]",
    "[ 5120.357120]  xfs_trans_commit+0x5a/0x80 [xfs]",
]


def test_a_mail_quoted_report_is_read_like_the_report() -> None:
    # the same report quoted twice in a reply, its header wrapped by the mailer before the function
    head, _, tail = RELOG[0].rpartition(" xfs_efi_item_relog")
    quoted = [f"> > {head}", f"> > xfs_efi_item_relog{tail}", *(f"> > {line}" for line in RELOG[1:])]
    report = first(quoted)
    assert report.rip_func == "xfs_efi_item_relog"
    assert report.subkind == "fs/xfs/xfs_extfree_item.c"
    assert similarity(report, first(RELOG)) == 1.0


def test_a_quoted_rip_line_wrapped_after_rip_is_rejoined() -> None:
    # constructed: a NULL dereference quoted in a reply, the mailer cut the RIP line after 'RIP:'
    quoted = [
        "> Mar 14 09:12:44 node-3 kernel: BUG: kernel NULL pointer dereference, address: 0000000000000010",
        "> Mar 14 09:12:44 node-3 kernel: #PF: supervisor read access in kernel mode",
        "> Mar 14 09:12:44 node-3 kernel: CPU: 6 PID: 3012 Comm: cp Not tainted 6.3.7 #1",
        "> Mar 14 09:12:44 node-3 kernel: RIP:",
        "> 0010:xfs_da3_node_add+0x1a2/0x2c0 [xfs]",
    ]
    assert first(quoted).guilty() == "xfs_da3_node_add"


def test_padding_symbols_and_the_folio_wait_are_not_the_hung_code() -> None:
    # constructed: a task hung while migrating pages; the folio wait and a 6.x padding symbol printed as a frame
    hung = [
        "INFO: task kcompactd0:77 blocked for more than 120 seconds.",
        "      Not tainted 6.6.8 #1",
        "task:kcompactd0      state:D stack:0     pid:77    ppid:2      flags:0x00004000",
        "Call Trace:",
        " <TASK>",
        " __schedule+0x3c8/0xd70",
        " schedule+0x5e/0xd0",
        " io_schedule+0x46/0x70",
        " folio_wait_bit_common+0x13d/0x350",
        " __pfx_wake_page_function+0x10/0x10",
        " migrate_pages_batch+0x6e1/0xbb0",
        " migrate_pages+0x1f8/0x7a0",
        " compact_zone+0x8a3/0xdf0",
        " kcompactd_do_work+0x1b4/0x2f0",
    ]
    functions = first(hung).functions()
    assert functions[0] == "migrate_pages_batch"
    assert not any(f.startswith("__pfx_") for f in functions)


def test_the_page_fault_oops_path_is_not_blamed() -> None:
    # constructed: a 6.x oops copy without its RIP line whose trace prints the oops path and the ftrace
    # trampoline as reliable frames above the faulting function
    oops = [
        "BUG: kernel NULL pointer dereference, address: 0000000000000028",
        "#PF: supervisor read access in kernel mode",
        "#PF: error_code(0x0000) - not-present page",
        "Oops: 0000 [#1] PREEMPT SMP NOPTI",
        "CPU: 0 PID: 1622 Comm: kworker/u9:2 Not tainted 6.8.9 #1",
        "Call Trace:",
        " <TASK>",
        " __die_body+0x1a/0x60",
        " page_fault_oops+0x156/0x440",
        " do_user_addr_fault+0x65/0x830",
        " ftrace_regs_caller_end+0x61/0x61",
        " hci_send_sco+0x2b/0x140 [bluetooth]",
        " sco_sock_sendmsg+0x12e/0x1e0 [bluetooth]",
        " sock_sendmsg+0x8f/0xa0",
    ]
    functions = first(oops).functions()
    assert functions[0] == "hci_send_sco"
    assert not {"__die_body", "page_fault_oops", "ftrace_regs_caller_end", "do_user_addr_fault"} & set(functions)


# constructed: crash(8)'s `sys` summary of a dump that was asked for with sysrq
SYS = [
    "      KERNEL: /usr/lib/debug/lib/modules/5.14.0-70.el9.x86_64/vmlinux",
    "    DUMPFILE: /var/crash/127.0.0.1-2024-03-02-10:11:40/vmcore  [PARTIAL DUMP]",
    "        CPUS: 4",
    "        DATE: Sat Mar  2 10:11:31 UTC 2024",
    "      UPTIME: 00:05:12",
    "LOAD AVERAGE: 0.21, 0.10, 0.04",
    "       TASKS: 221",
    "    NODENAME: node-7",
    "     RELEASE: 5.14.0-70.el9.x86_64",
    "     VERSION: #1 SMP PREEMPT Thu Feb 24 19:11:22 UTC 2022",
    "     MACHINE: x86_64  (2394 Mhz)",
    "      MEMORY: 8 GB",
    '       PANIC: "Kernel panic - not syncing: sysrq triggered crash"',
]


def test_a_sysrq_triggered_crash_names_no_bug_and_a_quoted_summary_reads_like_the_summary() -> None:
    # the panic string names only how the crash was asked for; quoted twice in a mail it reads the same
    quoted, plain = extract_reports([f">> {line}" for line in SYS])[0], extract_reports(SYS)[0]
    assert quoted.kind == plain.kind == "sysrq"
    assert quoted.panic_string == plain.panic_string == "sysrq triggered crash"
    assert quoted.bucket() == plain.bucket()
    assert not quoted.identified() and not plain.identified()
