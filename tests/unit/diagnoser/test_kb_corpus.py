"""The knowledge base on the real corpus of tests/data/kb (public bug-tracker excerpts, see its README).

`train` excerpts motivated rules: each must stay classified as labelled (but the few listed, with the
reason no rule was written). `test` excerpts were only used for judging; the whole corpus must stay at or
above 94.9 % (95 % before held-out round 16 was added).
"""

from __future__ import annotations

import hashlib
import json
import re
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from nodeheal.diagnoser.kb import analyse, default_matcher
from nodeheal.schemas.kernel import KERNEL_LOG_CLASSES

KB_DATA = Path(__file__).resolve().parents[2] / "data" / "kb"
ROWS = [json.loads(line) for line in (KB_DATA / "corpus.jsonl").read_text(encoding="utf-8").splitlines() if line]
BENIGN = [
    line
    for line in (KB_DATA / "benign.txt").read_text(encoding="utf-8").splitlines()
    if line and not line.startswith("#")
]


def primary(lines: list[str]) -> str | None:
    found = analyse(lines).primary
    return found.cls if found is not None else None


def test_the_corpus_is_large_sourced_and_covers_the_classes() -> None:
    assert len(ROWS) >= 150
    assert all(row["source"].startswith("https://") for row in ROWS)
    assert {row["split"] for row in ROWS} == {"train", "test"}
    counts = Counter(row["class"] for row in ROWS)
    assert set(counts) <= set(KERNEL_LOG_CLASSES)
    thin = {cls for cls in KERNEL_LOG_CLASSES if counts[cls] < 3}
    assert not thin
    assert {row["locale"] for row in ROWS} >= {"en", "zh_CN", "ru_RU"}


def test_the_fresh_round_is_split_by_url_hash() -> None:
    """Round 3 was committed before any rule saw it; its split is the URL hash, half held out (README; its
    mailing-list excerpts were removed, tests/data/README.md "Provenance")."""
    fresh = [row for row in ROWS if row.get("round") == 3]
    assert len(fresh) >= 25
    for row in fresh:
        held_out = int(hashlib.sha1(row["source"].encode()).hexdigest(), 16) % 10 < 5
        assert row["split"] == ("test" if held_out else "train"), row["id"]


def test_the_later_rounds_are_held_out_whole_and_from_new_sources() -> None:
    """Round 5 was committed after the code it judges and is all `test`; no source repeats (round 4, all
    mailing-list excerpts, was removed: tests/data/README.md "Provenance")."""
    assert not [row for row in ROWS if row.get("round") == 4]
    for round_, least in ((5, 15),):
        rows = [row for row in ROWS if row.get("round") == round_]
        assert len(rows) >= least
        assert all(row["split"] == "test" for row in rows)
    late = {row["source"] for row in ROWS if row.get("round") == 5}
    assert not late & {row["source"] for row in ROWS if row.get("round") != 5}


def _thread(url: str) -> str:
    """A GitHub issue/PR thread without its comment anchor; any other URL as it is."""
    return re.sub(r"(github\.com/[^/]+/[^/]+/(?:issues|pull)/\d+).*", r"\1", url)


@pytest.mark.parametrize("round_", [6, 8, 10])
def test_late_round_sources_are_not_those_of_the_older_labelled_samples(round_: int) -> None:
    """Rounds 6, 8 and 10 are evidence beyond the samples the rules were first written from (README; 15 excerpts
    of rounds 1-5 share a thread with a sample and are kept as they were measured)."""
    samples = KB_DATA.parent / "kernel-log-samples.jsonl"
    sources = {_thread(json.loads(line)["source"]) for line in samples.read_text(encoding="utf-8").splitlines() if line}
    assert not sources & {_thread(row["source"]) for row in ROWS if row.get("round") == round_}


def test_round_9_is_held_out_whole_from_new_sources() -> None:
    """Round 9 (README) was committed after the round-8 rules were final and is all `test`; it quotes no
    thread of the other rounds, the samples or the benign list."""
    fresh = [row for row in ROWS if row.get("round") == 9]
    assert len(fresh) >= 4  # 13 mailing-list excerpts removed (tests/data/README.md "Provenance")
    assert all(row["split"] == "test" for row in fresh)
    older = {_thread(row["source"]) for row in ROWS if row.get("round") != 9}
    samples = KB_DATA.parent / "kernel-log-samples.jsonl"
    older |= {_thread(json.loads(line)["source"]) for line in samples.read_text(encoding="utf-8").splitlines() if line}
    older |= {_thread(url) for url in re.findall(r"https?://\S+", (KB_DATA / "benign.txt").read_text(encoding="utf-8"))}
    threads = [_thread(row["source"]) for row in fresh]
    assert len(set(threads)) == len(threads)
    assert not set(threads) & older


