"""Rules written from the emitters' own format strings (docs/diagnoser.md, "Emitter format strings").

Each wording is checked on a real line where the corpus holds one (its excerpt id named), else on the
format string instantiated (marked `fmt`: the literal parts are the emitter's, the numbers are made up).
Look-alikes the same emitters print in normal operation are in tests/data/kb/benign.txt.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from nodeheal.detector.kernel import classify_line
from nodeheal.diagnoser.kb import default_matcher

KB_DATA = Path(__file__).resolve().parents[2] / "data" / "kb"
ROWS = {row["id"]: row for row in map(json.loads, (KB_DATA / "corpus.jsonl").read_text(encoding="utf-8").splitlines())}


def _real(excerpt: str, needle: str) -> str:
    return next(line for line in ROWS[excerpt]["lines"] if needle in line)


# (line, class, where it comes from); the detector pre-filter is checked only on node log lines that start a report
# (NOT_FOR_DETECTOR: `kubectl` / scheduler output and lines that only follow a header the detector already passes)
CASES = [
    # kubernetes: eviction manager's admission refusal (glog form), node condition, image GC failure
    (_real("kb-336", "node has conditions"), "disk_full_eviction", "kb-336"),
    (_real("kb-393", "KubeletHasDiskPressure"), "disk_full_eviction", "kb-393"),
    (_real("kb-443", "garbage collect required amount"), "disk_full_eviction", "kb-443"),
    (_real("kb-430", "had condition: [DiskPressure]"), "disk_full_eviction", "kb-430"),
    (
        'I0101 00:00:00.000000    1234 eviction_manager.go:159] "Failed to admit pod to node" pod="default/web-1" '
        "nodeCondition=[DiskPressure]",
        "disk_full_eviction",
        "fmt",
    ),
    ("The node was low on resource: nodefs. ", "disk_full_eviction", "fmt (k8s 1.6-1.7 resource name)"),
    (
        "The node was low on resource: inodes. Threshold quantity: 1000, available: 12. ",
        "disk_full_eviction",
        "fmt (pod)",
    ),
    (
        '"Eviction manager: able to reduce resource pressure without evicting pods." resourceName="ephemeral-storage"',
        "disk_full_eviction",
        "fmt",
    ),
    (
        'E0101 00:00:00.000000    1234 kubelet.go:1400] "Image garbage collection failed multiple times in a row" '
        'err="Failed to garbage collect required amount of images. Attempted to free 15152714547 bytes, but only found '
        '0 bytes eligible to free."',
        "disk_full_eviction",
        "fmt (1.29+)",
    ),
    (
        "0/3 nodes are available: 3 node(s) had untolerated taint {node.kubernetes.io/disk-pressure: }.",
        "disk_full_eviction",
        "fmt (1.27+ scheduler)",
    ),
    # kernel and systemd going down
    ("[ 2516.224019] Restarting system.", "planned_shutdown_reboot", "fmt (kernel/sys.c <= 3.10)"),
    ("Restarting system with command 'bootloader'.", "planned_shutdown_reboot", "fmt (kernel/sys.c <= 3.10)"),
    ("[ 5909.421105] ACPI: PM: Preparing to enter system sleep state S5", "planned_shutdown_reboot", "fmt"),
    ("[ 5909.428720] kvm: exiting hardware virtualization", "planned_shutdown_reboot", "fmt"),
    ("The system is going down for power-off NOW!", "planned_shutdown_reboot", "fmt (systemctl wall)"),
    (
        "Dec 20 08:46:49 node systemd[1]: Stopping Update UTMP about System Boot/Shutdown...",
        "planned_shutdown_reboot",
        "fmt",
    ),
    (
        "[  OK  ] Stopped systemd-update-utmp.service - Record System Boot/Shutdown in UTMP.",
        "planned_shutdown_reboot",
        "fmt",
    ),
    ("         Starting systemd-reboot.service - System Reboot...", "planned_shutdown_reboot", "fmt"),
    ("Jul 29 08:46:32 node1 systemd[1]: Reached target Shutdown.", "planned_shutdown_reboot", "fmt (systemd < 246)"),
    ("INIT: Switching to runlevel: 0", "planned_shutdown_reboot", "fmt (sysvinit)"),
    # firmware-first, machine checks, EDAC
    ("[    5.990513] Kernel panic - not syncing: Fatal hardware error!", "ghes_cper_hardware_error", "fmt"),
    ("{2}[Hardware Error]:  Error 0, type: recoverable", "ghes_cper_hardware_error", "fmt"),
    (
        "[Hardware Error]: It has been corrected by h/w and requires no further action",
        "ghes_cper_hardware_error",
        "fmt",
    ),
    ("[ 1234.567890] Kernel panic - not syncing: Machine check", "mce_fatal_panic", "fmt (2.6 x86_64 mce_panic)"),
    (_real("kb-123", "PROCESSOR"), "mce_hardware_error", "kb-123 (sb_edac's copy of the record)"),
    ("[Hardware Error]: Uncorrected, software restartable error.", "mce_hardware_error", "fmt (mce_amd.c)"),
    (_real("kb-123", "EDAC MC0"), "edac_memory_ce", "kb-123 (line cut before 'on')"),
    ("EDAC MC2: 3 UE memory read error", "edac_memory_ce", "fmt (cut before 'on')"),
    (
        'EDAC MC0: CE page 0x3a0f, offset 0x818, grain 64, syndrome 0x95, row 3, channel 1, label "": amd64_edac',
        "edac_memory_ce",
        "fmt (edac_mc.c < 3.5)",
    ),
    # lockups, panics, OOM, file tables
    ("BUG: soft lockup detected on CPU#1!", "soft_lockup", "fmt (2.6.1x)"),
    ("[  329.157094] watchdog: CPU#21 Utilization every 4s during lockup:", "soft_lockup", "fmt (6.10+)"),
    ('"echo 0 > /proc/sys/kernel/hung_task_timeout_secs" disables this message.', "hung_task", "fmt (hung hint)"),
    ("Kernel panic: Fatal exception", "kernel_panic", "fmt (2.4 / early 2.6 panic)"),
    (
        "oom-kill:constraint=CONSTRAINT_NONE,nodemask=(null),cpuset=/,mems_allowed=0,global_oom,task_memcg=/,task=java,"
        "pid=1,uid=0",
        "oom_killer",
        "fmt (OOM report)",
    ),
    ("tail: inotify resources exhausted", "too_many_open_files", "fmt (coreutils)"),
    ("accept4: Слишком много открытых файлов", "too_many_open_files", "fmt (glibc ru_RU strerror)"),
    ("open /var/log/pods: 打开的文件过多", "too_many_open_files", "fmt (glibc zh_CN strerror)"),
]


NOT_FOR_DETECTOR = {
    "kb-393",  # `kubectl describe node`
    "kb-443",  # a sentence quoting the GC failure
    "kb-430",  # `kubectl get pods`
    "fmt (k8s 1.6-1.7 resource name)",  # pod messages
    "fmt (1.27+ scheduler)",
    "kb-123 (sb_edac's copy of the record)",  # follows its 'Machine Check Exception' header
    "fmt (6.10+)",  # follows the soft-lockup header
    "fmt (hung hint)",  # follows the hung-task header
    "fmt (OOM report)",  # follows 'invoked oom-killer'
}
_IDS = [f"{c[1]}:{c[2]}" for c in CASES]


@pytest.mark.parametrize(("line", "cls", "origin"), CASES, ids=_IDS)
def test_emitter_wording_is_recognised_and_passes_the_detector(line: str, cls: str, origin: str) -> None:
    finding = default_matcher().match_line(line)
    assert finding is not None and finding.cls == cls, (origin, line)
    if origin not in NOT_FOR_DETECTOR and not line.startswith("The node was low on resource"):
        assert classify_line(line) is not None, ("the detector's pre-filter drops it", line)


@pytest.mark.parametrize(
    "line",
    [
        # fmt: the same emitters in normal operation
        "KubeletHasNoDiskPressure     kubelet has no disk pressure",
        "Tolerations:     node.kubernetes.io/disk-pressure:NoSchedule op=Exists",
        "Starting Update UTMP about System Boot/Shutdown...",
        "[  OK  ] Started systemd-update-utmp.service - Record System Boot/Shutdown in UTMP.",
        "Mar 15 16:50:40 Home systemd[1199]: Reached target Shutdown.",
        "The system shutdown has been cancelled NOW!",
        "The node was low on resource: memory. ",
        '"Eviction manager: attempting to reclaim" resourceName="memory"',
    ],
)
def test_emitter_look_alikes_are_not_findings(line: str) -> None:
    assert default_matcher().match_line(line) is None, line
