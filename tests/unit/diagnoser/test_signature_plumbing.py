"""Level-2 rules written from the false pairs of two same-bug sets that were removed (tests/data/README.md
"Provenance"): the mailed syzbot set (level-2 round 4) and the `#syz dup:`-marked set (round 9). Each rule is
checked here on short reports constructed for it: the kernel's report format with made-up addresses,
offsets, tasks and driver callers (our own text, not copies of those reports)."""

from __future__ import annotations

from nodeheal.diagnoser.kb.signature import CrashReport, cluster_reports, extract_reports, similarity


def first(lines: list[str]) -> CrashReport:
    return next(r for r in extract_reports(lines) if r.identified())


def kasan(bug: str, func: str, access: str, frames: list[str], *, context: str = "<IRQ>") -> list[str]:
    """Constructed: a KASAN report of `bug` in `func`, then its call trace (`frames`, innermost first)."""
    return [
        "==================================================================",
        f"BUG: KASAN: {bug} in {func}+0x1a4/0x1e0",
        f"{access} of size 8 at addr ffff88810a4c3e08 by task swapper/0/0",
        "",
        "CPU: 0 PID: 0 Comm: swapper/0 Not tainted 5.19.0-rc3 #0",
        "Hardware name: QEMU Standard PC (i440FX + PIIX, 1996), BIOS 1.16.0 04/01/2014",
        "Call Trace:",
        f" {context}",
        " dump_stack_lvl+0xcd/0x134",
        " print_report.cold+0xeb/0x467",
        " kasan_report+0xf4/0x1c6",
        *(f" {frame}" for frame in frames),
    ]


GIVEBACK = ["__usb_hcd_giveback_urb+0x2b0/0x5c0", "usb_hcd_giveback_urb+0x367/0x410", "dummy_timer+0x11f9/0x32b0"]
GIVEBACK += ["call_timer_fn+0x1a0/0x6b0", "__run_timers.part.0+0x674/0xa80", "run_timer_softirq+0xb3/0x1d0"]


def completion(func: str, bug: str = "use-after-free", access: str = "Read") -> CrashReport:
    # constructed: a driver's URB completion callback touching freed memory, reached through the USB core
    return first(kasan(bug, func, access, [f"{func}+0x1a4/0x1e0", *GIVEBACK]))


def test_the_usb_urb_completion_path_is_no_common_ground() -> None:
    reports = [completion(f) for f in ("modem_out_callback", "sensor_callback", "wlan_rx_callback")]
    assert reports[0].guilty() == "modem_out_callback" and reports[1].guilty() == "sensor_callback"
    assert similarity(reports[0], reports[1]) == 0.0
    assert len(set(cluster_reports(reports))) == 3


def test_a_same_site_pair_still_joins() -> None:
    # one callback, two KASAN bug types of one access (the freed memory was reused): the same site
    a = completion("wlan_rx_callback", "out-of-bounds")
    b = completion("wlan_rx_callback", "slab-out-of-bounds")
    assert similarity(a, b) == 1.0


def test_the_exact_key_of_a_kasan_report_names_its_accessing_function() -> None:
    # two drivers' callbacks, the same access and the same callers: the header's function tells them apart
    a, b = completion("modem_int_callback"), completion("sensor_callback")
    assert a.access == b.access == "Read 8"
    assert a.bucket() != b.bucket()


def probe_warning(func: str) -> list[str]:
    # constructed: a WARNING in a USB driver's probe, reached through the driver core
    return [
        f"WARNING: CPU: 1 PID: 2710 at drivers/input/misc/{func.removesuffix('_probe')}.c:301 {func}+0x2d1/0x3a0",
        "Modules linked in:",
        "CPU: 1 PID: 2710 Comm: kworker/1:2 Not tainted 5.10.0-rc1 #0",
        "Workqueue: usb_hub_wq hub_event",
        f"RIP: 0010:{func}+0x2d1/0x3a0",
        "Call Trace:",
        " usb_probe_interface+0x315/0x7f0",
        " really_probe+0x291/0xde0",
        " driver_probe_device+0x26b/0x3d0",
        " __device_attach_driver+0x1d0/0x290",
        " bus_for_each_drv+0x15f/0x1e0",
        " __device_attach+0x228/0x4a0",
        " bus_probe_device+0x1e4/0x290",
        " device_add+0xbb2/0x1ce0",
        " usb_set_configuration+0x113f/0x1910",
        " usb_generic_driver_probe+0xba/0x100",
    ]


def test_the_driver_probe_path_is_no_common_ground() -> None:
    assert similarity(first(probe_warning("remote_probe")), first(probe_warning("panel_probe"))) == 0.0


def open_warning(func: str) -> list[str]:
    # constructed: a WARNING in an input driver's open, reached through the input core and evdev
    return [
        "WARNING: CPU: 0 PID: 3321 at drivers/usb/core/urb.c:493 usb_submit_urb+0x7a4/0x14e0",
        "Modules linked in:",
        "CPU: 0 PID: 3321 Comm: reader Not tainted 5.4.0-rc6 #0",
        "RIP: 0010:usb_submit_urb+0x7a4/0x14e0",
        "Call Trace:",
        f" {func}+0x8b/0x120",
        " input_open_device+0x170/0x280",
        " evdev_open+0x432/0x560",
        " chrdev_open+0x245/0x6b0",
        " do_dentry_open+0x4b9/0x1170",
        " path_openat+0x1c30/0x2a40",
        " do_filp_open+0x1a1/0x280",
        " do_sys_open+0x3fe/0x550",
    ]


def test_the_input_open_path_is_no_common_ground() -> None:
    assert similarity(first(open_warning("tablet_open")), first(open_warning("touchkey_input_open"))) == 0.0


