"""Branch bucket11 (issue 18, crash buckets that survive partial copies; docs/BENCHMARKS.md): the firmware-first fatal
hardware error's panic string names the kind of crash, not the bug. Tested on the corpus excerpts whose two reports the
level-2 buckets joined as one bug (kb-458, a Broadcom NIC's PCIe error on a Debian 12 appliance, and kb-542, an AMD
GPU's on RHEL 9.1: two machines, two devices, one fixed panic string) and on lines constructed from the 6.x wording of
linux `drivers/acpi/apei/ghes.c` (`GHES_PFX "Fatal hardware error"`, our own text)."""

from __future__ import annotations

import json
from pathlib import Path

from nodeheal.diagnoser.kb.signature import cluster_reports, extract_reports
from nodeheal.sim.bench.kb import Excerpt, bucketing

DATA = Path(__file__).resolve().parents[2] / "data" / "kb"
CORPUS = {
    row["id"]: row
    for row in (json.loads(line) for line in (DATA / "corpus.jsonl").read_text(encoding="utf-8").splitlines() if line)
}


def test_ghes_panic_alone_carries_no_identity() -> None:
    for excerpt in ("kb-458", "kb-542"):
        reports = extract_reports(CORPUS[excerpt]["lines"])
        assert [r.panic_string for r in reports] == ["Fatal hardware error!"], excerpt
        assert not reports[0].functions() and not reports[0].bug_at
        assert not reports[0].identified(), excerpt  # was identified by the panic string alone before bucket11


def test_the_bench_no_longer_counts_them_as_one_bug() -> None:
    """Before bucket11 the two excerpts were one bucket (the same exact key: kind + the panic string, which counted as
    specific) in the corpus bucketing and partial-copy figures; a report without identity is left out of both."""
    excerpts = [
        Excerpt(id=e, cls=CORPUS[e]["class"], lines=tuple(CORPUS[e]["lines"]), source=CORPUS[e]["source"], split="x")
        for e in ("kb-458", "kb-542")
    ]
    scores = bucketing(excerpts)
    assert scores["reports"] == 0 and scores["reports_without_identity"] == 2
    assert scores["similarity"]["fp"] == 0


def test_a_specific_panic_string_still_identifies() -> None:
    """Constructed from kernel/panic.c's `__stack_chk_fail`: `stack-protector: Kernel stack is corrupted in: %pB`."""
    (report,) = extract_reports(
        ["Kernel panic - not syncing: stack-protector: Kernel stack is corrupted in: foo_ioctl+0x9a/0xa0"]
    )
    assert report.identified()


def test_the_6x_wording_is_generic_too() -> None:
    lines = [
        "[  12.000001] {1}[Hardware Error]: Hardware error from APEI Generic Hardware Error Source: 1",
        "[  12.000002] {1}[Hardware Error]: event severity: fatal",
        "[  12.000009] Kernel panic - not syncing: GHES: Fatal hardware error",
        "[  12.000010] CPU: 3 PID: 0 Comm: swapper/3 Not tainted 6.14.0-test #1",
    ]
    (report,) = extract_reports(lines)
    assert report.panic_string == "GHES: Fatal hardware error"
    assert not report.identified()


def test_a_ghes_panic_with_frames_is_keyed_on_its_frames_not_the_panic_string() -> None:
    """Constructed: the panic from the NMI path (`ghes_notify_nmi` → `__ghes_panic`), once with each wording."""

    def report(panic: str) -> list[str]:
        return [
            f"[  5.000001] Kernel panic - not syncing: {panic}",
            "[  5.000002] CPU: 0 PID: 0 Comm: swapper/0 Not tainted 6.1.0-test #1",
            "[  5.000003] Call Trace:",
            "[  5.000004]  <NMI>",
            "[  5.000005]  dump_stack_lvl+0x44/0x5c",
            "[  5.000006]  panic+0x118/0x2ed",
            "[  5.000007]  __ghes_panic.cold+0x28/0x28",
            "[  5.000008]  ghes_in_nmi_queue_one_entry.constprop.0+0x23a/0x2a0",
            "[  5.000009]  ghes_notify_nmi+0x59/0xd0",
            "[  5.000010]  nmi_handle+0x5e/0x130",
            "[  5.000011]  default_do_nmi+0x40/0x100",
            "[  5.000012]  </NMI>",
        ]

    old, new = (
        extract_reports(report("Fatal hardware error!"))[0],
        extract_reports(report("GHES: Fatal hardware error"))[0],
    )
    assert old.identified() and new.identified()  # the frames identify it
    assert old.bucket() == new.bucket()  # the wording of the kernel release does not split the bucket
    assert len(set(cluster_reports([old, new]))) == 1


# --- a hung-task report without its header line --------------------------------------------------------------------
# linux kernel/hung_task.c (`hung_task_info()`, torvalds/linux 00b5cdeb; `check_hung_task()` before) prints the
# `INFO: task …` header, the taint / release line, `"echo 0 > /proc/sys/kernel/hung_task_timeout_secs" disables this
# message.`, then the task's stack: a copy without the header still has the second fixed line.


def test_hung_task_copies_without_their_header_keep_the_bucket() -> None:
    """kb-023 / kb-024 / kb-027 (train): the corpus's hung tasks, and the partial copy the bench derives without the
    header line (before bucket11 that copy held no report at all)."""
    for excerpt in ("kb-023", "kb-024", "kb-027"):
        lines = CORPUS[excerpt]["lines"]
        (full,) = [r for r in extract_reports(lines) if r.identified()]
        headerless = [line for line in lines if "INFO: task" not in line]
        (copy,) = extract_reports(headerless)
        assert full.kind == copy.kind == "hung_task", excerpt
        assert copy.identified() and copy.bucket() == full.bucket(), excerpt


def test_the_second_line_does_not_split_a_whole_report() -> None:
    lines = CORPUS["kb-023"]["lines"]
    reports = extract_reports(lines)
    assert [r.kind for r in reports].count("hung_task") == 1
    assert reports[0].comm == "dockerd"  # the header's task, as before


def test_a_headerless_hung_task_after_another_is_a_report_of_its_own() -> None:
    """Constructed: two tasks reported one after the other (each with its own `echo 0` line), the second's header
    lost."""
    first = [
        "INFO: task jbd2/sda1-8:512 blocked for more than 120 seconds.",
        '"echo 0 > /proc/sys/kernel/hung_task_timeout_secs" disables this message.',
        "task:jbd2/sda1-8     state:D stack:0     pid:512   ppid:2      flags:0x00004000",
        "Call Trace:",
        " <TASK>",
        " __schedule+0x2ee/0x870",
        " schedule+0x28/0x80",
        " jbd2_journal_commit_transaction+0x260/0x1896",
        " kjournald2+0xbd/0x270",
        " </TASK>",
    ]
    second = [
        "      Not tainted 6.1.0-test #1",
        '"echo 0 > /proc/sys/kernel/hung_task_timeout_secs" disables this message.',
        "task:dockerd         state:D stack:0     pid:901   ppid:1      flags:0x00000000",
        "Call Trace:",
        " <TASK>",
        " __schedule+0x2ee/0x870",
        " schedule+0x28/0x80",
        " ovl_sync_fs+0x2f/0x50",
        " sync_filesystem+0x74/0x90",
        " </TASK>",
    ]
    reports = extract_reports(first + second)
    assert [r.kind for r in reports] == ["hung_task", "hung_task"]
    assert reports[0].functions()[0] == "jbd2_journal_commit_transaction"
    assert reports[1].functions()[0] == "ovl_sync_fs"
    assert len(set(cluster_reports(reports))) == 2
