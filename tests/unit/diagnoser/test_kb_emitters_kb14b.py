"""Branch kb14b: round 16's kernel-side misses, read after its single measurement, written from the kernel's format
strings (docs/diagnoser.md, emitter table, kb14b rows).

Each wording is checked on the real line that motivated it (kb-640, kb-645 and kb-646 are round-16 held-out excerpts,
spent for their classes since) or on the kernel's format string instantiated (`fmt`: the literal parts are the
kernel's, the device names made up). Node log lines must also pass the detector's pre-filter. The look-alikes are what
the same subsystems print on a healthy file system or in a stack trace; real ones are in tests/data/kb/benign.txt
(none from a round-16 thread). kb-632, kb-644 and kb-654 were read and stay misses; kb-637 was relabelled.
"""

from __future__ import annotations

import pytest

from nodeheal.detector.kernel import classify_line
from nodeheal.diagnoser.kb import analyse, default_matcher
from tests.unit.diagnoser.kbdata import ROWS
from tests.unit.diagnoser.kbdata import real as _real

XFS = "xfs_error"
NETDEV = "unregister_netdevice"
GPF = "kernel_oops_gpf"

# (line, class, rule, origin)
CASES = [
    # fs/xfs/xfs_log.c 5.3+: xlog_iodone() / xlog_ioend_work() alerts 'log I/O error %d' and forces the shutdown
    (_real("kb-645", "XFS (sdb6): log I/O error -5"), XFS, "xfs.log_shutdown", "kb-645 (talosctl dmesg)"),
    ("[ 4211.104912] XFS (nvme0n1p1): log I/O error -5", XFS, "xfs.log_shutdown", "fmt xlog_ioend_work"),
    # fs/xfs/xfs_log.c 5.19+: xlog_force_shutdown() when the log's shutdown sets the mount's shutdown state
    (
        _real("kb-645", "Filesystem has been shut down due to log error (0x2)."),
        XFS,
        "xfs.log_shutdown",
        "kb-645 (xlog_force_shutdown)",
    ),
    # fs/xfs/xfs_log.c 3.x-4.x: xfs_log_force() / xfs_log_force_lsn() '%s: error %d returned.' (EIO only on a log in
    # the IOERROR state); 3.17+ negative errno, before it positive
    (_real("kb-646", "xfs_log_force: error -5 returned."), XFS, "xfs.log_force_error", "kb-646 (rcons console)"),
    ("[  365.848319] XFS (sdc1): xfs_log_force_lsn: error -5 returned.", XFS, "xfs.log_force_error", "fmt 4.x _lsn"),
    ("[  365.848319] XFS (sdc1): xfs_log_force: error 5 returned.", XFS, "xfs.log_force_error", "fmt 3.x, errno > 0"),
    # net/core/dev.c netdev_wait_allrefs(): the message quoted without its usage count
    (
        _real("kb-640", "unregister_netdevice: waiting for eth0 to become free."),
        NETDEV,
        "netdev.unregister_wait",
        "kb-640 (zh_CN bullet list)",
    ),
]


@pytest.mark.parametrize(("line", "cls", "rule", "origin"), CASES, ids=[c[3] for c in CASES])
def test_emitter_wording_is_recognised(line: str, cls: str, rule: str, origin: str) -> None:
    finding = default_matcher().match_line(line)
    assert finding is not None and (finding.cls, finding.rule_id) == (cls, rule), (origin, line, finding)
    assert classify_line(line) is not None, ("the detector's pre-filter drops it", line)


def test_the_device_is_read_for_the_disk_look_back() -> None:
    finding = default_matcher().match_line(_real("kb-646", "xfs_log_force: error -5 returned."))
    assert finding is not None and finding.device == "dm-0"
    finding = default_matcher().match_line(_real("kb-645", "log I/O error -5"))
    assert finding is not None and finding.device == "sdb6"


def test_the_spent_excerpts_are_classified_whole() -> None:
    for excerpt in ("kb-640", "kb-645", "kb-646"):
        row = ROWS[excerpt]
        assert row["split"] == "test" and row["round"] == 16
        found = analyse(row["lines"]).primary
        assert found is not None and found.cls == row["class"], (excerpt, found)


@pytest.mark.parametrize(
    "line",
    [
        # a healthy mount and quota check on the same node as kb-645 (real, round 16)
        _real("kb-645", "XFS (sdb6): Ending clean mount"),
        _real("kb-645", "XFS (sdb6): Quotacheck: Done."),
        # a task waiting in a log force: stack frames (kb-634, a round-16 hung task, real; the others fmt)
        _real("kb-634", "xfs_log_force+0x7a/0x1b0 [xfs]"),
        " [<ffffffffc080cd73>] _xfs_log_force_lsn+0x163/0x2d0 [xfs]",
        "[ 1322.000000] Workqueue: xfs-sync/dm-1 xfs_log_worker [xfs]",
        # log recovery and unmount on a healthy file system
        "[    2.241396] XFS (vda4): Ending recovery (logdev: internal)",
        "[  100.000000] XFS (dm-0): Unmounting Filesystem",
        # the unregister path's own frames, and prose naming the bug without the kernel's message
        " [<ffffffff8155d5b5>] unregister_netdevice_queue+0x75/0x110",
        "We still hit the unregister_netdevice bug after the upgrade.",
    ],
)
def test_emitter_look_alikes_are_not_this_class(line: str) -> None:
    finding = default_matcher().match_line(line)
    assert finding is None or finding.cls not in {XFS, NETDEV}, (line, finding)


def test_the_hung_task_around_a_log_force_stays_a_hung_task() -> None:
    found = analyse(ROWS["kb-634"]["lines"]).primary
    assert found is not None and found.cls == "hung_task" == ROWS["kb-634"]["class"]


def test_kb_637_is_the_gpf_oops_whose_panic_it_caused() -> None:
    """Relabelled (docs/diagnoser.md, kb14b): the copy's one crash header is die()'s GPF, and the panic followed the
    oops; the KB ranks an oops over the panic it causes (88 > 80), no rule was changed for it."""
    row = ROWS["kb-637"]
    assert row["class"] == GPF and "relabelled" in row["notes"]
    found = analyse(row["lines"]).primary
    assert found is not None and (found.cls, found.rule_id) == (GPF, "oops.gpf")
    kb = default_matcher().kb
    assert kb.rank(GPF) > kb.rank("kernel_panic")


def test_the_misses_read_and_left_stay_misses() -> None:
    """kb-632 (a register dump tainted 'L', no soft-lockup header), kb-644 (JBD2's journal-replay checksum errors,
    printed at mount; the replay's failure fails the mount, it is not ext4's read-only remount) and kb-654 (a Mem-Info
    block, printed by the OOM killer, sysrq-m and the allocation-failure report alike): no line only their class
    prints (docs/diagnoser.md, kb14b paragraph)."""
    for excerpt in ("kb-632", "kb-644", "kb-654"):
        assert analyse(ROWS[excerpt]["lines"]).primary is None, excerpt