def test_round_8_is_new_sources_split_by_url_hash() -> None:
    """Round 8 (README) quotes no thread of the other rounds or of the benign list, and its split is the URL
    hash, half held out, fixed when it was committed."""
    fresh = [row for row in ROWS if row.get("round") == 8]
    assert len(fresh) >= 30  # 11 mailing-list excerpts removed (tests/data/README.md "Provenance")
    older = {_thread(row["source"]) for row in ROWS if row.get("round") != 8}
    benign = {_thread(url) for url in re.findall(r"https?://\S+", (KB_DATA / "benign.txt").read_text(encoding="utf-8"))}
    threads = [_thread(row["source"]) for row in fresh]
    assert len(set(threads)) == len(threads)
    assert not set(threads) & (older | benign)
    for row in fresh:
        held_out = int(hashlib.sha1(row["source"].encode()).hexdigest(), 16) % 10 < 5
        assert row["split"] == ("test" if held_out else "train"), row["id"]


def test_round_10_is_new_sources_split_by_url_hash() -> None:
    """Round 10 (README) quotes no thread of the other rounds, the samples or the benign list, and its split is
    the URL hash, half held out, fixed when it was committed (held-out half first, e8d0dde)."""
    fresh = [row for row in ROWS if row.get("round") == 10]
    assert len(fresh) >= 30
    older = {_thread(row["source"]) for row in ROWS if row.get("round") != 10}
    samples = KB_DATA.parent / "kernel-log-samples.jsonl"
    older |= {_thread(json.loads(line)["source"]) for line in samples.read_text(encoding="utf-8").splitlines() if line}
    older |= {_thread(url) for url in re.findall(r"https?://\S+", (KB_DATA / "benign.txt").read_text(encoding="utf-8"))}
    threads = [_thread(row["source"]) for row in fresh]
    assert len(set(threads)) == len(threads)
    assert not set(threads) & older
    for row in fresh:
        held_out = int(hashlib.sha1(row["source"].encode()).hexdigest(), 16) % 10 < 5
        assert row["split"] == ("test" if held_out else "train"), row["id"]


def test_round_11_is_held_out_whole_from_new_sources() -> None:
    """Round 11 (README) was committed after the emitter rules were final and is all `test`; it quotes no thread
    of the other rounds, the samples or the benign list."""
    fresh = [row for row in ROWS if row.get("round") == 11]
    assert len(fresh) >= 20
    assert all(row["split"] == "test" for row in fresh)
    older = {_thread(row["source"]) for row in ROWS if row.get("round") != 11}
    samples = KB_DATA.parent / "kernel-log-samples.jsonl"
    older |= {_thread(json.loads(line)["source"]) for line in samples.read_text(encoding="utf-8").splitlines() if line}
    older |= {_thread(url) for url in re.findall(r"https?://\S+", (KB_DATA / "benign.txt").read_text(encoding="utf-8"))}
    threads = [_thread(row["source"]) for row in fresh]
    assert len(set(threads)) == len(threads)
    assert not set(threads) & older


# A thread a fresh round shares with a later look-alike or rule, and why its single measurement still holds.
FOUND_TWICE = {
    # branch kb11, written in parallel with round 14's collection and merged before it (neither saw the other),
    # quotes the first line of kb-573 (the image GC starting above its threshold) in benign.txt as a look-alike
    "kb-573": "https://github.com/k3s-io/k3s/issues/796",
}


