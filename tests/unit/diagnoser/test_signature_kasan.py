"""KASAN reports (tests/data/kb/syzbot_fix_same_bug.jsonl: real syzbot reports grouped by their fixing commit)
are crash reports of their own kind: one report per crash however many inlined `BUG: KASAN:` lines it has,
blamed on the first frame past the sanitizer's machinery, and bucketed with the same bug's other copies."""

from __future__ import annotations

import json
from pathlib import Path

from nodeheal.diagnoser.kb.signature import cluster_reports, extract_reports, similarity

DATA = Path(__file__).resolve().parents[2] / "data" / "kb"
# round 6's fix-grouped set and round 8's (syzbot_dup_same_bug, spent once its untouched figure was recorded)
ROWS = {
    row["id"]: row
    for name in ("syzbot_fix_same_bug.jsonl", "syzbot_dup_same_bug.jsonl")
    for row in (json.loads(line) for line in (DATA / name).read_text(encoding="utf-8").splitlines() if line)
}


def only_report(excerpt: str):  # type: ignore[no-untyped-def]
    reports = extract_reports(ROWS[excerpt]["lines"])
    assert len(reports) == 1, [r.kind for r in reports]
    return reports[0]


def test_a_kasan_report_is_identified_and_blames_the_accessing_function() -> None:
    report = only_report("fix-001")  # use-after-free in erspan_build_header
    assert report.kind == "kasan" and report.identified()
    assert report.guilty() == "erspan_build_header"


def test_inlined_header_lines_continue_one_report() -> None:
    report = only_report("fix-007")  # three 'BUG: KASAN:' lines for two inlined frames and their caller
    assert report.guilty() == "___neigh_create"


def test_two_access_kinds_of_one_bug_share_the_exact_key() -> None:
    # use-after-free vs slab-out-of-bounds of one erspan bug (two kernel builds, one fixing commit)
    assert only_report("fix-001").bucket() == only_report("fix-002").bucket()


def test_a_kasan_report_and_a_page_fault_of_one_bug_are_similar() -> None:
    # 'KASAN: vmalloc-out-of-bounds Write in htab_map_alloc' and 'BUG: unable to handle … in htab_map_alloc'
    assert similarity(only_report("fix-009"), only_report("fix-010")) == 1.0


def test_kasan_reports_of_unrelated_functions_are_not_similar() -> None:
    assert similarity(only_report("fix-001"), only_report("fix-011")) == 0.0


def test_the_faulting_access_is_cut_from_the_report() -> None:
    # 'Write of size 8 at addr …' / 'Read of size 8 at addr …' under the 'BUG: KASAN:' header
    assert only_report("fix-009").access == "Write 8"
    assert only_report("fix-017").access == "Read 8"
    assert only_report("fix-009").subkind == "vmalloc-out-of-bounds"


def test_two_accesses_in_one_function_are_two_bugs_at_both_levels() -> None:
    # the hard negative: 'use-after-free Read in htab_map_alloc' (fixed by 8aaeed81) vs 'vmalloc-out-of-bounds
    # Write in htab_map_alloc' (fixed by e1868b9e): same function, same frames, another instruction
    write, read = only_report("fix-009"), only_report("fix-017")
    assert write.bucket() != read.bucket()
    assert similarity(write, read) == 0.0


def test_a_page_fault_does_not_chain_two_conflicting_kasan_reports() -> None:
    # the page fault in htab_map_alloc (one bug with fix-009) is similar to both KASAN reports; single linkage
    # alone would join all three, the cannot-link keeps the read apart
    clusters = cluster_reports([only_report("fix-009"), only_report("fix-010"), only_report("fix-017")])
    assert clusters[0] == clusters[1] != clusters[2]


def test_a_gpf_keeps_its_kasan_hint_as_its_subkind() -> None:
    # 'KASAN: null-ptr-deref in range [0x…a8-0x…af]' under 'general protection fault, probably for non-canonical …'
    assert only_report("fix-018").subkind == "null-ptr-deref"


def test_a_warning_inside_the_allocator_blames_its_caller() -> None:
    # 'WARNING … at mm/slub.c … free_large_kmalloc', syzbot's title 'WARNING in tcp_disconnect'
    report = only_report("fix-016")
    assert report.rip_func == "free_large_kmalloc"
    assert report.guilty() == "tcp_disconnect"
    assert report.subkind == "mm/slub.c"


def test_a_copy_range_check_reports_no_instruction_width() -> None:
    # one skb_segment bug (one fixing commit): 'Read of size 2324' and 'Read of size 3560', KASAN's check of a
    # memcpy whose length is the packet's: the length is no property of the faulting instruction
    first, second = only_report("dup-016"), only_report("dup-017")
    assert (first.access, second.access) == ("Read 2324", "Read 3560")
    assert similarity(first, second) == 1.0
    assert cluster_reports([first, second]) == [0, 0]


def test_a_kasan_report_interleaved_with_another_oops_keeps_its_function() -> None:
    # the 'BUG: KASAN: use-after-free in aead_recvmsg+0x1758/0x1bc0' header lines, then another CPU's NULL
    # dereference before the KASAN report's own trace: the KASAN report is still identified by its header
    reports = extract_reports(ROWS["dup-009"]["lines"])
    assert reports[0].kind == "kasan" and reports[0].identified()
    assert reports[0].guilty() == "aead_recvmsg"


def test_the_workqueue_cancel_path_is_machinery() -> None:
    # 'BUG: KASAN: null-ptr-deref in try_to_grab_pending', syzbot's title '… in rhashtable_free_and_destroy'
    assert only_report("dup-050").guilty() == "rhashtable_free_and_destroy"
