"""Every labelled real sample is classified as labelled (one test per sample)."""

from __future__ import annotations

import pytest

from nodeheal.diagnoser.kb import analyse, default_matcher
from nodeheal.schemas.kernel import DEFAULT_CATEGORY, LOOKBACK_CLASSES
from tests.unit.diagnoser.scenarios import load_samples

SAMPLES = load_samples()


def test_the_sample_file_covers_every_class() -> None:
    assert {cls for _, cls, _ in SAMPLES} == set(DEFAULT_CATEGORY)


@pytest.mark.parametrize(("number", "label", "lines"), SAMPLES, ids=[f"{n}-{c}" for n, c, _ in SAMPLES])
def test_sample_is_classified_as_labelled(number: int, label: str, lines: list[str]) -> None:
    result = analyse(lines)
    assert result.primary is not None, f"sample #{number} ({label}): nothing matched"
    assert result.primary.cls == label, f"sample #{number}: {result.primary.cls} from {result.primary.line!r}"
    if label not in LOOKBACK_CLASSES:
        assert result.primary.category == DEFAULT_CATEGORY[label]


@pytest.mark.parametrize(("number", "label", "lines"), SAMPLES, ids=[f"{n}-{c}" for n, c, _ in SAMPLES])
def test_sample_lines_one_at_a_time_give_the_same_classes(number: int, label: str, lines: list[str]) -> None:
    """Lines arrive one probe at a time: matching must not depend on seeing the whole excerpt."""
    matcher = default_matcher()
    whole = [f.cls for f in analyse(lines).findings]
    single = [f.cls for line in lines if (f := matcher.match_line(line)) is not None]
    assert single == whole


@pytest.mark.parametrize(
    ("line", "cls"),
    [
        ("NMI watchdog: BUG: soft lockup - CPU#7 stuck for 23s! [java:1234]", "soft_lockup"),
        ("watchdog: BUG: soft lockup - CPU#7 stuck for 23s! [kworker/7:2:99]", "soft_lockup"),
        ("nf_conntrack: nf_conntrack: table full, dropping packet", "conntrack_full"),
        ("nf_conntrack: table full, dropping packet", "conntrack_full"),
        ("unregister_netdevice: waiting for eth0 to become free. Usage count = -1", "unregister_netdevice"),
        ("EDAC MC0: 4 CE error on CPU#0Channel#2_DIMM#0 (channel:2 slot:0 page:0x0)", "edac_memory_ce"),
        ("EDAC MC1: 1 CE memory scrubbing error on CPU_SrcID#1_Ha#0_Chan#0_DIMM#0 (channel:0)", "edac_memory_ce"),
        ("XFS (dm-11): Corruption of in-memory data detected.  Shutting down filesystem", "xfs_error"),
        ("XFS (sda1): Corruption of in-memory data detected. Shutting down filesystem.", "xfs_error"),
        ("INFO: task jbd2/sda4-8:363 blocked for more than 121 seconds.", "hung_task"),
        ("INFO: task airflow scheduler:77 blocked for more than 120 seconds.", "hung_task"),
        ("blk_update_request: I/O error, dev sdc, sector 1234", "nvme_disk_io_error"),
        ("print_req_error: critical medium error, dev sdn, sector 33928", "nvme_disk_io_error"),
        ("I/O error, dev sda, sector 2048 op 0x1:(WRITE) flags 0x800 phys_seg 1 prio class 0", "nvme_disk_io_error"),
        ("BUG: kernel NULL pointer dereference, address: 0000000000000008", "kernel_oops_null_deref"),
        ("rcu: INFO: rcu_sched self-detected stall on CPU", "rcu_stall"),
        ("Kernel panic - not syncing: Hard LOCKUP", "hard_lockup"),
        ("Kernel panic - not syncing: Fatal Machine check", "mce_fatal_panic"),
        ("Kernel panic - not syncing: Oops: Fatal exception", "kernel_panic"),
    ],
)
def test_wording_differences_across_kernel_versions(line: str, cls: str) -> None:
    finding = default_matcher().match_line(line)
    assert finding is not None and finding.cls == cls


@pytest.mark.parametrize(
    "line",
    [
        "EXT4-fs (sda1): mounted filesystem with ordered data mode. Opts: (null)",
        "Node node-1 status is now: NodeHasNoDiskPressure",
        "nvme nvme0: 8/0/0 default/read/poll queues",
        "kubelet.service: Succeeded.",
        "systemd[1]: Started Kubernetes kubelet.",
        "XFS (sda1): Mounting V5 Filesystem",
    ],
)
def test_benign_lines_are_not_findings(line: str) -> None:
    assert default_matcher().match_line(line) is None


def test_ext4_errors_after_io_errors_on_the_same_disk_are_hardware() -> None:
    lines = [
        "[ 10.0] nvme nvme0: I/O 12 QID 3 timeout, aborting",
        "[ 10.5] blk_update_request: I/O error, dev nvme0n1, sector 4096",
        "[ 11.0] EXT4-fs error (device nvme0n1p2): ext4_find_entry:1455: inode #2: comm ls: reading directory lblock 0",
    ]
    ext4 = [f for f in analyse(lines).findings if f.cls == "ext4_error"]
    assert ext4 and ext4[0].category == "hardware"


def test_ext4_errors_without_io_errors_or_on_another_disk_stay_kernel() -> None:
    alone = ["EXT4-fs error (device sda1): ext4_lookup:1607: inode #525615: comm x: deleted inode referenced: 5"]
    other = ["blk_update_request: I/O error, dev sdb, sector 1", *alone]
    after = [*alone, "blk_update_request: I/O error, dev sda, sector 1"]
    for lines in (alone, other, after):
        ext4 = [f for f in analyse(lines).findings if f.cls == "ext4_error"]
        assert ext4[0].category == "kernel", lines