def _fresh_round(round_: int) -> list[dict[str, Any]]:
    """A fresh round's rows, checked held out whole: all `test`, each from its own thread, and no thread of the
    other rounds, the older samples, the benign list or the rules file (but those of `FOUND_TWICE`)."""
    fresh = [row for row in ROWS if row.get("round") == round_]
    assert len(fresh) >= 30
    assert all(row["split"] == "test" for row in fresh)
    older = {_thread(row["source"]) for row in ROWS if row.get("round") != round_}
    samples = KB_DATA.parent / "kernel-log-samples.jsonl"
    older |= {_thread(json.loads(line)["source"]) for line in samples.read_text(encoding="utf-8").splitlines() if line}
    older |= {_thread(url) for url in re.findall(r"https?://\S+", (KB_DATA / "benign.txt").read_text(encoding="utf-8"))}
    rules = Path(__file__).resolve().parents[3] / "services/diagnoser/src/nodeheal/diagnoser/kb/rules.yaml"
    older |= {_thread(url) for url in re.findall(r"https?://[^\s'\"]+", rules.read_text(encoding="utf-8"))}
    threads = [_thread(row["source"]) for row in fresh]
    assert len(set(threads)) == len(threads)
    twice = {_thread(url) for row_id, url in FOUND_TWICE.items() if any(row["id"] == row_id for row in fresh)}
    assert set(threads) & older == twice
    return fresh


def test_round_12_is_held_out_whole_from_new_sources() -> None:
    """Round 12 (README) was committed after the cross-line shutdown run was final."""
    fresh = _fresh_round(12)
    assert sum(row["class"] == "planned_shutdown_reboot" for row in fresh) >= 8


def test_round_13_is_held_out_whole_from_new_sources() -> None:
    """Round 13 (README) was committed after the kb9 emitter rules were final, weighted to the two weak classes."""
    fresh = _fresh_round(13)
    assert sum(row["class"] == "planned_shutdown_reboot" for row in fresh) >= 8
    assert sum(row["class"] == "container_runtime_down" for row in fresh) >= 6


def test_round_14_is_held_out_whole_from_new_sources() -> None:
    """Round 14 (README) was committed before any code ran on it, for issue #18's single untouched measurement; it also
    quotes no source of the same-bug sets, and is weighted to the weak classes."""
    fresh = _fresh_round(14)
    same_bug = "".join(path.read_text(encoding="utf-8") for path in sorted(KB_DATA.glob("*_same_bug.jsonl")))
    assert not {_thread(row["source"]) for row in fresh} & {
        _thread(url) for url in re.findall(r"https?://[^\s'\"]+", same_bug)
    }
    assert sum(row["class"] == "planned_shutdown_reboot" for row in fresh) >= 5
    assert sum(row["class"] == "container_runtime_down" for row in fresh) >= 6


def test_round_15_is_held_out_whole_from_new_sources() -> None:
    """Round 15 (README) was committed before any code ran on it, for a second single untouched measurement of
    issue #18; it quotes no source of the same-bug sets, takes both weak classes at least five times, and spreads
    over most classes rather than piling on a few."""
    fresh = _fresh_round(15)
    same_bug = "".join(path.read_text(encoding="utf-8") for path in sorted(KB_DATA.glob("*_same_bug.jsonl")))
    assert not {_thread(row["source"]) for row in fresh} & {
        _thread(url) for url in re.findall(r"https?://[^\s'\"]+", same_bug)
    }
    counts = Counter(row["class"] for row in fresh)
    assert counts["planned_shutdown_reboot"] >= 5
    assert counts["container_runtime_down"] >= 5
    assert len(counts) >= 20
    assert {row["locale"] for row in fresh} >= {"en", "zh_CN", "ko_KR"}


def test_round_16_is_held_out_whole_from_new_sources() -> None:
    """Round 16 (README) was committed before any code ran on it, for a third single untouched measurement of issue
    #18; it quotes no source of the same-bug sets and spreads over the classes a fleet meets (21 of the 28)."""
    fresh = _fresh_round(16)
    same_bug = "".join(path.read_text(encoding="utf-8") for path in sorted(KB_DATA.glob("*_same_bug.jsonl")))
    assert not {_thread(row["source"]) for row in fresh} & {
        _thread(url) for url in re.findall(r"https?://[^\s'\"]+", same_bug)
    }
    counts = Counter(row["class"] for row in fresh)
    assert counts["planned_shutdown_reboot"] >= 5
    assert counts["container_runtime_down"] >= 4
    assert len(counts) >= 20
    assert {row["locale"] for row in fresh} >= {"en", "zh_CN", "ja_JP"}


