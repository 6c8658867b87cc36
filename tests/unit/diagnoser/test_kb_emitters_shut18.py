"""Branch shut18: `planned_shutdown_reboot` misses of rounds 16 and 17, read after their single measurements, written
from their emitters' sources (docs/diagnoser.md, emitter table, shut18 rows).

Each wording is checked on the real line that motivated it (kb-668, kb-706, kb-708, kb-709) or on the emitter's format
string instantiated (`fmt`: the literal parts are the emitter's, the names made up). Node log lines (Talos's kernel-log
lines) must also pass the detector's pre-filter; systemctl's client output and `kubectl` listings are not node logs and
reach the KB through diagnose-log only. The look-alikes are what the same emitters print when nothing is under way or
when the operator only asked for a dry run; real ones are in tests/data/kb/benign.txt (none from a round-16 or round-17
thread). kb-667 (Zincati's wall), kb-703 and kb-704 were read and stay misses.
"""

from __future__ import annotations

import pytest
import yaml

from nodeheal.detector.kernel import classify_line
from nodeheal.diagnoser.kb import KnowledgeBaseError, analyse, default_matcher, parse_knowledge_base
from tests.unit.diagnoser.kbdata import ROWS
from tests.unit.diagnoser.kbdata import real as _real

PLANNED = "planned_shutdown_reboot"
TALOS_PHASE = "ops.talos_stop_services_phase"
TALOS_SEQUENCE = "ops.talos_shutdown_sequence"
SYSTEMCTL = "ops.systemctl_logind_shutdown_call"
POD_STATUS = "ops.kubelet_shutdown_pod_status"

# (line, rule, node log?, origin)
CASES = [
    # Talos machined Controller.run(): 'phase %s (%s): %d tasks(s)'; the stopServices phase is only in Upgrade and
    # stopAllPhaselist() (Reboot, Shutdown, StageUpgrade, Reset), every one ending in reboot or shutdown
    (_real("kb-706", "phase stopServices"), TALOS_PHASE, True, "kb-706 (v1.2, 3/12)"),
    ("[ 9433.100217] [talos] phase stopServices (6/16): 1 tasks(s)", TALOS_PHASE, True, "fmt upgrade, control plane"),
    ("[  733.420551] [talos] phase stopServices (4/13): 1 tasks(s)", TALOS_PHASE, True, "fmt shutdown with drain"),
    (_real("kb-708", "reboot sequence: 11"), TALOS_SEQUENCE, True, "kb-708 (the sequence started after a takeover)"),
    # systemctl's logind_reboot(): log_debug('%s org.freedesktop.login1.Manager %s dbus call.', 'Executing', method)
    (_real("kb-709", "dbus call."), SYSTEMCTL, False, "kb-709 (systemd 253, RebootWithFlags)"),
    ("Executing org.freedesktop.login1.Manager PowerOffWithFlags dbus call.", SYSTEMCTL, False, "fmt poweroff"),
    ("Executing org.freedesktop.login1.Manager HaltWithFlags dbus call.", SYSTEMCTL, False, "fmt halt"),
    ("Executing org.freedesktop.login1.Manager Reboot dbus call.", SYSTEMCTL, False, "fmt 0086ef19 (bare method)"),
    ("Executing org.freedesktop.login1.Manager PowerOff dbus call.", SYSTEMCTL, False, "fmt elogind (bare method)"),
    # the kubelet's nodeshutdown manager: reason 'Shutdown' (1.20, 1.21), 'NodeShutdown' for refused pods (1.22+);
    # its messages 'Node is shutting, evicting pods' (1.20, 1.21), 'Pod was terminated in response to imminent node
    # shutdown.' and 'Pod was rejected as the node is shutting down.' (1.22+)
    (_real("kb-668", "bvzj9"), POD_STATUS, False, "kb-668 (kubectl get pods -o wide, 1.20/1.21 reason)"),
    (
        "kube-system   coredns-74ff55c5b-9xk2p            0/1     Shutdown   2 (5m ago)   3d    <none>   node-2",
        POD_STATUS,
        False,
        "fmt kubectl -A, restarts with their age",
    ),
    ("web-5d4f8b7c9-q8wzd   0/1     NodeShutdown   0          12s", POD_STATUS, False, "fmt 1.22+ refused pod"),
    ("Message:          Node is shutting, evicting pods", POD_STATUS, False, "fmt describe 1.20/1.21"),
    (
        "Message:          Pod was terminated in response to imminent node shutdown.",
        POD_STATUS,
        False,
        "fmt describe 1.22+",
    ),
    ("  message: Pod was rejected as the node is shutting down.", POD_STATUS, False, "fmt -o yaml 1.22+ refused"),
]


