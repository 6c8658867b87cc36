"""Level-2 buckets on tests/data/kb/syzbot_marked_dup_same_bug.jsonl (real syzbot reports that a person marked
as duplicates with `#syz dup:`; spent since its untouched round-9 figure was recorded): the layers many USB
bugs are reached through are no common ground, and helpers that only wake, copy or wrap are not blamed."""

from __future__ import annotations

import json
from pathlib import Path

from nodeheal.diagnoser.kb.signature import CrashReport, cluster_reports, extract_reports, similarity

DATA = Path(__file__).resolve().parents[2] / "data" / "kb"
ROWS = {
    row["id"]: row
    for row in (
        json.loads(line)
        for line in (DATA / "syzbot_marked_dup_same_bug.jsonl").read_text(encoding="utf-8").splitlines()
        if line
    )
}


def first_report(excerpt: str) -> CrashReport:
    """The report the bench scores: the first identified one of the mail."""
    return next(r for r in extract_reports(ROWS[excerpt]["lines"]) if r.identified())


def test_the_usb_urb_completion_path_is_no_common_ground() -> None:
    # four drivers' use-after-free reports, each reached through __usb_hcd_giveback_urb / usb_hcd_giveback_urb /
    # dummy_timer: wdm_out_callback (cdc-wdm), iowarrior_callback, hfa384x_usbin_callback, ath9k_htc_txcompletion_cb
    ids = ("mdup-030", "mdup-037", "mdup-086", "mdup-089")
    reports = [first_report(i) for i in ids]
    assert reports[0].guilty() == "wdm_out_callback" and reports[1].guilty() == "iowarrior_callback"
    assert similarity(reports[0], reports[1]) == 0.0
    assert len(set(cluster_reports(reports))) == 4


def test_the_driver_probe_path_is_no_common_ground() -> None:
    # 'WARNING in imon_probe' and 'WARNING: ODEBUG bug in appledisplay_probe', both under usb_probe_interface /
    # really_probe / driver_probe_device; and the ODEBUG warning of usbhid_probe (blamed on __free_pages_ok's caller)
    imon, apple, usbhid = first_report("mdup-035"), first_report("mdup-065"), first_report("mdup-025")
    assert similarity(imon, apple) == 0.0
    assert similarity(usbhid, imon) == 0.0


def test_the_input_open_path_is_no_common_ground() -> None:
    # 'WARNING in usbtouch_open' and 'WARNING in gtco_input_open/usb_submit_urb': input_open_device / evdev_open /
    # chrdev_open are shared by every input driver
    assert similarity(first_report("mdup-029"), first_report("mdup-099")) == 0.0


def test_a_wake_up_helper_is_not_blamed() -> None:
    # 'KASAN: use-after-free Write in hiddev_disconnect' / '… in iowarrior_disconnect': the freed wait queue is
    # touched in __wake_up_common_lock, the bug is the caller's (syzbot titles the caller)
    hiddev, iowarrior = first_report("mdup-020"), first_report("mdup-040")
    assert hiddev.guilty() == "hiddev_disconnect"
    assert iowarrior.guilty() == "iowarrior_disconnect"
    assert similarity(hiddev, iowarrior) == 0.0


def test_a_user_copy_helper_is_not_blamed() -> None:
    # 'KASAN: slab-out-of-bounds Read in ld_usb_read': the out-of-bounds read happens in _copy_to_user
    assert first_report("mdup-043").guilty() == "ld_usb_read"


def test_one_syscall_under_two_wrapper_names_is_one_function() -> None:
    # 'general protection fault in __do_sys_io_uring_register' / '… in __se_sys_io_uring_register' (marked
    # duplicates): the RIP is in the syscall body, named by the build's wrapper
    a, b = first_report("mdup-057"), first_report("mdup-058")
    assert a.guilty() == b.guilty() == "sys_io_uring_register"
    assert similarity(a, b) == 1.0


def test_a_same_site_pair_still_joins() -> None:
    # 'KASAN: out-of-bounds Read in ath9k_hif_usb_rx_cb' ~ 'KASAN: slab-out-of-bounds Read in ath9k_hif_usb_rx_cb'
    # (marked duplicates): the same blamed function after the completion path stops counting
    assert similarity(first_report("mdup-100"), first_report("mdup-101")) == 1.0


def test_the_exact_key_of_a_kasan_report_names_its_accessing_function() -> None:
    # 'KASAN: use-after-free Read in wdm_int_callback' / '… in iowarrior_callback': two drivers' completion
    # callbacks, the same access (Read 8) and the same callers; the header's function tells them apart
    wdm, iowarrior = first_report("mdup-032"), first_report("mdup-037")
    assert wdm.access == iowarrior.access == "Read 8"
    assert wdm.bucket() != iowarrior.bucket()
    assert similarity(wdm, iowarrior) == 0.0


def test_the_older_kasan_double_free_wording_opens_a_report() -> None:
    # 'BUG: KASAN: double-free or invalid-free in usbvision_release+0x13b/0x1c0' (kernels before the two were
    # told apart): a KASAN report blamed on its function, not a report without identity
    for excerpt, function in (("mdup-007", "usbvision_release"), ("mdup-081", "disconnect_rio")):
        report = first_report(excerpt)
        assert report.kind == "kasan" and report.subkind == "double-free or invalid-free"
        assert report.guilty() == function