def test_round_17_is_new_sources_split_by_url_hash() -> None:
    """Round 17 (README) was committed before any code ran on it, for a fourth single untouched measurement of issue
    #18; unlike rounds 11-16 it is split by the field table's URL hash (three tenths held out), fixed when committed,
    and it quotes no thread of the other rounds, the samples, the benign list, the same-bug sets or the rules file."""
    fresh = [row for row in ROWS if row.get("round") == 17]
    assert len(fresh) == 40
    for row in fresh:
        held_out = int(hashlib.sha1(row["source"].encode()).hexdigest(), 16) % 10 < 3
        assert row["split"] == ("test" if held_out else "train"), row["id"]
    older = {_thread(row["source"]) for row in ROWS if row.get("round") != 17}
    samples = KB_DATA.parent / "kernel-log-samples.jsonl"
    older |= {_thread(json.loads(line)["source"]) for line in samples.read_text(encoding="utf-8").splitlines() if line}
    older |= {_thread(url) for url in re.findall(r"https?://\S+", (KB_DATA / "benign.txt").read_text(encoding="utf-8"))}
    rules = Path(__file__).resolve().parents[3] / "services/diagnoser/src/nodeheal/diagnoser/kb/rules.yaml"
    older |= {_thread(url) for url in re.findall(r"https?://[^\s'\"]+", rules.read_text(encoding="utf-8"))}
    same_bug = "".join(path.read_text(encoding="utf-8") for path in sorted(KB_DATA.glob("*_same_bug.jsonl")))
    older |= {_thread(url) for url in re.findall(r"https?://[^\s'\"]+", same_bug)}
    threads = [_thread(row["source"]) for row in fresh]
    assert len(set(threads)) == len(threads)
    assert not set(threads) & older
    counts = Counter(row["class"] for row in fresh)
    assert counts["planned_shutdown_reboot"] >= 7
    assert len(counts) >= 23
    assert {row["locale"] for row in fresh} >= {"en", "zh_CN", "ja_JP"}


# Train excerpts no rule recognises, and why none was written (docs/BENCHMARKS.md).
KNOWN_TRAIN_MISSES = {
    "kb-350": "systemd's console while going down shows only units and targets an initrd switch-root stops too "
    "(a service, a socket, a torcx target); no line says the system is shutting down",
    "kb-289": "the only sign of a planned reboot is journalctl's '-- Reboot --' marker after a clean kubelet stop; "
    "a crash leaves the same marker, so it is no evidence of an orderly shutdown",
    # round 17 (split by URL hash; its train misses read after its single measurement, branch round17)
    "kb-682": "a BUG whose copy starts in the register dump after its header and ends with the panic it caused "
    "('Fatal exception in interrupt', printed after any oops in interrupt context): read as the panic",
    "kb-701": "the thread is containerd hanging, the copy only the kubelet's PLEG message in a sentence: read as PLEG",
    "kb-703": "PID 1 stopping a snap's service and the API server shutting down, which a snap refresh prints too",
    # (kb-706, a Talos stopServices phase, left this list on branch shut18: the phase is only in sequences that end in
    # a reboot or a power-off, ops.talos_stop_services_phase; kb-700, containerd's Go crash run by hand, on branch
    # crd19: its CRI store's frame under the panic header, runtime.go_crash_trace)
}


@pytest.mark.parametrize(
    "row", [r for r in ROWS if r["split"] == "train" and r["id"] not in KNOWN_TRAIN_MISSES], ids=lambda r: r["id"]
)
def test_train_excerpt_is_classified_as_labelled(row: dict) -> None:  # type: ignore[type-arg]
    assert primary(row["lines"]) == row["class"], row["source"]


@pytest.mark.parametrize("excerpt", sorted(KNOWN_TRAIN_MISSES))
def test_known_train_misses_are_still_missed(excerpt: str) -> None:
    """If a rule starts recognising one, it leaves this list (and the benchmark's miss count drops)."""
    row = next(r for r in ROWS if r["id"] == excerpt)
    assert row["split"] == "train"
    assert primary(row["lines"]) != row["class"]


def test_whole_corpus_accuracy_does_not_regress() -> None:
    right = sum(primary(row["lines"]) == row["class"] for row in ROWS)
    # the 95 %: round 16 (held out, measured once at 26/40, docs/BENCHMARKS.md) took it to 561/591 (94.9 %)
    # on its branch; with kb13's rules merged (written without sight of round 16) it is 565/591 (95.6 %), and 572/591
    # with branches kb14a's and kb14b's rules (written from round 16's misses after its measurement; kb-637 relabelled);
    # round 17 (split by URL hash, measured once at 27/40) took it to 599/631 (94.9 %) on its branch, and its train
    # rules (XFS's 5.15+ shutdown reason, Talos's shutdown sequences) to 602/631 (95.4 %)
    assert right / len(ROWS) >= 0.95, f"{right}/{len(ROWS)}"


