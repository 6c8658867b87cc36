"""Branch kbshut4: emitters of a planned reboot the knowledge base did not read yet (docs/diagnoser.md, emitter table,
kbshut4 rows; rules.yaml ops.kexec_starting_new_kernel, ops.shutdown_pid1_ident, ops.kured_reboot_invoked,
ops.kubelet_shutdown_processing, ops.mcd_initiating_reboot, and the veto added to ops.kubelet_graceful_shutdown).

Each line is one its program prints past its last check, right before the reboot; each program's own failure report
vetoes it. Real lines: a tracker's copy where one was found (scaleway/initrd#199, okd-project/okd#493), the train row
kb-450 (the kubelet's shutdown manager), a kured log in a public notes file of the search tool's file index
(brentgroves/repsys `k8s/kured-install.md`) and a reboot console in a linux-arm-kernel patch mail of the same index
(both read with read_file). The other wordings are the emitters' format strings
instantiated (`fmt`: the literal parts are the emitter's, names and times made up). No held-out excerpt was used.
Look-alikes: start-up and waiting lines (real ones in benign.txt: kured#894, kubernetes#101553, MCO PR 405) and
constructed ones, marked.
"""

from __future__ import annotations

import pytest

from nodeheal.detector.kernel import classify_line
from nodeheal.diagnoser.kb import analyse, default_matcher
from tests.unit.diagnoser.kbdata import BENIGN, ROWS
from tests.unit.diagnoser.kbdata import real as _real

PLANNED = "planned_shutdown_reboot"


def _primary(lines: list[str]) -> tuple[str | None, str | None]:
    found = analyse(lines).primary
    return (found.cls, found.rule_id) if found is not None else (None, None)


# ---------------------------------------------------------------- the kernel's kexec reboot
KEXEC = "ops.kexec_starting_new_kernel"
# https://github.com/scaleway/initrd/issues/199 (`kexec -e` on an ARM server: the kernel's last words before the new one)
KEXEC_199 = [
    "[  129.248360] kexec_core: Starting new kernel",
    "[  129.298586] Disabling non-boot CPUs ...",
    "[  129.393572] CPU1: shutdown",
]
KEXEC_FMT = [
    "kexec: Starting new kernel",  # fmt: kernel/kexec.c with pr_fmt "kexec: " (as raspberrypi/linux#1319 quotes it)
    "[ 4149.149473] Starting new kernel",  # fmt: 2.6's printk(KERN_EMERG "Starting new kernel\n"), no prefix
    "Jan 01 00:00:00 node-1 kernel: kexec_core: Starting new kernel",  # fmt: the same line in syslog
]

# ---------------------------------------------------------------- systemd-shutdown under the ident 'shutdown'
SHUTDOWN = "ops.shutdown_pid1_ident"
# a linux-arm-kernel patch mail in the search tool's file index (Odroid N2's SD regulator; read with read_file): the
# console of `reboot` on Arch Linux ARM, 2019
SHUTDOWN_MAIL = [
    "[   24.275860] shutdown[1]: All loop devices detached.",
    "[   24.278864] shutdown[1]: Detaching DM devices.",
    "[   24.287105] kvm: exiting hardware virtualization",
    "[   24.318776] reboot: Restarting system",
]
SHUTDOWN_FMT = [
    "[  100.000000] shutdown[1]: Sending SIGTERM to remaining processes...",  # fmt: shutdown.c log_info()
    "[  100.000000] shutdown[1]: Powering off.",  # fmt
]

# ---------------------------------------------------------------- kured after 1.6
KURED = "ops.kured_reboot_invoked"
# brentgroves/repsys k8s/kured-install.md (a kured test: the node was drained, then rebooted)
KURED_REAL = (
    'time="2023-10-20T20:54:47Z" level=info msg="Running command: [/usr/bin/nsenter -m/proc/1/ns/mnt -- '
    '/bin/systemctl reboot] for node: reports54"'
)
KURED_SIGNAL = 'time="2024-01-01T03:00:00Z" level=info msg="Emit reboot-signal for node: node-1"'  # fmt: 1.15 signal.go
KURED_TRIGGER = 'time="2024-01-01T03:00:00Z" level=info msg="Triggering reboot for node node-1"'  # fmt: 1.16.2+ main.go
# fmt: 1.7's line as docker's json-file log holds it (the shape of kured#26's copies)
KURED_JSON = (
    '{"log":"time=\\"2019-01-01T03:00:00Z\\" level=info msg=\\"Running command: [/usr/bin/nsenter -m/proc/1/ns/mnt -- '
    '/bin/systemctl reboot] for node: app02\\"\\n","stream":"stderr","time":"2019-01-01T03:00:00.0Z"}'
)
# fmt: 1.16.2+ command.go, logrus Info("Invoked reboot command", "cmd", …) (fmt.Sprint joins its arguments)
KURED_INVOKED = (
    'time="2024-01-01T03:00:01Z" level=info msg="Invoked reboot commandcmd/usr/bin/nsenter -m/proc/1/ns/mnt -- '
    '/bin/systemctl rebootstdoutstderr"'
)

