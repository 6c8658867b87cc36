"""The agent's crash capture against node roots laid out with the bytes a real kernel left behind
(tests/data/kernel: pstore ramoops records and a kdump vmcore-dmesg.txt of a Debian 6.1 cloud kernel
under qemu, see its README), and the diagnoser's classification of the same bytes."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest

from nodeheal.agent.crash import CrashCollector, assemble_parts, crash_msg_id, parse_pstore_text
from nodeheal.diagnoser.crash import bucket_key, classify, update_record
from nodeheal.diagnoser.kb import default_matcher
from nodeheal.schemas.crash import MAX_CRASH_LINES, CrashReport

DATA = Path(__file__).resolve().parents[2] / "data" / "kernel"
OLD_BOOT = "3f1c9a52-6a0e-4f4e-9b8e-0c2d7e5b1a10"
NEW_BOOT = "8d2b6e41-2c7f-4c1a-a7b5-5e9f0d3c4b21"


def real(name: str) -> bytes:
    return (DATA / name).read_bytes()


def lay_out(root: Path, files: dict[str, bytes]) -> None:
    for host_path, data in files.items():
        path = root / host_path.lstrip("/")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)


def collector(root: Path, state: Path, **over: object) -> CrashCollector:
    values: dict[str, object] = {
        "cluster": "prod-1",
        "node": "cn-hangzhou.10.0.0.7",
        "root": root,
        "state_file": state / "crash-state.json",
        "journal_command": None,
    }
    values.update(over)
    return CrashCollector(**values)  # type: ignore[arg-type]


async def booted(root: Path, state: Path, boot_id: str, **over: object) -> tuple[CrashCollector, CrashReport | None]:
    """A fresh agent process (state from the state file) on its first probe of `boot_id`."""
    agent = collector(root, state, **over)
    return agent, await agent.check(boot_id=boot_id, kernel_release="6.1.0-57-cloud-amd64")


@pytest.fixture
def node(tmp_path: Path) -> tuple[Path, Path]:
    root, state = tmp_path / "root", tmp_path / "state"
    root.mkdir()
    state.mkdir()
    return root, state


def test_real_pstore_records_have_headers_and_level_prefixes() -> None:
    oops = parse_pstore_text("dmesg-ramoops-0", real("null/pstore/dmesg-ramoops-0").decode())
    panic = parse_pstore_text("dmesg-ramoops-1", real("null/pstore/dmesg-ramoops-1").decode())
    assert (oops.backend, oops.reason, oops.count, oops.part) == ("ramoops", "Oops", 1, 1)
    assert (panic.reason, panic.count) == ("Panic", 2)
    assert oops.lines[0].startswith("<5>[    0.000000] Linux version 6.1.0-57-cloud-amd64")
    assert any("BUG: kernel NULL pointer dereference" in line for line in oops.lines)
    assert panic.lines[-2].startswith("<0>[") and "Kernel panic - not syncing: Fatal exception" in panic.lines[-2]


def test_parts_of_one_dump_are_joined_oldest_piece_first() -> None:
    """efi-pstore splits a dump into ~1 KiB parts; Part1 is the newest piece (the end of the log)."""
    lines = real("softlockup/pstore/dmesg-ramoops-0").decode().splitlines()[1:]
    head, tail = lines[: len(lines) // 2], lines[len(lines) // 2 :]
    part2 = parse_pstore_text("dmesg-efi-171234567802001", "\n".join(["Panic#1 Part2", *head]))
    part1 = parse_pstore_text("dmesg-efi-171234567801001", "\n".join(["Panic#1 Part1", *tail]))
    groups = assemble_parts([part1, part2])
    assert [[r.part for r in g] for g in groups] == [[2, 1]]
    joined = [line for record in groups[0] for line in record.lines]
    assert joined == lines


async def test_an_unexpected_reboot_reports_pstore_and_kdump_once(node: tuple[Path, Path]) -> None:
    root, state = node
    agent, report = await booted(root, state, OLD_BOOT)
    assert report is None  # first start: nothing known about an earlier boot, nothing on disk
    # the kernel crashed; the next boot finds ramoops records and a kdumpctl dump (CentOS / Alibaba Cloud Linux)
    lay_out(
        root,
        {
            "/sys/fs/pstore/dmesg-ramoops-0": real("null/pstore/dmesg-ramoops-0"),
            "/sys/fs/pstore/dmesg-ramoops-1": real("null/pstore/dmesg-ramoops-1"),
            "/var/crash/127.0.0.1-2026-12-01-16:52:10/vmcore-dmesg.txt": real("null/vmcore-dmesg.txt"),
            "/var/crash/127.0.0.1-2026-12-01-16:52:10/vmcore": b"\x7fELF (the dump itself is never read)",
        },
    )
    agent, report = await booted(root, state, NEW_BOOT)
    assert report is not None
    assert (report.boot_id, report.previous_boot_id, report.unexpected) == (NEW_BOOT, OLD_BOOT, True)
    sources = [(e.source, e.path, e.record) for e in report.evidence]
    assert sources == [
        ("pstore", "/sys/fs/pstore/dmesg-ramoops-1", "Panic#2 Part1"),
        ("pstore", "/sys/fs/pstore/dmesg-ramoops-0", "Oops#1 Part1"),
        ("kdump", "/var/crash/127.0.0.1-2026-12-01-16:52:10/vmcore-dmesg.txt", None),
    ]
    for evidence in report.evidence:
        assert len(evidence.lines) <= MAX_CRASH_LINES
        assert evidence.lines_dropped + len(evidence.lines) >= 400  # a whole boot log: the tail is kept
        assert any("BUG: kernel NULL pointer dereference" in line for line in evidence.lines)
    assert report.evidence[0].lines[-2].startswith("<0>[")  # kept verbatim: kmsg level prefixes
    # the same report until it is acknowledged, then never again — not after an agent restart either
    assert await agent.check(boot_id=NEW_BOOT) == report
    agent.reported(report)
    assert await agent.check(boot_id=NEW_BOOT) is None
    _, again = await booted(root, state, NEW_BOOT)
    assert again is None
    assert crash_msg_id(cluster="prod-1", node="cn-hangzhou.10.0.0.7", boot_id=NEW_BOOT).startswith("cr-")


async def test_an_orderly_reboot_with_old_evidence_reports_nothing(node: tuple[Path, Path]) -> None:
    root, state = node
    lay_out(root, {"/sys/fs/pstore/dmesg-ramoops-0": real("hung/pstore/dmesg-ramoops-0")})
    await booted(root, state, OLD_BOOT)  # first start ever: the record is older than anything we know...
    agent, report = await booted(root, state, NEW_BOOT)
    assert report is not None and report.evidence[0].reason == "Panic"  # ...so it is reported on the next boot
    agent.reported(report)
    agent.mark_orderly()  # systemd stops the agent: an orderly reboot follows
    third = "0c4d7a9e-5b1f-4e2a-9c3d-7f6e5d4c3b2a"
    agent, report = await booted(root, state, third)
    assert report is None  # the pstore file is still there (the agent never deletes), but it was reported


async def test_a_crash_after_an_orderly_reboot_is_still_reported(node: tuple[Path, Path]) -> None:
    root, state = node
    agent, _ = await booted(root, state, OLD_BOOT)
    agent.mark_orderly()
    # Debian / Ubuntu kdump-tools layout
    lay_out(root, {"/var/crash/202612011652/dmesg.202612011652": real("null/vmcore-dmesg.txt")})
    _, report = await booted(root, state, NEW_BOOT)
    assert report is not None
    assert report.unexpected is False
    assert [(e.source, e.backend) for e in report.evidence] == [("kdump", "kdump-tools")]


async def test_an_unexpected_reboot_without_evidence_is_reported_with_the_journal(
    node: tuple[Path, Path], tmp_path: Path
) -> None:
    root, state = node
    # journalctl stand-in: prints the previous boot's kernel messages for `-b <boot id without dashes>`
    journal = tmp_path / "journalctl"
    lines = real("hung/pstore/dmesg-ramoops-0").decode().splitlines()[1:]
    (tmp_path / "journal.txt").write_text("\n".join(line.split("] ", 1)[-1] for line in lines) + "\n")
    journal.write_text(
        "#!/bin/sh\n"
        f'[ "$3" = "{OLD_BOOT.replace("-", "")}" ] || {{ echo "no boot $3" >&2; exit 1; }}\n'
        f'tail -n "$8" {tmp_path / "journal.txt"}\n'
    )
    journal.chmod(journal.stat().st_mode | stat.S_IEXEC)
    await booted(root, state, OLD_BOOT, journal_command=[str(journal)])
    _, report = await booted(root, state, NEW_BOOT, journal_command=[str(journal)])
    assert report is not None and report.unexpected
    assert [e.source for e in report.evidence] == ["journal"]
    assert any("INFO: task init:" in line and "blocked for more than" in line for line in report.evidence[0].lines)


async def test_the_report_stays_within_its_byte_bound(node: tuple[Path, Path]) -> None:
    root, state = node
    await booted(root, state, OLD_BOOT)
    lay_out(
        root,
        {
            "/sys/fs/pstore/dmesg-ramoops-0": real("null-2/pstore/dmesg-ramoops-0"),
            "/sys/fs/pstore/dmesg-ramoops-1": real("null-2/pstore/dmesg-ramoops-1"),
            "/var/crash/127.0.0.1-2026-12-01-16:52:10/vmcore-dmesg.txt": real("null/vmcore-dmesg.txt"),
        },
    )
    _, report = await booted(root, state, NEW_BOOT, max_bytes=16 * 1024)
    assert report is not None
    assert len(report.to_json()) <= 16 * 1024
    assert len(report.evidence) == 3  # every source kept, each with its newest lines
    last = {
        real(f).decode().splitlines()[-1] for f in ("null-2/pstore/dmesg-ramoops-0", "null-2/pstore/dmesg-ramoops-1")
    }
    last.add(real("null/vmcore-dmesg.txt").decode().splitlines()[-1])
    assert {e.lines[-1] for e in report.evidence} == last  # the newest lines are the ones kept
    assert all(e.lines_dropped > 0 for e in report.evidence)
    assert CrashReport.model_validate_json(report.to_json()) == report


async def test_stale_evidence_is_not_reported(node: tuple[Path, Path]) -> None:
    root, state = node
    await booted(root, state, OLD_BOOT)
    lay_out(root, {"/var/crash/127.0.0.1-2025-01-01-00:00:00/vmcore-dmesg.txt": real("null/vmcore-dmesg.txt")})
    path = root / "var/crash/127.0.0.1-2025-01-01-00:00:00/vmcore-dmesg.txt"
    os.utime(path, (1_735_689_600, 1_735_689_600))  # 2025-01-01: older than the look-back
    _, report = await booted(root, state, NEW_BOOT)
    assert report is not None and report.evidence == ()  # unexpected, but the old dump is not this crash
    assert json.loads((state / "crash-state.json").read_text())["previous_boot_id"] == OLD_BOOT


# -- the diagnoser's side: the same real bytes classified and bucketed -------------------------------


async def _report_of(tmp_path: Path, case: str, boot: str) -> CrashReport:
    root, state = tmp_path / case / "root", tmp_path / case / "state"
    root.mkdir(parents=True)
    state.mkdir()
    await booted(root, state, OLD_BOOT)
    files = {f"/sys/fs/pstore/{p.name}": p.read_bytes() for p in sorted((DATA / case / "pstore").iterdir())}
    if (DATA / case / "vmcore-dmesg.txt").exists():
        files["/var/crash/127.0.0.1-2026-12-01-16:52:10/vmcore-dmesg.txt"] = real(f"{case}/vmcore-dmesg.txt")
    lay_out(root, files)
    _, report = await booted(root, state, boot)
    assert report is not None
    return report


async def test_real_crashes_land_in_their_class_and_bucket(tmp_path: Path) -> None:
    matcher = default_matcher()
    verdicts = {
        case: classify(await _report_of(tmp_path, case, NEW_BOOT), matcher)
        for case in ("null", "null-2", "softlockup", "hung")
    }
    assert {c: v.cls for c, v in verdicts.items()} == {
        "null": "kernel_oops_null_deref",
        "null-2": "kernel_oops_null_deref",
        "softlockup": "soft_lockup",
        "hung": "hung_task",
    }
    assert verdicts["null"].signature is not None and verdicts["null"].signature.rip_func == "nodeheal_null_deref"
    assert verdicts["null"].signature.module == "nodeheal_crash"
    assert bucket_key(verdicts["null"]) == bucket_key(verdicts["null-2"])  # another boot, other addresses
    assert len({bucket_key(verdicts[c]) for c in ("null", "softlockup", "hung")}) == 3


def test_a_bucket_record_counts_each_boot_once() -> None:
    report = CrashReport(cluster="c", node="n1", boot_id="b1", unexpected=True)
    verdict = classify(report, default_matcher())
    assert verdict.cls is None and bucket_key(verdict) == "unexplained"
    from datetime import UTC, datetime

    at = datetime(2026, 12, 1, tzinfo=UTC)
    first = update_record(None, verdict, kernel="6.1.0-57-cloud-amd64", at=at)
    assert first is not None and first["count"] == 1
    assert update_record(first, verdict, kernel=None, at=at) is None  # a redelivery of the same boot
    other = CrashReport(cluster="c", node="n2", boot_id="b9", unexpected=True)
    second = update_record(first, classify(other, default_matcher()), kernel="6.1.0-58-cloud-amd64", at=at)
    assert second is not None
    assert (second["count"], second["node_count"], second["kernels"]) == (
        2,
        2,
        ["6.1.0-57-cloud-amd64", "6.1.0-58-cloud-amd64"],
    )


async def test_an_efi_dump_in_parts_is_one_evidence_and_reported_once(node: tuple[Path, Path]) -> None:
    root, state = node
    await booted(root, state, OLD_BOOT)
    lines = real("softlockup/pstore/dmesg-ramoops-0").decode().splitlines()[1:]
    head, tail = lines[: len(lines) // 2], lines[len(lines) // 2 :]
    lay_out(
        root,
        {
            "/sys/fs/pstore/dmesg-efi-171234567801001": "\n".join(["Panic#1 Part1", *tail]).encode(),
            "/sys/fs/pstore/dmesg-efi-171234567802001": "\n".join(["Panic#1 Part2", *head]).encode(),
        },
    )
    agent, report = await booted(root, state, NEW_BOOT, max_lines=MAX_CRASH_LINES)
    assert report is not None
    assert [(e.backend, e.record) for e in report.evidence] == [("efi", "Panic#1 Part1")]
    assert list(report.evidence[0].lines) == lines[-MAX_CRASH_LINES:]
    agent.reported(report)
    _, later = await booted(root, state, "5b0e2f7d-9a41-4c3e-8d6f-1e2a3b4c5d6e")  # crashed again, no new dump
    assert later is not None and later.evidence == ()  # the old parts are remembered, file by file


async def test_a_default_kdump_without_panic_line_buckets_with_the_pstore_oops(tmp_path: Path) -> None:
    """kdump's default (no crash_kexec_post_notifiers): the oops goes straight to the capture kernel,
    vmcore-dmesg.txt ends at the oops with no panic line and pstore stays empty."""
    root, state = tmp_path / "root", tmp_path / "state"
    root.mkdir()
    state.mkdir()
    await booted(root, state, OLD_BOOT)
    text = real("null-kdump-default/vmcore-dmesg.txt")
    assert b"Kernel panic" not in text
    lay_out(root, {"/var/crash/127.0.0.1-2026-12-01-17:55:02/vmcore-dmesg.txt": text})
    _, report = await booted(root, state, NEW_BOOT)
    assert report is not None and [e.source for e in report.evidence] == ["kdump"]
    matcher = default_matcher()
    verdict = classify(report, matcher)
    assert verdict.cls == "kernel_oops_null_deref"
    pstore = classify(await _report_of(tmp_path / "p", "null", NEW_BOOT), matcher)
    assert bucket_key(verdict) == bucket_key(pstore)
