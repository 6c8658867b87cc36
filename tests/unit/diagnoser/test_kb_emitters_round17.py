"""Branch round17: round 17's `train` wording misses, read after its single measurement, written from their emitters'
format strings (docs/diagnoser.md, emitter table, round17 rows).

Each wording is checked on the real line that motivated it (kb-694, kb-705, kb-707: round-17 `train` excerpts) or on
the emitter's format string instantiated (`fmt`: the literal parts are the emitter's, the names made up). Node log lines
must also pass the detector's pre-filter. The look-alikes are what the same emitters print when nothing is wrong or when
the operator asked for it; real ones are in tests/data/kb/benign.txt (none from a round-17 thread). Round 17's `test`
excerpts are not test lines here.
"""

from __future__ import annotations

import pytest

from nodeheal.detector.kernel import classify_line
from nodeheal.diagnoser.kb import analyse, default_matcher
from tests.unit.diagnoser.kbdata import ROWS
from tests.unit.diagnoser.kbdata import real as _real

XFS = "xfs_error"
PLANNED = "planned_shutdown_reboot"

# (line, class, rule, origin)
CASES = [
    # fs/xfs/xfs_fsops.c 5.15+ xfs_do_force_shutdown(): '%s (0x%x) detected at %pS (%s:%d).  Shutting down filesystem.'
    (_real("kb-694", "detected at"), XFS, "xfs.force_shutdown_why", "kb-694 (wrapped after 'detected at')"),
    # (whole lines end in 'Shutting down filesystem.', which xfs.corruption reads first; cut after the return address, as
    # a console or a paste breaks them, only the new rule does)
    (
        "[ 8811.120411] XFS (nvme1n1): Corruption of on-disk metadata (0x10) detected at xfs_trans_cancel+0x11c/0x140",
        XFS,
        "xfs.force_shutdown_why",
        "fmt 5.15+ on-disk, cut",
    ),
    (
        "[  512.004190] XFS (sdb1): Block device removal (0x20) detected at xfs_fs_shutdown+0x15/0x20 [xfs]",
        XFS,
        "xfs.force_shutdown_why",
        "fmt 6.x device removal, cut",
    ),
    (
        "[  512.004190] XFS (sdb1): Block device removal (0x20) detected at xfs_fs_shutdown+0x15/0x20 [xfs] "
        "(fs/xfs/xfs_super.c:1200).  Shutting down filesystem.",
        XFS,
        "xfs.corruption",
        "fmt 6.x device removal, whole",
    ),
    # 5.14's short-lived form (the patch 'xfs: ... shutdown messages' in the linux-xfs thread the file index holds)
    (
        "XFS (dm-3): Log I/O error (0x2) detected at xlog_ioend_work+0x71/0x80 [xfs] (fs/xfs/xfs_log.c:1296). "
        "Shutting down filesystem",
        XFS,
        "xfs.corruption",
        "fmt 5.14 (both rules; the older one first)",
    ),
    # Talos machined's Controller.run(): '%s sequence: %d phase(s)' (internal/app/machined/pkg/runtime/v1alpha1)
    (_real("kb-707", "reboot sequence"), PLANNED, "ops.talos_shutdown_sequence", "kb-707 (apply-config --mode=reboot)"),
    (_real("kb-705", "stageUpgrade sequence"), PLANNED, "ops.talos_shutdown_sequence", "kb-705 (staged upgrade)"),
    ("[ 9421.110102] [talos] upgrade sequence: 12 phase(s)", PLANNED, "ops.talos_shutdown_sequence", "fmt upgrade"),
    ("[  733.415810] [talos] shutdown sequence: 8 phase(s)", PLANNED, "ops.talos_shutdown_sequence", "fmt shutdown"),
]


@pytest.mark.parametrize(("line", "cls", "rule", "origin"), CASES, ids=[c[3] for c in CASES])
def test_emitter_wording_is_recognised(line: str, cls: str, rule: str, origin: str) -> None:
    finding = default_matcher().match_line(line)
    assert finding is not None and (finding.cls, finding.rule_id) == (cls, rule), (origin, line, finding)
    assert classify_line(line) is not None, ("the detector's pre-filter drops it", line)