# ---------------------------------------------------------------- the kubelet's shutdown manager
KUBELET = "ops.kubelet_shutdown_processing"
KB450_EVENT = _real("kb-450", 'event="shutdown"')
KB450_PROCESSING = _real("kb-450", "Shutdown manager processing shutdown event")
KB450_NODE_EVENT = _real("kb-450", 'message="Shutdown manager detected shutdown event"')
# fmt: nodeshutdown_manager_linux.go processShutdownEvent(), klog.V(1).InfoS / Infof of 1.21 and the 1.20 Infof
KUBELET_FMT = [
    'I0101 03:00:00.000000    1748 nodeshutdown_manager_linux.go:386] "Shutdown manager pod killing time out" '
    "gracePeriod=20 priority=100000",
    'I0101 03:00:00.000000    1748 nodeshutdown_manager_linux.go:366] "Shutdown manager failed killing pod" '
    'pod="default/web-0" err="rpc error: code = DeadlineExceeded"',
    "I0101 03:00:00.000000    1748 nodeshutdown_manager_linux.go:220] Shutdown manager processing shutdown event",
]
# fmt: the same watcher on PrepareForShutdown(false): the cancellation, three wordings (1.20 Infof, 1.21+ InfoS twice)
CANCELLED = [
    "I0101 03:00:05.000000    1748 nodeshutdown_manager_linux.go:171] Shutdown manager detected new shutdown event, "
    "isNodeShuttingDownNow: false",
    'I0101 03:00:05.000000    1748 nodeshutdown_manager_linux.go:265] "Shutdown manager detected new shutdown event, '
    'isNodeShuttingDownNow" event=false',
    'I0101 03:00:05.000000    1748 nodeshutdown_manager_linux.go:273] "Shutdown manager detected new shutdown event" '
    'event="cancelled"',
]

# ---------------------------------------------------------------- OpenShift's machine-config daemon
MCD = "ops.mcd_initiating_reboot"
# https://github.com/okd-project/okd/issues/493 (the daemon's pod log; the next line is the daemon starting in the new boot)
MCD_493 = (
    "I0128 13:28:51.705223  353146 update.go:1653] initiating reboot: Node will reboot into config "
    "rendered-master-184a573ed4f60486e9c3b08f8b909634"
)
OKD_493_BEFORE = (  # the line before it in okd-project/okd#493
    'I0128 13:28:51.699604  353146 kernelargs.go:136] skipping "mitigations=auto,nosmt" as it is not present in the '
    "current argument list"
)
MCD_FMT = [
    # fmt: logSystem() through `logger` to the node journal: 2018's own prefix, 2019's 'machine-config-daemon: ',
    # 2019+ 'machine-config-daemon[%d]: ', %q-quoted since 2024
    "Dec 05 00:00:00 node-1 logger[2345]: machine-config-daemon initiating reboot: Node will reboot into config w-1",
    "Jan 01 00:00:00 node-1 logger[2345]: machine-config-daemon: initiating reboot: Node will reboot into config w-1",
    "Jan 01 00:00:00 node-1 root[2345]: machine-config-daemon[1234]: initiating reboot: Node will reboot into config w-1",
    'Jan 01 00:00:00 node-1 root[2345]: machine-config-daemon[1234]: "initiating reboot: Node will reboot into config '
    'rendered-worker-1"',
    # fmt: the klog copy of the quoted form, and 'reboot successful' once systemd-run returned (2023+)
    'I0101 00:00:00.000000    1234 update.go:2786] "initiating reboot: Node will reboot into config rendered-worker-1"',
    'I0101 00:00:01.000000    1234 update.go:2811] "reboot successful"',
    'Jan 01 00:00:01 node-1 root[2346]: machine-config-daemon[1234]: "reboot successful"',
    # fmt: PID 1 starting the transient unit systemd-run asked for (its --description), older and newer journals
    "Jan 01 00:00:01 node-1 systemd[1]: Started machine-config-daemon: Node will reboot into config rendered-worker-1.",
    "Jan 01 00:00:01 node-1 systemd[1]: Started machine-config-daemon-reboot.service - machine-config-daemon: "
    "Node will reboot into config rendered-worker-1.",
]

