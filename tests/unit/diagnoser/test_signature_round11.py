"""Round 11 of the crash buckets (branch bucket8, docs/BENCHMARKS.md): one bug seen as two kinds of crash, and
reports raised inside an interrupt. Real reports of the same-bug sets' tuning halves (tests/data/kb/README.md,
"Tuning and held-out halves"); the negative is constructed (the kernel's format, made-up values)."""

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

DATA = Path(__file__).resolve().parents[2] / "data" / "kb"
ROWS = {
    row["id"]: row
    for name in ("syzbot_fix_same_bug.jsonl", "syzbot_dup_same_bug.jsonl")
    for row in (json.loads(line) for line in (DATA / name).read_text(encoding="utf-8").splitlines() if line)
}


def first_report(lines: list[str]) -> CrashReport:
    return next(r for r in extract_reports(lines) if r.identified())


def report(row_id: str) -> CrashReport:
    return first_report(ROWS[row_id]["lines"])


def test_one_bug_seen_as_a_bad_access_and_as_a_warning_shares_a_level_two_bucket() -> None:
    # ipvlan_queue_xmit: two KASAN reports and a WARNING of one bug (one fixing commit), the same path to it
    kasan_uaf, warning, kasan_oob = report("dup-020"), report("dup-019"), report("dup-018")
    assert (kasan_uaf.kind, warning.kind, kasan_oob.kind) == ("kasan", "warning", "kasan")
    assert len(set(cluster_reports([kasan_uaf, warning, kasan_oob]))) == 1
    # tcp_disconnect: KASAN's invalid free and the slab allocator's WARNING, one fixing commit
    assert similarity(report("fix-015"), report("fix-016")) >= SIMILARITY_THRESHOLD


def constructed_warning(callers: list[str]) -> list[str]:
    """Constructed (our own text, made-up values): a WARNING in ipvlan_queue_xmit reached by `callers`."""
    return [
        "------------[ cut here ]------------",
        "WARNING: CPU: 0 PID: 4242 at drivers/net/ipvlan/ipvlan_core.c:610 ipvlan_queue_xmit+0x1a/0x19d0",
        "CPU: 0 PID: 4242 Comm: kworker/0:2 Not tainted 6.1.0-test #1",
        "RIP: 0010:ipvlan_queue_xmit+0x1a/0x19d0",
        "Call Trace:",
        *(f" {func}+0x45/0x150" for func in callers),
    ]


def test_two_kinds_of_crash_in_one_function_by_other_paths_stay_apart() -> None:
    kasan = report("dup-018")  # reached from packet_sendmsg via ipvlan_start_xmit
    other_path = first_report(constructed_warning(["ipvlan_nf_input", "nf_hook_slow", "ip_local_deliver", "ip_rcv"]))
    same_path = first_report(
        constructed_warning(["ipvlan_start_xmit", "__dev_direct_xmit", "packet_direct_xmit", "packet_sendmsg"])
    )
    assert other_path.guilty() == same_path.guilty() == kasan.guilty() == "ipvlan_queue_xmit"
    assert similarity(kasan, other_path) == 0.0
    assert similarity(kasan, same_path) >= SIMILARITY_THRESHOLD
    # a WARNING without a trace (one caller or none) says nothing about its path: never joined with a KASAN report
    assert similarity(kasan, first_report(constructed_warning([]))) == 0.0


def test_a_report_raised_in_an_interrupt_ends_at_the_interrupt() -> None:
    # dup-071: KASAN in a timer callback (dev_expire_timer) inside <IRQ>; after </IRQ> the trace shows whatever
    # task the timer interrupted (an ext4 symlink here, another task in the same bug's other report)
    lines = ROWS["dup-071"]["lines"]
    full = first_report(lines)
    assert full.guilty() == "dev_expire_timer"
    assert not {"mark_page_accessed", "__find_get_block", "ext4_symlink"} & set(full.significant_frames())
    # a copy that stops at </IRQ> (a paste cut there) keeps the exact key
    cut = lines[: next(i for i, line in enumerate(lines) if "</IRQ>" in line) + 1]
    assert first_report(cut).bucket() == full.bucket()


def corpus(excerpt: str) -> list[str]:
    path = DATA / "corpus.jsonl"
    return next(r["lines"] for r in map(json.loads, path.read_text().splitlines()) if r["id"] == excerpt)


def test_a_copy_that_starts_at_the_old_ip_line_keeps_its_identity() -> None:
    # kb-064 (kubernetes#50695, a 4.4-era NULL dereference): `IP: [<…>] check_preempt_wakeup+0xd0/0x1d0` and no
    # trace; a paste that starts below the `BUG: unable to handle …` header still names the function
    lines = corpus("kb-064")
    full = first_report(lines)
    headless = [line for line in lines if "BUG: unable to handle" not in line]
    copy = first_report(headless)
    assert (full.kind, copy.kind) == ("oops_null_deref", "oops")
    assert copy.guilty() == full.guilty() == "check_preempt_wakeup"
    assert len(set(cluster_reports([full, copy]))) == 1
    # arm64 (kb-069, `Internal error: Oops`): a copy without that line is opened at its `pc : ` line
    arm = [line for line in corpus("kb-069") if "Internal error" not in line]
    assert first_report(arm).guilty() == first_report(corpus("kb-069")).guilty() == "backing_file_open"


def test_a_user_mode_ip_line_opens_no_report() -> None:
    # constructed (made-up values): a segfault's user-mode register lines name no kernel function
    lines = [
        "RIP: 0033:0x7f0281f1453b",
        "IP: [<00007f0281f1453b>] 0x7f0281f1453b",
        "pc : 0000ffff8c2e3a10",
    ]
    assert extract_reports(lines) == []


def test_an_ip_line_printed_before_its_header_is_one_report() -> None:
    # kb-171 (ESOS 3.14): the `IP:` line is printed before `BUG: unable to handle kernel NULL pointer`
    reports = extract_reports(corpus("kb-171"))
    assert [r.kind for r in reports] == ["oops_null_deref"]
    assert reports[0].rip_func == "sock_sendmsg"