@pytest.mark.parametrize(("line", "rule", "node_log", "origin"), CASES, ids=[c[3] for c in CASES])
def test_emitter_wording_is_recognised(line: str, rule: str, node_log: bool, origin: str) -> None:
    finding = default_matcher().match_line(line)
    assert finding is not None and (finding.cls, finding.rule_id) == (PLANNED, rule), (origin, line, finding)
    if node_log:
        assert classify_line(line) is not None, ("the detector's pre-filter drops it", line)


@pytest.mark.parametrize(
    ("excerpt", "split", "round_"),
    [("kb-668", "test", 16), ("kb-706", "train", 17), ("kb-708", "test", 17), ("kb-709", "test", 17)],
)
def test_the_excerpts_read_are_classified_whole(excerpt: str, split: str, round_: int) -> None:
    row = ROWS[excerpt]
    assert (row["split"], row["round"]) == (split, round_)
    found = analyse(row["lines"]).primary
    assert found is not None and found.cls == row["class"] == PLANNED, (excerpt, found)


@pytest.mark.parametrize(
    "line",
    [
        # systemctl --dry-run, and the sleep methods (not a shutdown)
        "Would execute org.freedesktop.login1.Manager RebootWithFlags dbus call.",
        "Would execute org.freedesktop.login1.Manager PowerOff dbus call.",
        "Executing org.freedesktop.login1.Manager SuspendWithFlags dbus call.",
        "Executing org.freedesktop.login1.Manager HibernateWithFlags dbus call.",
        "Executing org.freedesktop.login1.Manager SuspendThenHibernateWithFlags dbus call.",
        "Executing org.freedesktop.login1.Manager Sleep dbus call.",
        'Setting wall message "".',
        # Talos: phases other sequences hold too (Initialize's unmountSystem, Install's stopEverything), the same
        # phase's end, and the task whose name the newest tree gives every sequence's service stop
        "[    2.512208] [talos] phase unmountSystem (11/11): 1 tasks(s)",
        "[    9.104722] [talos] phase stopEverything (6/8): 1 tasks(s)",
        "[155590.057755] [talos] phase cleanup (1/11): 1 tasks(s)",
        "[ 4121.011031] [talos] phase stopServices (3/12): done, 459.642ms",
        "[  120.551208] [talos] task stopServicesForUpgrade (1/1): starting",
        # kubectl: a bare 'Terminated' (1.22+'s reason, but not the kubelet's alone), a deletion, running pods, an
        # eviction; the reason in a sentence or as describe's field
        "pod/nginx-deployment-66b6c48dd5-2pw4q   1/1     Terminated   1 (2m40s ago)   3m3s   10.44.0.3   k22-node1",
        "kube-system   web-6c9d7f5b8-k2m4n   0/1     Terminating   0   2h10m   10.42.1.17   worker-1",
        "pod/web-5d4f8b7c9-x2x7q   1/1     Running    0          3s     172.28.9.37   worker-2",
        "web-7f6c8b9d4-2xk9p   0/1     Evicted    0          2d",
        "Reason:         Shutdown",
        "the pod shows Shutdown 0 times in the listing",
        # Zincati's wall while the reboot is postponed for logged-in users (src/update_agent/mod.rs,
        # format_reboot_warning(): v0.0.21+ and v0.0.19-v0.0.20), and its header
        "Broadcast message from Zincati at Wed 2021-07-21 11:24:06 UTC:",
        "If permitted by the update strategy, Zincati will reboot into this update when all",
        "Rebooting into this update in around 10 minutes (if permitted by update strategy).",
    ],
)
def test_emitter_look_alikes_are_not_this_class(line: str) -> None:
    finding = default_matcher().match_line(line)
    assert finding is None or finding.cls != PLANNED, (line, finding)