CASES = [
    *((KEXEC_199[0], KEXEC, "scaleway/initrd#199"),),
    *((line, KEXEC, "fmt kexec") for line in KEXEC_FMT),
    *((line, SHUTDOWN, "linux-arm-kernel mail") for line in SHUTDOWN_MAIL[:2]),
    *((line, SHUTDOWN, "fmt shutdown[1]") for line in SHUTDOWN_FMT),
    (KURED_REAL, KURED, "brentgroves/repsys (kured 1.7–1.14)"),
    (KURED_JSON, KURED, "fmt kured 1.7 json-file"),
    (KURED_SIGNAL, KURED, "fmt kured 1.15 signal"),
    (KURED_TRIGGER, KURED, "fmt kured 1.16.2+"),
    (KURED_INVOKED, KURED, "fmt kured 1.16.2+ invoked"),
    (KB450_EVENT, KUBELET, "kb-450 event=shutdown"),
    (KB450_PROCESSING, KUBELET, "kb-450 processing"),
    (KB450_NODE_EVENT, KUBELET, "kb-450 node event"),
    *((line, KUBELET, "fmt kubelet") for line in KUBELET_FMT),
    (MCD_493, MCD, "okd#493"),
    *((line, MCD, "fmt mcd") for line in MCD_FMT),
]


@pytest.mark.parametrize(("line", "rule_id", "origin"), CASES, ids=[f"{i}-{c[2]}" for i, c in enumerate(CASES)])
def test_the_executing_line_is_planned(line: str, rule_id: str, origin: str) -> None:
    finding = default_matcher().match_line(line)
    assert finding is not None and finding.cls == PLANNED, origin
    # kb-450's lines were already read by ops.kubelet_graceful_shutdown's literal; any rule of the class will do there
    assert finding.rule_id == rule_id or (rule_id == KUBELET and finding.rule_id.startswith("ops.kubelet_")), origin
    assert _primary([line])[0] == PLANNED


def test_the_real_excerpts() -> None:
    assert _primary(KEXEC_199) == (PLANNED, KEXEC)
    assert _primary(SHUTDOWN_MAIL[:2]) == (PLANNED, SHUTDOWN)
    assert _primary(SHUTDOWN_MAIL)[0] == PLANNED
    assert _primary([OKD_493_BEFORE, MCD_493]) == (PLANNED, MCD)
    assert _primary(ROWS["kb-450"]["lines"])[0] == PLANNED


@pytest.mark.parametrize(
    "line",
    [
        # kexec: other programs' 'Starting new kernel …' (constructed from the file index's Jupyter and thread hits),
        # a boot loader's own line (constructed: U-Boot's wording), the crash kernel loaded (constructed)
        "Starting new kernel: python3",
        "Starting new kernel for session: 7f3a",
        "Starting new kernel thread from create",
        "Starting kernel ...",
        "Starting new kernel",  # bare, no printk time stamp: not told from a boot loader's or another program's
        "[    0.000000] kexec_core: crashkernel: memory value expected",
        # shutdown[1]: a scheduled shutdown's `shutdown` command, under its own PID (constructed from systemctl's wording)
        "Jan  1 00:00:00 node-1 shutdown[2210]: Shutdown scheduled for Thu 2024-01-01 00:05:00 UTC",
        # kured: start-up settings and the loop after the command (constructed from main.go), another tool's words
        'time="2023-10-20T20:52:04Z" level=info msg="Reboot command: [/bin/systemctl reboot]"',
        'time="2023-10-20T20:54:47Z" level=info msg="Waiting for reboot"',
        'time="2024-01-01T03:00:00Z" level=info msg="Delaying reboot for 5m0s"',
        "2024-01-01 03:00:00 INFO Triggering reboot for node: node-1",
        # kubelet: start-up (constructed from kubelet.go) and the cancellation's Node event (nodeshutdown manager)
        'I0101 00:00:00.000000    1748 nodeshutdown_manager_linux.go:140] "Creating node shutdown manager" '
        'shutdownGracePeriodRequested="30s"',
        'reason="Shutdown" message="Shutdown manager detected shutdown cancellation"',
        *CANCELLED,
        # mcd: lines before reboot() (which can still skip it) and after the unit ended (constructed from update.go)
        'I0101 00:00:00.000000    1234 update.go:1874] "Rebooting node"',
        'I0101 00:00:00.000000    1234 update.go:216] "Node has Desired Config rendered-worker-1, skipping reboot"',
        "Jan 01 00:00:01 node-1 systemd[1]: Stopped machine-config-daemon: Node will reboot into config w-1.",
        "reboot successful",
    ],
)
def test_look_alikes(line: str) -> None:
    assert default_matcher().match_line(line) is None, line