@pytest.mark.parametrize("line", BENIGN)
def test_benign_line_is_not_a_finding(line: str) -> None:
    assert default_matcher().match_line(line) is None


@pytest.mark.parametrize(
    ("excerpt", "needle", "cls"),
    [
        ("kb-306", "The system will reboot now!", "planned_shutdown_reboot"),  # logind's wall message, bare
        ("kb-306", "System userspace is rebooting.", "planned_shutdown_reboot"),  # soft-reboot
        ("kb-309", "Watchdog CPU:59 Hard LOCKUP", "hard_lockup"),  # ppc64's watchdog wording
        ("kb-198", "PANIC:", "vmcore_crash_sys_summary"),  # a `sys` block quoted '>> ' in a mail (round 2)
        ("kb-287", "PANIC:", "vmcore_crash_sys_summary"),  # a page's '<< panic message' annotation (round 3)
        ("kb-359", "Oops - BUG: 00000000f2000800 [#1]", "kernel_bug"),  # arm64's BUG() header (round 7)
        ("kb-367", "Oops: Machine check, sig: 7", "mce_fatal_panic"),  # ppc64 machine-check oops (round 7)
        # branch kb10: emitter rules whose real test lines are held-out misses (docs/BENCHMARKS.md, branch kb10)
        ("kb-201", "docker.socket: Control process exited", "container_runtime_down"),  # systemd socket.c
        ("kb-534", "GenericPLEG: Unable to retrieve pods", "container_runtime_down"),  # kubelet 1.4, hung dockerd
        ("kb-534", "Error listing containers: dockertools", "container_runtime_down"),  # kubelet.go HandlePodCleanups
        ("kb-537", "docker.service operation timed out", "container_runtime_down"),  # systemd 208 service.c
        ("kb-392", "divide error: 0000", "kernel_oops_divide_error"),  # 2.4 die(), no oops counter (round 8)
        ("kb-546", "Division by zero in kernel.", "kernel_oops_divide_error"),  # ARM __div0() (round 13)
        # branch kbshut: upstart's scheduled-shutdown wall message quoted in a sentence (round 11)
        ("kb-475", "going down for reboot in 3 minutes!", "planned_shutdown_reboot"),
        # branch kbshut: mkinitcpio's shutdown-ramfs unit, which only halt/kexec/poweroff/reboot.target want (round 8)
        ("kb-408", "Finished Generate shutdown-ramfs.", "planned_shutdown_reboot"),
        ("kb-408", "mkinitcpio-generate-shutdown-ramfs.service: Deactivated", "planned_shutdown_reboot"),
        # branch kb12: round 14's runtime misses and its one precision loss, read after its single measurement
        ("kb-559", "Failed to connect to containerd: failed to dial", "container_runtime_down"),  # moby 18.x
        ("kb-572", "ExecStart=/usr/lib/coreos/dockerd", "container_runtime_down"),  # CoreOS's wrapper, exited
        ("kb-585", "Dependency failed for Docker Application Container Engine.", "container_runtime_down"),  # job.c
        ("kb-574", "Machine Check Exception: 4 Bank 4: f6", "mce_fatal_panic"),  # print_mce(), PCC set
        # branch kbshut3: round 15's OpenWrt sysupgrade consoles, read after its single measurement (stage2's
        # kill_remaining(), run under procd's upgraded, which reboots whatever stage2 returns)
        ("kb-616", "upgrade: Sending KILL to remaining processes ...", "planned_shutdown_reboot"),
        ("kb-617", "upgrade: Sending TERM to remaining processes ...", "planned_shutdown_reboot"),
        # branch kb13: round 15's misses of three more classes and its one precision loss, read after its single
        # measurement (systemd job.c for the kubelet's unit, the 6.9+ x86 die header, the kubelet's runtimeErrors)
        ("kb-605", "Dependency failed for Kubernetes Kubelet.", "kubelet_down"),  # job.c JOB_DEPENDENCY
        ("kb-605", "Job kubelet.service/start failed with result 'dependency'.", "kubelet_down"),  # job.c notice
        ("kb-610", "Oops: general protection fault, prob=", "kernel_oops_gpf"),  # __die_header(), cut by a mailer
        ("kb-620", "[container runtime is down PLEG is not healthy", "container_runtime_down"),  # runtime.go
        # branch kb14a: round 16's service-side misses, read after its single measurement (the kubelet's fatal exit
        # in server.go, Tectonic's bootstrapper before its reboot; kb-659's `systemctl status` block is a `blocks:`
        # entry, checked in test_kb_emitters_kb14a.py)
        ("kb-660", "] failed to run Kubelet: failed to create kubelet", "kubelet_down"),  # klog.Fatal of Run()'s error
        ("kb-669", "node updated, triggering reboot to apply changes", "planned_shutdown_reboot"),  # tectonic-torcx
        # branch kb14b: round 16's kernel-side misses, read after its single measurement (fs/xfs/xfs_log.c, the
        # message of net/core/dev.c's netdev_wait_allrefs() quoted without its usage count)
        ("kb-640", "unregister_netdevice: waiting for eth0 to become free.", "unregister_netdevice"),
        ("kb-645", "XFS (sdb6): log I/O error -5", "xfs_error"),  # xlog_ioend_work()
        ("kb-645", "Filesystem has been shut down due to log error (0x2).", "xfs_error"),  # xlog_force_shutdown()
        ("kb-646", "XFS (dm-0): xfs_log_force: error -5 returned.", "xfs_error"),  # xfs_log_force(), log in IOERROR
        # branch shut18: round 16's kb-668 (the kubelet's 1.20/1.21 'Shutdown' pod reason as kubectl shows it) and
        # round 17's kb-708 (a Talos reboot sequence started after the one it took over failed; the veto reads only
        # below the start) and kb-709 (systemctl's debug line of its logind call)
        ("kb-668", "0/1     Shutdown   0          102s", "planned_shutdown_reboot"),
        ("kb-708", "[talos] reboot sequence: 11 phase(s)", "planned_shutdown_reboot"),
        ("kb-709", "Executing org.freedesktop.login1.Manager RebootWithFlags dbus call.", "planned_shutdown_reboot"),
    ],
)
def test_rules_from_spent_held_out_misses(excerpt: str, needle: str, cls: str) -> None:
    """Held-out excerpts whose round was already measured (docs/BENCHMARKS.md) and whose misses were then
    used as train material: round 5's two, two `sys` blocks of rounds 2-3 (spent since round 5), round 7's
    two (spent since round 8). Round 9's two misses came from removed mailing-list rows: their rules are
    checked on constructed lines below. Branch kb10 spent five more (kb-201 of the first rounds, round 8's
    kb-392, round 13's kb-534 / kb-537 / kb-546), branch kbshut two (round 8's kb-408, round 11's kb-475),
    branch kb12 four of round 14 (kb-559, kb-572, kb-585, kb-574), branch kbshut3 two of round 15 (kb-616, kb-617),
    branch kb13 three more of round 15 (kb-605, kb-610, kb-620), branch kb14a two of round 16 (kb-660, kb-669; with
    kb-659 through a block), branch kb14b three of round 16 (kb-640, kb-645, kb-646), branch shut18 one of round
    16 (kb-668) and two of round 17 (kb-708, kb-709; tests/data/kb/README.md "Spent.")."""
    row = next(r for r in ROWS if r["id"] == excerpt)
    assert row["split"] == "test" and row.get("round") in {None, 3, 5, 7, 8, 9, 11, 13, 14, 15, 16, 17}
    line = next(line for line in row["lines"] if needle in line)
    finding = default_matcher().match_line(line)
    assert finding is not None and finding.cls == cls, line