def test_zincati_0_0_18_broadcast_is_its_finalize_line() -> None:
    """v0.0.18 (commit de4c260) broadcast the finalize log line itself, with ' and reboot' (already matched)."""
    line = "staged deployment '33.20210201.3.0' available, proceeding to finalize it and reboot"
    finding = default_matcher().match_line(line)
    assert finding is not None and finding.rule_id == "ops.zincati_finalize"


@pytest.mark.parametrize(
    "failure",
    [
        "Call to Reboot failed: Access denied",  # later copies
        'Call to PowerOff failed: Operation inhibited by "gdm" (PID 912 "gdm", user gdm), reason is "x".',
        "Failed to reboot system via logind: Interactive authentication required.",  # 0086ef19
        "Failed to power off system via elogind: Access denied",  # elogind
    ],
)
def test_logind_refusing_the_call_vetoes_it(failure: str) -> None:
    call = _real("kb-709", "dbus call.")
    assert analyse([call]).primary is not None
    assert analyse([call, failure]).primary is None, failure


FAILED = [
    "[  310.120001] [talos] phase cleanup (1/11): failed",
    "[  310.120013] [talos] reboot sequence: failed",
    "[  310.120020] [talos] reboot failed: error running phase 1 in reboot sequence: task 1/1: failed, context canceled",
]


@pytest.mark.parametrize("failure", FAILED)
def test_a_talos_failure_counts_only_below_the_line(failure: str) -> None:
    """A sequence logs its failure after its start: one above the start is an earlier sequence's (a new reboot
    request takes the running one over: PriorityLock cancels it, waits for it to end, then the new one starts)."""
    start = _real("kb-708", "reboot sequence: 11")
    phase = _real("kb-706", "phase stopServices")
    for line in (start, phase):
        assert analyse([line, failure]).primary is None, (line, failure)
        found = analyse([failure, line]).primary
        assert found is not None and found.cls == PLANNED, (failure, line)


def test_the_takeover_race_is_on_the_safe_side() -> None:
    """The caller logs 'reboot failed: …' after Run() returned, so it can come just after the next sequence's start:
    read as a failure of that one (a true finding dropped)."""
    start = _real("kb-708", "reboot sequence: 11")
    assert analyse([start, FAILED[2]]).primary is None


def test_a_later_phase_failing_vetoes_the_stop_services_phase() -> None:
    phase = _real("kb-706", "phase stopServices")
    assert analyse([phase, "[ 4130.2] [talos] phase unmountSystem (7/12): failed"]).primary is None
    assert analyse([phase, "[ 4130.2] [talos] reset sequence: failed"]).primary is None


def test_veto_after_needs_a_veto_and_a_boolean() -> None:
    import importlib.resources

    text = importlib.resources.files("nodeheal.diagnoser.kb").joinpath("rules.yaml").read_text()
    doc = yaml.safe_load(text)
    rule = next(r for r in doc["rules"] if r["id"] == TALOS_PHASE)
    rule["veto_after"] = "yes"
    with pytest.raises(KnowledgeBaseError, match=r"'ops.talos_stop_services_phase': veto_after must be true or"):
        parse_knowledge_base(yaml.safe_dump(doc), source="test.yaml")
    rule["veto_after"] = True
    del rule["veto"]
    with pytest.raises(KnowledgeBaseError, match=r"'ops.talos_stop_services_phase': veto_after without a veto"):
        parse_knowledge_base(yaml.safe_dump(doc), source="test.yaml")


@pytest.mark.parametrize(
    ("excerpt", "why"),
    [
        ("kb-667", "zincati's wall: finalization postponed for logged-in users; can_finalize() is asked again"),
        ("kb-703", "PID 1 stopping a snap's API server: a snap refresh or a restart prints it too"),
        ("kb-704", "pods Terminating: a deletion under way, whatever its cause"),
    ],
)
def test_the_excerpts_read_and_left_stay_misses(excerpt: str, why: str) -> None:
    found = analyse(ROWS[excerpt]["lines"]).primary
    assert found is None or found.cls != PLANNED, (excerpt, why, found)
