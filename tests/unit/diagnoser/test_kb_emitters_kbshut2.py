"""Branch kbshut2: automatic reboot managers (locksmithd, kured, the Flatcar update operator's agent), written from
their emitters (docs/diagnoser.md, emitter table, kbshut2 rows; rules.yaml ops.locksmithd_*, ops.kured_*,
ops.update_operator_agent_reboot).

A manager's line is planned_shutdown_reboot only where its code has passed every check and calls the reboot. Real
lines: round 14's kb-557 (locksmithd's wall) and kb-561 (locksmithd's journal), held-out misses read after round 14
was measured (round 14 is spent for this class: tests/data/kb/README.md "Spent."). The other wordings are the
emitters' format strings instantiated (`fmt`: the literal parts are the emitter's, names and times made up). The
waiting / scheduling lines are look-alikes: kb-561's own first lines, kured's real ones in tests/data/kb/benign.txt
(kured#137, kured#151; kb-561's thread is not quoted there: round 14 stays held out whole from benign.txt), the rest
constructed from the same files and marked.
"""

from __future__ import annotations

import pytest

from nodeheal.detector.kernel import classify_line
from nodeheal.diagnoser.kb import analyse, default_matcher
from tests.unit.diagnoser.kbdata import ROWS
from tests.unit.diagnoser.kbdata import real as _real

PLANNED = "planned_shutdown_reboot"


def _primary(lines: list[str]) -> tuple[str | None, str | None]:
    found = analyse(lines).primary
    return (found.cls, found.rule_id) if found is not None else (None, None)


LOGINS_561 = _real("kb-561", "Logins detected, delaying reboot")
WALL_557 = _real("kb-557", "Broadcast message from locksmithd at")
REBOOT_SENT = (
    "Nov 22 11:05:25 flatcar01 locksmithd[3554]: Reboot sent. Going to sleep."  # fmt: daemon.go rebootAndSleep
)
KURED = 'time="2024-01-01T03:00:00Z" level=info msg="Commanding reboot for node: node-1"'  # fmt: kured commandReboot
FLUO = "I0101 03:00:00.000000       1 agent.go:245] Node drained, rebooting"  # fmt: FLUO pkg/agent/agent.go process
# fmt: zincati src/update_agent/actor.rs finalize_deployment() / tick_end(), as env_logger prints them in the journal
ZINCATI = (
    "Jun 15 03:00:00 fcos-1 zincati[1234]: [INFO  zincati::update_agent::actor] staged deployment '32.20200615.3.0' "
    "available, proceeding to finalize it"
)
# https://github.com/coreos/zincati/issues/1186 (the finalize line, then its failure: the staged deployment had been
# unlocked elsewhere, so no reboot followed)
FAILED_1186 = [
    "zincati[1629931]: [INFO  zincati::update_agent::actor] staged deployment '39.20240407.3.0' available, proceeding "
    "to finalize it",
    "zincati[1629931]: [ERROR zincati::update_agent::actor] failed to finalize deployment: rpm-ostree "
    "finalize-deployment failed:",
    "zincati[1629931]:     error: Staged deployment already unlocked",
]
ZINCATI_END = (
    "Jun 15 03:00:01 fcos-1 zincati[1234]: [INFO  zincati::update_agent::actor] update applied, waiting for reboot: "
    "32.20200615.3.0"
)

CASES = [
    (LOGINS_561, "ops.locksmithd_reboot_delay", "kb-561"),
    (WALL_557, "ops.locksmithd_reboot_delay", "kb-557"),
    (REBOOT_SENT, "ops.locksmithd_reboot_sent", "fmt locksmith"),
    ("Reboot sent. Going to sleep.", "ops.locksmithd_reboot_sent", "fmt locksmith 2014 (fmt.Println)"),
    (KURED, "ops.kured_commanding_reboot", "fmt kured"),
    (FLUO, "ops.update_operator_agent_reboot", "fmt update operator"),
    (ZINCATI, "ops.zincati_finalize", "fmt zincati finalize"),
    (ZINCATI_END, "ops.zincati_finalize", "fmt zincati end"),
    (FAILED_1186[0], "ops.zincati_finalize", "zincati#1186, alone"),
]


@pytest.mark.parametrize(("line", "rule_id", "origin"), CASES, ids=[c[2] for c in CASES])
def test_the_executing_line_is_planned(line: str, rule_id: str, origin: str) -> None:
    finding = default_matcher().match_line(line)
    assert finding is not None and (finding.cls, finding.rule_id) == (PLANNED, rule_id), origin
    assert _primary([line]) == (PLANNED, rule_id)


@pytest.mark.parametrize("excerpt", ["kb-557", "kb-561"])
def test_the_round_14_misses_are_planned(excerpt: str) -> None:
    row = ROWS[excerpt]
    assert row["split"] == "test" and row["round"] == 14 and row["class"] == PLANNED
    assert _primary(row["lines"]) == (PLANNED, "ops.locksmithd_reboot_delay")