@pytest.mark.parametrize(
    ("excerpt", "needle", "cls"),
    [
        ("kb-003", "main process exited", "kubelet_down"),  # CentOS 7 systemd 219: 'main process exited'
        ("kb-001", "ExecStart=/usr/bin/kubelet", "kubelet_down"),  # `systemctl status`: the ExecStart process line
        ("kb-094", "[ERROR CRI]", "container_runtime_down"),  # kubeadm: CRI socket missing
        ("kb-097", "cri-containerd.sock", "container_runtime_down"),  # kubelet: cri-containerd.sock connection refused
        ("kb-069", "Internal error: Oops", "kernel_oops_null_deref"),  # arm64 'Internal error: Oops:'
        (
            "kb-081",
            "Unable to handle kernel NULL",
            "kernel_oops_null_deref",
        ),  # arm 'Unable to handle kernel NULL pointer dereference'
        (
            "kb-070",
            "Oops: general protection fault",
            "kernel_oops_gpf",
        ),  # 6.10 'Oops: general protection fault, maybe for address'
        ("kb-105", " exc_divide_error+", "kernel_oops_divide_error"),  # header-less copy: exc_divide_error frame
        ("kb-122", "CE row 1", "edac_memory_ce"),  # old EDAC 'CE row 1, channel 0'
        ("kb-111", "CPU context corrupt", "mce_fatal_panic"),  # 2.6 'Kernel panic: CPU context corrupt'
        (
            "kb-016",
            "killed as a result of limit",
            "oom_killer",
        ),  # memcg 'Task in /kubepods.slice/... killed as a result of limit'
        ("kb-015", "mem_cgroup_out_of_memory+", "oom_killer"),  # OOM report without its Killed line
        ("kb-147", "lockup - CPU#4", "soft_lockup"),  # a soft-lockup line wrapped after 'BUG: soft'
        ("kb-113", "Detected aborted journal", "ext4_readonly_remount"),  # 'Detected aborted journal'
        ("kb-049", "XFS: Internal error", "xfs_error"),  # 2.6.32 'XFS: Internal error'
        ("kb-172", "handle kernel NULL", "kernel_oops_null_deref"),  # a BUG line wrapped in an e-mail quote
        ("kb-009", "soft lockup. - CPU#7", "soft_lockup"),  # 'soft lockup.' punctuation, '-[comm:pid]'
        ("kb-150", "expedited stalls", "rcu_stall"),  # expedited RCU stall without 'INFO:'
        ("kb-146", "Oops: Oops:", "kernel_oops_null_deref"),  # 6.9+ doubled 'Oops:' with no BUG line
        ("kb-116", "Journal has aborted", "ext4_readonly_remount"),  # aborted journal, 'in func:line' form
        ("kb-051", "log mount/recovery failed", "xfs_error"),  # XFS log recovery failure (Talos)
        ("kb-138", "UID 1000, total-vm", "oom_killer"),  # 'Killed process N (x), UID N,'
        ("kb-017", "OOMController", "oom_killer"),  # Talos' user-space OOM controller
        ("kb-122", "sbridge: HANDLING", "edac_memory_ce"),  # sbridge without the EDAC prefix
        ("kb-095", "from runtime service failed", "container_runtime_down"),  # microk8s: CRI unavailable
        ("kb-185", "main process exited", "container_runtime_down"),  # CentOS 7 systemd 219, zh_CN journal
        ("kb-186", "entered failed state", "container_runtime_down"),  # systemd 219: 'Unit docker.service entered…'
        ("kb-186", "docker.service failed.", "container_runtime_down"),  # systemd 219: 'docker.service failed.'
        ("kb-188", "Cannot connect to the Docker daemon", "container_runtime_down"),  # kubelet event, dead dockerd
        ("kb-189", "Cannot connect to the Docker daemon", "container_runtime_down"),  # kubelet ImageStatus, dockerd
        ("kb-190", "Info() call to the Docker client", "container_runtime_down"),  # old Go dial error, no 'connect:'
        ("kb-191", "Failed to create kubelet", "container_runtime_down"),  # kubelet start-up, docker.sock refused
        ("kb-199", "ExecStart=/usr/bin/dockerd-current", "container_runtime_down"),  # `systemctl status`, cut line
        ("kb-210", "error count since last fsck", "ext4_error"),  # ext4's periodic superblock error report
        ("kb-214", "page allocation failure. order:2", "page_allocation_failure"),  # 2.6.32 'failure. order:'
        ("kb-216", "page allocation failure. order:9", "page_allocation_failure"),  # RHEL 5 era, same period
        ("kb-288", "kernel: Machine check events logged", "mce_hardware_error"),  # pre-4.x, no 'mce:' prefix
        ("kb-232", "Corrected error(s): memory read error at", "edac_memory_ce"),  # rasdaemon's stored record
        ("kb-281", "Eviction manager: attempting to reclaim", "disk_full_eviction"),  # structured kubelet log
        ("kb-334", "kB, failcnt", "oom_killer"),  # memcg OOM report cut to its usage/limit lines
        ("kb-342", "bank Unified Memory Controller", "edac_memory_ce"),  # rasdaemon's AMD UMC CECC record
        ("kb-345", "jiffies g=", "rcu_stall"),  # stall report without its header: the '(t=… jiffies g=…)' line
        ("kb-349", "Stopped target Graphical Interface", "planned_shutdown_reboot"),  # console, 'shutdown -r'
        ("kb-369", "VPS xxx table full", "conntrack_full"),  # OpenVZ's per-container conntrack wording (round 8)
        ("kb-371", "Oops - BUG: 0", "kernel_bug"),  # arm's die() header for a BUG() (round 8)
        ("kb-371", "verbose debug info unavailable", "kernel_bug"),  # BUG without file:line (round 8)
        ("kb-381", "BUG: soft lockup - CPU#0", "soft_lockup"),  # pre-3.10 header, no 'watchdog:' (round 8)
        ("kb-383", "MC2_STATUS[", "mce_hardware_error"),  # AMD decoded MCE without its header (round 8)
        ("kb-383", "Corrected error, no action required", "mce_hardware_error"),  # its closing line (round 8)
        ("kb-406", "Show Plymouth Reboot Screen", "planned_shutdown_reboot"),  # plymouth-reboot.service (round 8)
        ("kb-407", "Shutdown manager killing pod", "planned_shutdown_reboot"),  # kubelet graceful shutdown (round 8)
        ("kb-446", "low on resource: [DiskPressure]", "disk_full_eviction"),  # k8s 1.7's pod message (round 10)
        ("kb-447", "systemd-shutdown[1]: All filesystems", "planned_shutdown_reboot"),  # last stage (round 10)
        ("kb-448", "Permit User Sessions", "planned_shutdown_reboot"),  # user sessions stopped (round 10)
        ("kb-449", "reboot: Restarting system", "planned_shutdown_reboot"),  # the kernel's restart line (round 10)
        ("kb-459", "Reached target Power-Off", "planned_shutdown_reboot"),  # PID 1's final target (round 10)
        ("kb-459", "systemd[1]: Shutting down.", "planned_shutdown_reboot"),  # PID 1 exits (round 10)
        ("kb-460", "Stopping Getty on tty1", "planned_shutdown_reboot"),  # a getty's stop job, fr_FR journal (round 10)
        ("kb-461", "reduce imagefs pressure", "disk_full_eviction"),  # the eviction manager's failed reclaim (round 10)
    ],
)
def test_each_new_rule_on_the_real_line_that_motivated_it(excerpt: str, needle: str, cls: str) -> None:
    row = next(r for r in ROWS if r["id"] == excerpt)
    assert row["split"] == "train"
    line = next(line for line in row["lines"] if needle in line)
    finding = default_matcher().match_line(line)
    assert finding is not None and finding.cls == cls, line


