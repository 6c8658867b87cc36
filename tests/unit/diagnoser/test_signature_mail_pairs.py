"""Level-2 rules written from the false pairs of the mailed syzbot set (tests/data/kb/syzbot_mail_same_bug.jsonl,
spent as tuning data since): each checked on the real reports that motivated it."""

from __future__ import annotations

import json
from pathlib import Path

from nodeheal.diagnoser.kb.signature import CrashReport, extract_reports, similarity

MAIL = Path(__file__).resolve().parents[2] / "data" / "kb" / "syzbot_mail_same_bug.jsonl"
ROWS = {row["id"]: row for row in map(json.loads, MAIL.read_text(encoding="utf-8").splitlines()) if row}


def report(crash: str) -> CrashReport:
    return next(r for r in extract_reports(list(ROWS[crash]["lines"])) if r.identified())


def test_lockdep_class_lookup_is_not_the_blamed_function() -> None:
    # "WARNING: locking bug in ext4_move_extents" vs "… in ext4_ioctl": lockdep's look_up_lock_class and
    # down_write_nested are where both warned, not either bug
    move, ioctl = report("mail-056"), report("mail-077")
    assert move.guilty() not in {"look_up_lock_class", "down_write_nested"}
    assert similarity(move, ioctl) < 0.5
    assert similarity(ioctl, report("mail-078")) >= 0.5  # the same bug twice still joins


def test_two_bug_ons_of_one_file_in_two_functions_are_two_bugs() -> None:
    # fs/ext4/inline.c: "kernel BUG at fs/ext4/inline.c" (ext4_write_inline_data_end) vs "kernel BUG in
    # ext4_write_inline_data"; they share their callers, not the bug
    end, data = report("mail-033"), report("mail-113")
    assert end.bug_at and data.bug_at and end.bug_at.split(":")[0] == data.bug_at.split(":")[0]
    assert similarity(end, data) == 0.0
    assert similarity(end, report("mail-034")) >= 0.5
    assert similarity(data, report("mail-114")) >= 0.5
