"""Lines wrapped by mailers, bug trackers and web pages (`logline.unwrap`).

The step was written from wrapped excerpts of the corpus's mailing-list rounds; those excerpts were removed
(tests/data/README.md "Provenance"), so the wrapped copies here are constructed: the kernel's own messages
with made-up devices, numbers and tasks, cut where a mailer wrapping at ~80 columns cuts them.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from nodeheal.diagnoser.kb import analyse, default_matcher
from nodeheal.diagnoser.kb.logline import is_continuation, unwrap

KB_DATA = Path(__file__).resolve().parents[2] / "data" / "kb"
ROWS = {
    row["id"]: row
    for row in (json.loads(text) for text in (KB_DATA / "corpus.jsonl").read_text(encoding="utf-8").splitlines())
}
BENIGN = [
    line
    for line in (KB_DATA / "benign.txt").read_text(encoding="utf-8").splitlines()
    if line and not line.startswith("#")
]

# constructed: a hung-task header cut inside the task's name
HUNG = [
    "[ 4837.120045] INFO: task jbd2/sdb1-",
    "8:1187 blocked for more than 122 seconds.",
    "[ 4837.127201]       Not tainted 5.15.0-91-generic #101-Ubuntu",
    "[ 4837.150013] Call Trace:",
    "[ 4837.154801]  __schedule+0x2cd/0x890",
    "[ 4837.158451]  schedule+0x69/0x110",
    "[ 4837.161803]  jbd2_journal_commit_transaction+0x31f/0x1a60",
    "[ 4837.167350]  kjournald2+0xb6/0x280",
    "[ 4837.170871]  kthread+0x127/0x150",
]
# constructed: an ext4 error cut right after its device, then again before the block count
EXT4 = [
    "[31877.402117] EXT4-fs error (device md0):",
    "ext4_map_blocks:604: inode #8126520: comm kworker/u16:3: lblock 0 mapped to illegal pblock",
    "318770124 (length 1)",
]
# constructed: an XFS forced shutdown wrapped over four lines
XFS = [
    "[  95.301442] XFS (sdd1):",
    "xfs_do_force_shutdown(0x2) called from line",
    "1197 of file fs/xfs/xfs_log.c.  Return address =",
    "ffffffffc0a1b2c4",
]
# constructed: a soft-lockup header whose '[comm:pid]' went to the next line
SOFT = [
    "[ 8120.551931] watchdog: BUG: soft lockup - CPU#12 stuck for 52s!",
    "[kworker/u258:4:6610]",
    "[ 8120.560312] CPU: 12 PID: 6610 Comm: kworker/u258:4 Not tainted 6.1.0-13-amd64 #1 Debian 6.1.55-1",
    "[ 8120.569441] RIP: 0010:native_queued_spin_lock_slowpath+0x64/0x2e0",
    "[ 8120.575842] Call Trace:",
    "[ 8120.578421]  <TASK>",
    "[ 8120.580612]  _raw_spin_lock+0x29/0x30",
    "[ 8120.584451]  nfs_commit_release_pages+0x8e/0x1d0 [nfs]",
    "[ 8120.589801]  nfs_commit_release+0x1f/0x40 [nfs]",
]


@pytest.mark.parametrize(("lines", "cls"), [(HUNG, "hung_task"), (EXT4, "ext4_error"), (XFS, "xfs_error")])
def test_a_wrapped_header_is_recognised(lines: list[str], cls: str) -> None:
    assert default_matcher().match_line(lines[0]) is None  # the cut head alone says nothing
    found = analyse(lines).primary
    assert found is not None and found.cls == cls


def test_the_rejoined_line_is_what_the_finding_shows() -> None:
    found = default_matcher().scan(XFS)
    assert [f.index for f in found] == [0]
    assert "xfs_do_force_shutdown(0x2) called from line 1197" in found[0].line
    assert found[0].device == "sdd1"


def test_unwrap_keeps_every_line_and_its_index() -> None:
    joined = unwrap(EXT4)
    assert len(joined) == len(EXT4)
    assert joined[0].endswith("lblock 0 mapped to illegal pblock 318770124 (length 1)")
    assert joined[1:3] == EXT4[1:3]  # the continuation lines themselves are kept


def test_the_wrapped_soft_lockup_comm_reaches_the_signature() -> None:
    assert is_continuation(SOFT[0], SOFT[1])
    report = analyse(SOFT).reports[0]
    assert report.comm is not None and report.comm.startswith("kworker/u258")


def test_the_wrapped_hung_task_comm_reaches_the_signature() -> None:
    report = analyse(HUNG).reports[0]
    assert report.comm is not None and report.comm.startswith("jbd2/sdb1-")


def test_indented_and_prefixed_lines_are_not_continuations() -> None:
    lines = list(ROWS["kb-208"]["lines"])  # dmesg's own indented second line; kernel layout, not a wrap
    assert not is_continuation(lines[2], lines[3])
    assert not is_continuation(lines[0], lines[1])  # both carry their own time stamp


def test_benign_lines_do_not_match_when_rejoined() -> None:
    # the whole benign corpus as one excerpt: any pair the unwrapping step joins must still match nothing
    assert default_matcher().scan(BENIGN) == []