# The excerpts that motivated these rules were removed with the mailing-list data (tests/data/README.md
# "Provenance"); each rule is checked on a line constructed here in the kernel's own format (made-up values).
@pytest.mark.parametrize(
    ("line", "cls"),
    [
        # constructed: igen6 (in-band ECC on Intel client SoCs)
        ("[  211.504318] EDAC igen6 MC0: HANDLING IBECC MEMORY ERROR", "edac_memory_ce"),
        # constructed: amd64_edac's corrected error it cannot map to a DIMM (two value shapes)
        (
            "[ 9120.003417] EDAC MC0: 1 CE Cannot decode normalized address on mc#0csrow#2channel#1 (csrow:2 "
            "channel:1 page:0x0 offset:0x0 grain:64 syndrome:0x1c00)",
            "edac_memory_ce",
        ),
        (
            "EDAC MC1: 3 CE Cannot decode normalized address on mc#1csrow#0channel#0 (csrow:0 channel:0)",
            "edac_memory_ce",
        ),
        # constructed: a soft-lockup header whose '[comm:pid]' a mailer wrapped onto the next line
        ("[ 4410.772019] watchdog: BUG: soft lockup - CPU#5 stuck for 41s!", "soft_lockup"),
        # constructed: a board's power-off console (round 9's misses): systemd-shutdown, then the kernel
        ("[  873.120455] systemd-shutdown[1]: Powering off.", "planned_shutdown_reboot"),
        ("[  873.301977] reboot: Power down", "planned_shutdown_reboot"),
        # constructed: a GHES '[Hardware Error]' tag split over two quoted lines by a mailer (round 9)
        ("> Error]: Hardware error from APEI Generic Hardware Error Source: 1", "ghes_cper_hardware_error"),
        ("> Error]: event severity: corrected", "ghes_cper_hardware_error"),
    ],
)
def test_rules_whose_motivating_excerpt_was_removed_on_constructed_lines(line: str, cls: str) -> None:
    finding = default_matcher().match_line(line)
    assert finding is not None and finding.cls == cls, line