def test_the_benign_lines_of_this_branch() -> None:
    lines = [
        line
        for line in BENIGN
        if "Reboot method" in line
        or "Reboot signal" in line
        or "needs-restarting" in line
        or "node shutdown" in line
        or "Failed to reboot?" in line
    ]
    assert len(lines) >= 5  # with an older 'Creating node shutdown manager' line
    assert analyse(lines).findings == ()


FAILED_MCD_405 = next(line for line in BENIGN if "Failed to reboot?" in line)  # MCO PR 405, the restarted daemon


@pytest.mark.parametrize(
    ("lines", "why"),
    [
        # kured: log.Fatalf in each version (fmt), the pod then restarts
        (
            [KURED_REAL, 'time="2023-10-20T20:54:48Z" level=fatal msg="Error invoking reboot command: exit status 1"'],
            "1.x",
        ),
        (
            [KURED_SIGNAL, 'time="2024-01-01T03:00:00Z" level=fatal msg="Signal of SIGRTMIN+5 failed: not permitted"'],
            "1.15",
        ),
        ([KURED_SIGNAL, 'time="2024-01-01T03:00:00Z" level=fatal msg="There was no systemd process found: x"'], "1.15"),
        (
            [
                KURED_TRIGGER,
                'time="2024-01-01T03:00:01Z" level=fatal msg="Unable to reboot node: error invoking reboot command '
                '[/bin/systemctl reboot]: exit status 1 (stdout: , stderr: )"',
            ],
            "1.16.2+",
        ),
        # mcd: its own failure reports (fmt) and the restarted daemon's (MCO PR 405, real)
        ([MCD_493, "I0128 13:28:52.000000  353146 update.go:1660] failed to run reboot: exit status 1"], "systemd-run"),
        (
            [MCD_493, "E0129 13:28:51.000000  353146 daemon.go:1 reboot failed; this error should be unreachable, x"],
            "24h",
        ),
        (
            [MCD_493, "I0128 13:28:51.800000  353146 daemon.go:1] MCD is not rebooting in onceFrom with --skip-reboot"],
            "skip",
        ),
        ([MCD_493, FAILED_MCD_405], "PR 405"),
        (
            [
                MCD_FMT[-2],
                "Jan 01 00:00:01 node-1 systemd[1]: machine-config-daemon-reboot.service: Main process exited, "
                "code=exited, status=1/FAILURE",
            ],
            "unit",
        ),
        # kubelet: PrepareForShutdown(false) after the true one (fmt)
        ([KB450_EVENT, KB450_PROCESSING, CANCELLED[2]], "1.2x cancelled"),
        ([*ROWS["kb-450"]["lines"], CANCELLED[1]], "kb-450 then cancelled"),
    ],
)
def test_the_programs_own_failure_report_vetoes_it(lines: list[str], why: str) -> None:
    assert analyse(lines).findings == (), why


def test_the_cancellation_also_vetoes_the_older_kubelet_rule() -> None:
    """ops.kubelet_graceful_shutdown (kb-407's rule) reads the same watcher's true event; its false one now vetoes it."""
    true_120 = CANCELLED[0].replace("false", "true")
    assert _primary([true_120]) == (PLANNED, "ops.kubelet_graceful_shutdown")
    assert analyse([true_120, CANCELLED[0]]).findings == ()


def test_kureds_drain_and_waiting_are_still_not_the_reboot() -> None:
    """kbshut3's judgement stands: round 15's kured excerpts end at the drain and stay misses."""
    for excerpt in ("kb-595", "kb-596"):
        assert _primary(ROWS[excerpt]["lines"]) == (None, None)


@pytest.mark.parametrize(
    "line",
    [
        KEXEC_199[0],
        KEXEC_FMT[0],
        *SHUTDOWN_MAIL[:2],
        KB450_EVENT,
        KB450_PROCESSING,
        KUBELET_FMT[0],
        *MCD_FMT[:4],
        *MCD_FMT[7:],
    ],
)
def test_the_node_log_wordings_pass_the_detector(line: str) -> None:
    """The kernel's kexec line and the kubelet's and MCD's journal lines reach the node log; kured logs in its pod."""
    assert classify_line(line) == "planned", line


@pytest.mark.parametrize(
    "line", [KURED_REAL, KURED_TRIGGER, CANCELLED[2], "Starting new kernel: python3", MCD_493, FAILED_MCD_405]
)
def test_the_detector_does_not_pass_the_rest(line: str) -> None:
    assert classify_line(line) is None, line