@pytest.mark.parametrize(
    "line",
    [
        # the wall's message line alone: the words are not locksmithd's own (its header is)
        _real("kb-557", "System reboot in 5 minutes!"),
        # update_engine's status and locksmithd's window: the reboot is not decided yet (kb-561)
        _real("kb-561", "UPDATE_STATUS_UPDATED_NEED_REBOOT"),
        _real("kb-561", "No configured reboot window"),
        # constructed from flatcar/locksmith daemon.go runDaemon(): waiting for the window, and its start-up
        "Nov 22 11:00:25 flatcar01 locksmithd[3554]: Waiting for 4h59m0s to reboot.",
        'Nov 22 11:00:25 flatcar01 locksmithd[3554]: Reboot window start is "Sun 04:00" and length is "1h"',
        'Nov 22 11:00:25 flatcar01 locksmithd[3554]: locksmithd starting currentOperation="UPDATE_STATUS_IDLE" '
        'strategy="reboot"',
        "Nov 22 11:00:25 flatcar01 locksmithd[3554]: Failed to acquire lock: lock held. Retrying in 10s.",
        # constructed from kured main.go: its drain and its waiting
        'time="2024-01-01T03:00:00Z" level=info msg="Draining node node-1"',
        'time="2024-01-01T03:00:00Z" level=warning msg="Reboot blocked: 1 active alerts: [KubeNodeNotReady]"',
        # constructed from the update operator's agent.go: waiting for the controller, reporting the need
        "I0101 03:00:00.000000       1 agent.go:180] Waiting for ok-to-reboot from controller...",
        "I0101 03:00:00.000000       1 agent.go:262] Indicating a reboot is needed",
        # constructed from zincati's actor.rs: staging (no reboot) and the strategy holding the reboot back
        "Jun 15 02:00:00 fcos-1 zincati[1234]: [INFO  zincati::update_agent::actor] target release '32.20200615.3.0' "
        "selected, proceeding to stage it",
        "update staged: 32.20200615.3.0; reboot pending due to update strategy",
        "update staged: 32.20200615.3.0; reboot delayed due to active user sessions",
    ],
)
def test_scheduling_or_waiting_is_no_finding(line: str) -> None:
    assert default_matcher().match_line(line) is None
    assert analyse([line]).findings == ()


def test_the_first_lines_of_kb_561_alone_are_no_finding() -> None:
    """update_engine has the update and locksmithd has no window: the reboot may still wait for a lock."""
    assert analyse(ROWS["kb-561"]["lines"][:2]).findings == ()


EXITING = "Nov 22 11:02:00 flatcar01 locksmithd[3554]: Received interrupt/termination signal - locksmithd is exiting."


@pytest.mark.parametrize(
    "stop",
    [
        EXITING,  # fmt: flatcar/locksmith daemon.go runDaemon()'s signal handler
        "Nov 22 11:02:00 flatcar01 systemd[1]: Stopping Cluster reboot manager...",  # locksmithd.service Description
        "Nov 22 11:02:00 flatcar01 systemd[1]: Stopped locksmithd.service - Cluster reboot manager.",
    ],
)
def test_locksmithd_stopped_during_its_delay_vetoes_the_delay(stop: str) -> None:
    """Stopping locksmithd in its 5 minutes is the one way out of rebootAndSleep(): no finding then."""
    assert analyse([LOGINS_561, stop]).findings == ()
    assert analyse([*ROWS["kb-557"]["lines"], stop]).findings == ()


def test_the_reboot_sent_line_survives_locksmithd_being_stopped_by_the_reboot() -> None:
    """In the real reboot PID 1 stops locksmithd after 'Reboot sent.': that line has no such veto."""
    lines = [
        LOGINS_561,
        REBOOT_SENT,
        "Nov 22 11:05:26 flatcar01 systemd[1]: Stopping Cluster reboot manager...",
        EXITING,
    ]
    assert _primary(lines) == (PLANNED, "ops.locksmithd_reboot_sent")


@pytest.mark.parametrize(
    ("lines", "why"),
    [
        (
            [REBOOT_SENT, "Nov 29 11:05:25 flatcar01 locksmithd[3554]: Tried to reboot but did not!"],
            "flatcar dlog.Fatal",
        ),
        (["Reboot sent. Going to sleep.", "Error: reboot attempt never finished"], "2014 locksmith"),
        (
            [KURED, 'time="2024-01-01T03:00:01Z" level=fatal msg="Error invoking reboot command: exit status 1"'],
            "kured",
        ),
        (FAILED_1186, "zincati#1186 (real)"),
    ],
)
def test_the_managers_own_failure_report_vetoes_it(lines: list[str], why: str) -> None:
    assert analyse(lines).findings == (), why


@pytest.mark.parametrize("line", [LOGINS_561, REBOOT_SENT, ZINCATI, ZINCATI_END, FAILED_1186[0]])
def test_the_node_log_wordings_pass_the_detector(line: str) -> None:
    """locksmithd and zincati log to the node's journal; kured and the update operator's agent log in their pods."""
    assert classify_line(line) == "planned"


@pytest.mark.parametrize(
    "line", [_real("kb-561", "UPDATE_STATUS_UPDATED_NEED_REBOOT"), _real("kb-561", "reboot window")]
)
def test_the_detector_does_not_pass_locksmithds_waiting(line: str) -> None:
    assert classify_line(line) is None