def test_the_device_is_read_for_the_disk_look_back() -> None:
    finding = default_matcher().match_line(_real("kb-694", "detected at"))
    assert finding is not None and finding.device == "sda4"


def test_the_train_excerpts_are_classified_whole() -> None:
    for excerpt in ("kb-694", "kb-705", "kb-707"):
        row = ROWS[excerpt]
        assert row["split"] == "train" and row["round"] == 17
        found = analyse(row["lines"]).primary
        assert found is not None and found.cls == row["class"], (excerpt, found)


@pytest.mark.parametrize(
    "line",
    [
        # the operator's own shutdown (XFS_IOC_GOINGDOWN, xfs_io's shutdown): 5.15+ (real in benign.txt; fmt here)
        "[  121.331208] XFS (pmem1): User initiated shutdown received.",
        "[  121.331210] XFS (pmem1): Log I/O Error (0x6) detected at xfs_fs_goingdown+0xa3/0xf0 "
        "(fs/xfs/xfs_fsops.c:500).  Shutting down filesystem.",
        # 5.14's form of it, and the line every shutdown is followed by
        "XFS (sdc): User initiated shutdown (0x2) received. Shutting down filesystem",
        "XFS (sdc): Please unmount the filesystem and rectify the problem(s)",
        # Talos sequences that are not a shutdown, and the phase / task lines of any sequence
        "[    1.990117] [talos] boot sequence: 13 phase(s)",
        "[    3.104722] [talos] install sequence: 5 phase(s)",
        "[ 9445.223667] [talos] reset sequence: 6 phase(s)",
        "[155590.057755] [talos] phase cleanup (1/11): 1 tasks(s)",
        "[  120.551208] [talos] task stopServicesForUpgrade (1/1): starting",
        "[  120.551208] [talos] reboot via API received. actor id: 0a1b2c3d-0000-4000-8000-000000000000",
    ],
)
def test_emitter_look_alikes_are_not_this_class(line: str) -> None:
    finding = default_matcher().match_line(line)
    assert finding is None or finding.cls not in {XFS, PLANNED}, (line, finding)


@pytest.mark.parametrize(
    "failure",
    [
        # Controller.run()'s own failure lines and its caller's (the format strings instantiated)
        "[  310.120001] [talos] phase cleanup (1/11): failed",
        "[  310.120013] [talos] reboot sequence: failed",
        "[  310.120020] [talos] reboot failed: error running phase 1 in reboot sequence: task 1/1: failed, context canceled",
        "[  911.041122] [talos] upgrade failed: error running phase 9 in upgrade sequence: task 1/1: failed",
    ],
)
def test_a_failed_sequence_vetoes_the_planned_reboot(failure: str) -> None:
    start = _real("kb-707", "reboot sequence")
    found = analyse([start]).primary
    assert found is not None and found.cls == PLANNED
    assert analyse([start, failure]).primary is None, failure


def test_the_misses_read_and_left_stay_misses() -> None:
    """kb-682 (a BUG's register tail and the panic it caused), kb-701 (the kubelet's PLEG message in a thread about
    containerd hanging), kb-703 (a snap service stopped, as a snap refresh does): no line only their class prints
    (docs/diagnoser.md, round17 paragraph). kb-706 (a Talos phase whose task name the newest tree reuses outside
    upgrades) is read by its phase's name since branch shut18 (test_kb_emitters_shut18.py), kb-700 (containerd's Go
    panic run by hand, no journal tag) by its daemon frame under the panic header since branch crd19
    (test_kb_emitters_crd19.py)."""
    for excerpt in ("kb-682", "kb-701", "kb-703"):
        found = analyse(ROWS[excerpt]["lines"]).primary
        assert found is None or found.cls != ROWS[excerpt]["class"], excerpt