def test_a_wake_up_helper_is_not_blamed() -> None:
    # constructed: a freed wait queue touched while waking it: the disconnecting driver is blamed
    def disconnect(func: str) -> CrashReport:
        frames = ["_raw_spin_lock_irqsave+0x41/0x50", "__wake_up_common_lock+0xd0/0x130", f"{func}+0x11b/0x200"]
        frames += ["usb_unbind_interface+0x1bd/0x8a0", "device_release_driver_internal+0x404/0x4c0"]
        return first(kasan("use-after-free", "_raw_spin_lock_irqsave", "Write", frames, context="<TASK>"))

    a, b = disconnect("panel_disconnect"), disconnect("sensor_disconnect")
    assert a.guilty() == "panel_disconnect" and b.guilty() == "sensor_disconnect"
    assert similarity(a, b) == 0.0


def test_a_user_copy_helper_is_not_blamed() -> None:
    # constructed: an out-of-bounds read while a driver's read() copies to user space
    frames = ["_copy_to_user+0x6a/0xb0", "meter_read+0x1f4/0x380", "vfs_read+0x1de/0x430", "ksys_read+0x127/0x250"]
    report = first(kasan("slab-out-of-bounds", "_copy_to_user", "Read", frames, context="<TASK>"))
    assert report.guilty() == "meter_read"


def test_one_syscall_under_two_wrapper_names_is_one_function() -> None:
    # constructed: one general protection fault in a syscall body, named by two builds' wrappers
    def gpf(wrapper: str) -> CrashReport:
        return first(
            [
                "general protection fault, probably for non-canonical address 0xdffffc0000000003: 0000 [#1] SMP KASAN",
                "CPU: 1 PID: 9120 Comm: worker Not tainted 5.8.0-rc2 #0",
                f"RIP: 0010:{wrapper}+0x1c2/0x2e00",
                "Call Trace:",
                " do_syscall_64+0x60/0xe0",
                " entry_SYSCALL_64_after_hwframe+0x44/0xa9",
            ]
        )

    a, b = gpf("__do_sys_ring_register"), gpf("__se_sys_ring_register")
    assert a.guilty() == b.guilty() == "sys_ring_register"
    assert similarity(a, b) == 1.0


def test_the_older_kasan_double_free_wording_opens_a_report() -> None:
    # constructed: the header kernels printed before double and invalid frees were told apart
    lines = kasan("double-free or invalid-free", "camera_release", "Read", [], context="<TASK>")
    lines = [line for line in lines if not line.startswith("Read of size")]
    lines += [" kfree+0xd6/0x2d0", " camera_release+0x13b/0x1c0", " v4l2_release+0x2e5/0x3a0", " __fput+0x2e0/0x8e0"]
    report = first(lines)
    assert report.kind == "kasan" and report.subkind == "double-free or invalid-free"
    assert report.guilty() == "camera_release"


def lockdep_warning(caller: str) -> list[str]:
    # constructed: lockdep's WARNING while looking up a lock class under a filesystem's ioctl
    return [
        "WARNING: CPU: 0 PID: 5102 at kernel/locking/lockdep.c:894 look_up_lock_class+0x123/0x150",
        "Modules linked in:",
        "CPU: 0 PID: 5102 Comm: worker Not tainted 6.1.0-rc3 #0",
        "RIP: 0010:look_up_lock_class+0x123/0x150",
        "Call Trace:",
        " register_lock_class+0xbe/0x1120",
        " __lock_acquire+0x10a/0x5f60",
        " lock_acquire+0x1a2/0x530",
        " down_write_nested+0x96/0x200",
        f" {caller}+0x3d1/0x900",
        " __x64_sys_ioctl+0x197/0x210",
        " do_syscall_64+0x39/0xb0",
    ]


def test_lockdep_class_lookup_is_not_the_blamed_function() -> None:
    move, swap = first(lockdep_warning("ext4_move_extents")), first(lockdep_warning("ext4_swap_boot_inode"))
    assert move.guilty() not in {"look_up_lock_class", "down_write_nested"}
    assert similarity(move, swap) < 0.5
    assert similarity(move, first(lockdep_warning("ext4_move_extents"))) >= 0.5  # the same bug twice still joins


def bug_on(line: int, func: str, callers: list[str]) -> list[str]:
    # constructed: a BUG_ON of fs/ext4/inline.c in `func`
    return [
        f"kernel BUG at fs/ext4/inline.c:{line}!",
        "invalid opcode: 0000 [#1] PREEMPT SMP KASAN",
        "CPU: 1 PID: 4410 Comm: writer Not tainted 6.0.0-rc5 #0",
        f"RIP: 0010:{func}+0x5f1/0x620",
        "Call Trace:",
        " <TASK>",
        *(f" {caller}+0x1c4/0x3a0" for caller in callers),
        " generic_perform_write+0x316/0x570",
        " ext4_buffered_write_iter+0x15b/0x460",
        " vfs_write+0x9e9/0xdd0",
    ]


def test_two_bug_ons_of_one_file_in_two_functions_are_two_bugs() -> None:
    end = first(bug_on(227, "ext4_write_inline_data_end", ["ext4_da_write_end"]))
    data = first(bug_on(241, "ext4_write_inline_data", ["ext4_write_inline_data_end", "ext4_da_write_end"]))
    assert end.bug_at and data.bug_at and end.bug_at.split(":")[0] == data.bug_at.split(":")[0]
    assert similarity(end, data) == 0.0
    assert similarity(end, first(bug_on(227, "ext4_write_inline_data_end", ["ext4_da_write_end"]))) >= 0.5
