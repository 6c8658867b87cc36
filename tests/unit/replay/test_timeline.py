"""The incident timeline: grouping, ttd/tti/ttr, the summary and determinism, on hand-built messages."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from nodeheal.cli.report_html import write_replay_html
from nodeheal.cli.timeline import Incident, TimelineMessage, build_timeline, percentile
from tests.unit.replay.factories import (
    at,
    cloud_event,
    diagnosis,
    firing,
    operator_request,
    probe,
    record,
    resolved,
)


def _repaired_by_reboot() -> list[TimelineMessage]:
    """node-a: bad from t=0, detected at 12 s, diagnosed at 15 s, rebooted, verified at 90 s."""
    a = firing("node-a", kind="node_hang", onset=0, detected=12)
    d = diagnosis("node-a", [a], t=15, cause="soft_lockup", category="kernel")
    return [
        probe("node-a", -10, ok=True, seq=1),
        probe("node-a", 0, ok=False, seq=2),
        probe("node-a", 10, ok=False, seq=3),
        a,
        d,
        record("node-a", t=16, phase="intent", diag=d),
        record("node-a", t=17, phase="started", diag=d),
        record("node-a", t=40, phase="succeeded", diag=d),
        probe("node-a", 80, ok=True, seq=4),
        resolved(a, t=85),
        record("node-a", t=90, phase="verified"),  # no diagnosis id: joined through its action id
        diagnosis("node-a", [a], t=86, cause="soft_lockup", category="kernel", resolved_=True),
    ]


def test_one_repaired_incident_has_the_known_times() -> None:
    timeline = build_timeline(_repaired_by_reboot())
    assert len(timeline.incidents) == 1
    inc = timeline.incidents[0]
    assert (inc.ttd_s, inc.tti_s, inc.ttr_s) == (12.0, 15.0, 90.0)
    assert inc.onset == at(0)
    assert inc.recovered_at == at(85)
    assert inc.repaired_at == at(90)
    assert inc.cause == "soft_lockup" and inc.category == "kernel" and inc.klass == "soft_lockup"
    assert inc.action_taken and not inc.open and not inc.expected
    assert [p.phase for p in inc.actions[0].phases] == ["intent", "started", "succeeded", "verified"]
    assert inc.budget.detect and inc.budget.identify and inc.budget.repair
    assert inc.diagnoses[0].evidence[0].summary == "soft lockup on CPU#3"
    node = timeline.nodes[0]
    assert [t.bad for t in node.probe_transitions] == [False, True, False]
    assert node.probe_transitions[1].at == at(0)
    s = timeline.summary
    assert s.ttd_s.p50 == 12.0 and s.tti_s.max == 15.0 and s.ttr_s.p95 == 90.0
    assert s.counts.met_1_5_10 == 1 and s.counts.repaired == 1 and s.counts.audit_records == 4


def test_without_an_action_repair_is_when_the_anomalies_resolved() -> None:
    a = firing("node-b", kind="disk_full", onset=5, detected=7, subject="/var")
    inc = build_timeline([a, resolved(a, t=705)]).incidents[0]
    assert (inc.ttd_s, inc.tti_s, inc.ttr_s) == (2.0, None, 700.0)
    assert inc.klass == "disk_full"  # no diagnosis: the anomaly kind
    assert inc.budget.repair is False and inc.budget.identify is None
    assert not inc.action_taken


def test_an_action_never_verified_leaves_the_incident_unrepaired() -> None:
    a = firing("node-c", kind="node_down", onset=0, detected=30)
    d = diagnosis("node-c", [a], t=40, cause="node_crash", category="hardware")
    msgs: list[TimelineMessage] = [
        a,
        d,
        record("node-c", t=41, phase="intent", diag=d),
        record("node-c", t=42, phase="started", diag=d),
    ]
    msgs += [record("node-c", t=300, phase="failed", diag=d), resolved(a, t=400)]
    inc = build_timeline(msgs).incidents[0]
    assert inc.action_taken and inc.ttr_s is None and inc.repaired_at is None
    assert inc.recovered_at == at(400)
    assert build_timeline(msgs).summary.counts.repaired == 0


def test_a_dry_run_is_no_action_taken() -> None:
    a = firing("node-d", kind="service_down", onset=0, detected=3, subject="kubelet")
    d = diagnosis("node-d", [a], t=5, cause="kubelet_down")
    msgs: list[TimelineMessage] = [
        a,
        d,
        record("node-d", t=6, phase="started", action="restart_service", diag=d, dry_run=True),
    ]
    msgs += [
        record("node-d", t=7, phase="succeeded", action="restart_service", diag=d, dry_run=True),
        resolved(a, t=50),
    ]
    inc = build_timeline(msgs).incidents[0]
    assert not inc.action_taken and inc.ttr_s == 50.0 and inc.actions[0].dry_run


def test_blocked_or_awaiting_approval_is_no_action_taken() -> None:
    a = firing("node-d", kind="node_down", onset=0, detected=3)
    d = diagnosis("node-d", [a], t=5, cause="node_crash")
    msgs: list[TimelineMessage] = [
        a,
        d,
        record("node-d", t=6, phase="blocked", diag=d),
        record("node-d", t=7, phase="awaiting_approval", diag=d),
    ]
    inc = build_timeline([*msgs, resolved(a, t=100)]).incidents[0]
    assert not inc.action_taken and inc.ttr_s == 100.0
    assert [p.phase for p in inc.actions[0].phases] == ["blocked", "awaiting_approval"]


def test_overlapping_anomalies_of_a_node_are_one_incident_and_later_ones_another() -> None:
    down = firing("node-e", kind="node_down", onset=100, detected=115)
    ready = firing("node-e", kind="node_not_ready", onset=110, detected=112)
    reboot = firing("node-e", kind="unexpected_reboot", onset=200, detected=205)  # fires while down is open
    later = firing("node-e", kind="high_load", onset=1000, detected=1010)
    other = firing("node-f", kind="node_down", onset=100, detected=101)
    msgs: list[TimelineMessage] = [
        down,
        ready,
        reboot,
        resolved(ready, t=150),
        resolved(reboot, t=210),
        resolved(down, t=300),
    ]
    msgs += [later, resolved(later, t=1100), other]
    timeline = build_timeline(msgs)
    e = [i for i in timeline.incidents if i.node == "node-e"]
    assert len(e) == 2
    assert sorted(a.kind for a in e[0].anomalies) == ["node_down", "node_not_ready", "unexpected_reboot"]
    assert e[0].ttd_s == 12.0  # first detection (not_ready at 112) − onset (100)
    assert e[0].ttr_s == 200.0 and e[0].recovered_at == at(300)
    assert e[1].kinds == ("high_load",) and e[1].ttd_s == 10.0
    f = [i for i in timeline.incidents if i.node == "node-f"]
    assert len(f) == 1 and f[0].open and f[0].ttr_s is None
    assert timeline.summary.counts.open == 1 and timeline.summary.counts.nodes_with_incidents == 2


def test_an_anomaly_starting_exactly_when_the_incident_resolved_joins_it() -> None:
    a = firing("node-g", kind="disk_full", onset=0, detected=1, subject="/")
    b = firing("node-g", kind="fd_exhaustion", onset=60, detected=61)
    inc = build_timeline([a, resolved(a, t=60), b, resolved(b, t=70)]).incidents
    assert len(inc) == 1 and inc[0].ttr_s == 70.0


def test_expected_cloud_maintenance_is_marked_and_can_be_left_out() -> None:
    ev = cloud_event("node-h", t=-600)
    a = firing("node-h", kind="cloud_maintenance", onset=0, detected=1, expected=True)
    d = diagnosis("node-h", [a], t=2, cause="host_maintenance_reboot", category="ops")
    msgs: list[TimelineMessage] = [ev, cloud_event("node-h", t=120, phase="completed"), a, d, resolved(a, t=120)]
    timeline = build_timeline(msgs)
    inc = timeline.incidents[0]
    assert inc.expected and inc.ttr_s == 120.0 and inc.category == "ops"
    assert [c.phase for c in inc.cloud_events] == ["scheduled", "completed"]
    assert timeline.summary.counts.expected == 1
    assert build_timeline(msgs, include_expected=False).incidents == ()


def test_a_resolved_diagnosis_does_not_count_as_identification() -> None:
    a = firing("node-i", kind="high_load", onset=0, detected=5)
    msgs: list[TimelineMessage] = [
        a,
        diagnosis("node-i", [a], t=400, cause="high_load", resolved_=True),
        resolved(a, t=399),
    ]
    inc = build_timeline(msgs).incidents[0]
    assert inc.tti_s is None and inc.cause is None and inc.klass == "high_load"


def test_a_recovered_verdict_identifies_the_incident_late() -> None:
    """The episode ended while no diagnoser ran; the next one said its verdict after the fact (resolved and
    recovered): that verdict is the incident's identification, however late."""
    a = firing("node-r", kind="unexpected_reboot", onset=0, detected=5)
    late = diagnosis("node-r", [a], t=60, cause="soft_lockup", category="kernel", resolved_=True)
    msgs: list[TimelineMessage] = [a, resolved(a, t=25), late.model_copy(update={"recovered": True})]
    inc = build_timeline(msgs).incidents[0]
    assert inc.tti_s == 60.0 and inc.cause == "soft_lockup"
    assert inc.diagnoses[0].recovered and inc.diagnoses[0].resolved


def test_a_window_starting_after_the_firing_still_yields_the_incident() -> None:
    a = firing("node-j", kind="readonly_fs", onset=-100, detected=-90, subject="/data")
    inc = build_timeline([resolved(a, t=50)]).incidents[0]
    assert inc.ttd_s == 10.0 and inc.ttr_s == 150.0 and inc.anomalies[0].firing_id is None


def test_the_class_function_decides_the_by_class_keys() -> None:
    a = firing("node-k", kind="node_down", onset=0, detected=20)
    b = firing("node-l", kind="disk_full", onset=0, detected=4, subject="/")
    c = firing("node-m", kind="disk_full", onset=0, detected=6, subject="/")

    def by_kind(i: Incident) -> str:
        return "+".join(i.kinds)

    s = build_timeline([a, b, c, resolved(b, t=10)], class_of=by_kind).summary
    assert list(s.by_class) == ["disk_full", "node_down"]
    assert s.by_class["disk_full"].count == 2 and s.by_class["disk_full"].ttd_s.max == 6.0
    assert s.by_class["disk_full"].ttr_s.p50 == 10.0  # only node-l is repaired


def test_same_messages_in_any_order_with_duplicates_give_identical_json() -> None:
    msgs = _repaired_by_reboot()
    a = firing("node-z", kind="disk_full", onset=30, detected=33, subject="/")
    msgs += [a, resolved(a, t=90), cloud_event("node-z", t=5)]
    reference = build_timeline(msgs).to_json()
    rng = random.Random(7)
    for _ in range(5):
        shuffled = msgs + rng.sample(msgs, 4)  # redeliveries
        rng.shuffle(shuffled)
        assert build_timeline(shuffled).to_json() == reference
    report = json.loads(reference)
    assert set(report["ttd_s"]) == {"p50", "p95", "max"}
    assert {"ttd_s", "tti_s", "ttr_s", "by_class", "counts", "incidents"} <= set(report)


def test_percentile_is_nearest_rank() -> None:
    ten = [float(x) for x in range(10, 0, -1)]
    assert percentile(ten, 50) == 5.0 and percentile(ten, 95) == 10.0 and percentile(ten, 10) == 1.0
    assert percentile([1.0, 2.0, 3.0, 4.0], 50) == 2.0
    assert percentile([7.0], 95) == 7.0
    assert percentile([], 50) is None
    with pytest.raises(ValueError, match="outside"):
        percentile([1.0], 0)


def test_an_audit_record_naming_nothing_known_is_kept_on_the_node() -> None:
    msgs: list[TimelineMessage] = [probe("node-n", 0), record("node-n", t=10, phase="intent", action_id="lonely")]
    timeline = build_timeline(msgs)
    assert timeline.incidents == ()
    assert timeline.nodes[0].unattached_actions[0].action_id == "lonely"


def test_escalation_alone_is_not_an_action_taken_so_recovery_repairs() -> None:
    """A rack partition is escalated, never acted on; it is repaired when the node comes back."""
    fire = firing("n", kind="node_down", onset=0, detected=10)
    esc = record("n", t=15, phase="succeeded", action="escalate", action_id="esc-1")
    incident = build_timeline([fire, resolved(fire, t=50), esc]).incidents[0]
    assert incident.action_taken is False
    assert incident.ttr_s == 50.0


def test_a_real_action_still_needs_verification() -> None:
    fire = firing("n", kind="node_down", onset=0, detected=10)
    reboot = record("n", t=15, phase="started", action="reboot")
    incident = build_timeline([fire, resolved(fire, t=50), reboot]).incidents[0]
    assert incident.action_taken is True
    assert incident.ttr_s is None


def _operator_reboot_after_an_unrelated_fault() -> list[TimelineMessage]:
    """node-o: a disk fills at 0 s and clears by itself at 100 s; at 200 s (inside the 15-min grace after
    that recovery) an operator's batch reboots the node; our own reboot shows as an expected anomaly."""
    disk = firing("node-o", kind="disk_full", onset=0, detected=3, subject="/var")
    op = operator_request("node-o", t=200)
    rebooted = firing("node-o", kind="unexpected_reboot", onset=230, detected=235, expected=True)
    return [
        disk,
        resolved(disk, t=100),
        op,
        record("node-o", t=201, phase="intent", diag=op, action="cordon", action_id="op-cordon"),
        record("node-o", t=202, phase="succeeded", diag=op, action="cordon", action_id="op-cordon"),
        record("node-o", t=210, phase="started", diag=op, action_id="op-reboot"),
        rebooted,
        record("node-o", t=260, phase="verified", action_id="op-reboot"),  # joined by its action id
        # a record naming neither the diagnosis nor a known action: its episode says whose it is
        record("node-o", t=261, phase="succeeded", action="uncordon", action_id="op-unc", episode_id=op.episode),
        # and one that only says its cause
        record("node-o", t=262, phase="verified", action="uncordon", action_id="op-unc2", cause="operator_request"),
        resolved(rebooted, t=300),
    ]


def test_an_operator_request_is_its_own_entry_and_never_joins_an_incident() -> None:
    timeline = build_timeline(_operator_reboot_after_an_unrelated_fault())
    disk, reboot = timeline.incidents
    # the disk incident keeps its own figures: no diagnosis, no action, repaired when it cleared
    assert disk.kinds == ("disk_full",) and disk.klass == "disk_full"
    assert disk.diagnoses == () and disk.actions == () and not disk.action_taken
    assert disk.ttr_s == 100.0
    # our own reboot is an expected incident of its own, repaired when its anomaly resolved
    assert reboot.expected and reboot.actions == () and reboot.ttr_s == 70.0
    (request,) = timeline.operator_requests
    assert request.node == "node-o" and request.requested_at == at(200)
    assert request.episode_id is not None and request.episode_id.startswith("batch:b-test:reboot:")
    assert request.request.cause == "operator_request"
    assert [a.action_id for a in request.actions] == ["op-cordon", "op-reboot", "op-unc", "op-unc2"]
    assert [p.phase for p in request.actions[1].phases] == ["started", "verified"]
    node = timeline.nodes[0]
    assert node.operator_request_ids == (request.request_id,)
    assert node.unattached_diagnoses == () and node.unattached_actions == ()
    counts = timeline.summary.counts
    assert counts.operator_requests == 1 and counts.incidents == 2 and counts.actions_taken == 0
    assert set(timeline.summary.by_class) == {"disk_full", "unexpected_reboot"}
    report = json.loads(timeline.to_json())
    assert [r["request_id"] for r in report["operator_requests"]] == [request.request_id]


def test_an_operator_request_on_a_quiet_node_is_no_incident() -> None:
    op = operator_request("node-q", t=10, action="cordon")
    timeline = build_timeline([op, record("node-q", t=11, phase="succeeded", diag=op, action="cordon")])
    assert timeline.incidents == () and timeline.summary.counts.incidents == 0
    assert len(timeline.operator_requests) == 1 and timeline.operator_requests[0].actions[0].action == "cordon"


def test_an_open_incident_is_repaired_when_verified_after_its_still_firing_anomalies() -> None:
    """A kernel fault the detector holds after the reboot that cured it: still firing at the window end,
    but the verification came after it fired, so the node was proven healthy."""
    hang = firing("node-r", kind="node_hang", onset=0, detected=10)
    kernel = firing("node-r", kind="kernel_fault", onset=2, detected=11)
    d = diagnosis("node-r", [hang, kernel], t=15, cause="soft_lockup", category="kernel")
    msgs: list[TimelineMessage] = [
        hang,
        kernel,
        d,
        record("node-r", t=16, phase="started", diag=d),
        resolved(hang, t=80),
        record("node-r", t=90, phase="verified", diag=d),
    ]
    inc = build_timeline(msgs).incidents[0]
    assert inc.open and inc.recovered_at is None
    assert inc.repaired_at == at(90) and inc.ttr_s == 90.0 and inc.budget.repair


def test_an_open_incident_with_an_anomaly_after_the_verification_is_not_repaired() -> None:
    """A second fault joins the incident after the first was verified and still fires at the window end:
    nobody proved the node healthy since, so the incident is not repaired (no ttr in replay, and the demo
    counts its faults unrepaired). Had it resolved inside the window, the verification would stand."""
    hang = firing("node-s", kind="node_hang", onset=0, detected=10)
    d = diagnosis("node-s", [hang], t=15, cause="soft_lockup", category="kernel")
    late = firing("node-s", kind="readonly_fs", onset=75, detected=100, subject="/data")
    msgs: list[TimelineMessage] = [
        hang,
        d,
        record("node-s", t=16, phase="started", diag=d),
        late,
        resolved(hang, t=80),
        record("node-s", t=90, phase="verified", diag=d),
    ]
    inc = build_timeline(msgs).incidents[0]
    assert inc.open and inc.action_taken and [a.kind for a in inc.anomalies] == ["node_hang", "readonly_fs"]
    assert inc.repaired_at is None and inc.ttr_s is None and inc.budget.repair is None
    assert build_timeline(msgs).summary.counts.repaired == 0
    closed = build_timeline([*msgs, resolved(late, t=130)]).incidents[0]
    assert not closed.open and closed.repaired_at == at(90) and closed.ttr_s == 90.0


def test_a_replaced_machine_is_repaired_at_the_replacement() -> None:
    """Machine rotation: a fatal MCE, cordon, drain, retire, replace (approved). The released instance's
    silence still fires at the window end; the incident is repaired when the replacement succeeded."""
    crash = firing("node-m", kind="unexpected_reboot", onset=0, detected=8)
    d = diagnosis("node-m", [crash], t=12, cause="hardware_crash", category="hardware")
    msgs: list[TimelineMessage] = [
        crash,
        d,
        record("node-m", t=13, phase="started", action="cordon", action_id="c", diag=d),
        record("node-m", t=14, phase="succeeded", action="cordon", action_id="c", diag=d),
        record("node-m", t=30, phase="succeeded", action="retire", action_id="r", diag=d),
        record("node-m", t=31, phase="awaiting_approval", action="replace", action_id="x", diag=d),
        record("node-m", t=120, phase="started", action="replace", action_id="x", diag=d),
        record("node-m", t=125, phase="succeeded", action="replace", action_id="x", diag=d),
        firing("node-m", kind="node_down", onset=126, detected=140),  # the released machine is gone
    ]
    inc = build_timeline(msgs).incidents[0]
    assert inc.open and inc.action_taken
    assert inc.repaired_at == at(125) and inc.ttr_s == 125.0 and inc.budget.repair
    # before the replacement succeeded, nothing repaired it
    pending = build_timeline(msgs[:6]).incidents[0]
    assert pending.repaired_at is None and pending.ttr_s is None


def test_the_html_report_draws_operator_requests_in_lanes_of_their_own(tmp_path: Path) -> None:
    quiet = operator_request("node-p", t=10, action="cordon")
    msgs = [*_operator_reboot_after_an_unrelated_fault(), quiet]
    path = tmp_path / "replay.html"
    write_replay_html(build_timeline(msgs), path=path, title="t", window={"since": None, "until": None})
    page = path.read_text(encoding="utf-8")
    # node-p has no incident, only the request: it still gets its timeline
    assert page.count("class='node-timeline'") == 2 and "data-node='prod-1/node-p'" in page
    assert "operator request" in page and "operator reboot" in page
    assert "2 incidents on 1 of 2 nodes (0 still open at the window end), 2 operator requests" in page


def test_an_agent_heartbeat_between_full_probes_is_no_recovery_in_the_probe_transitions() -> None:
    """The agent's heartbeats carry no services: a failed kubelet in the full probes before and after
    them stays one bad stretch, not bad → good → bad."""
    from nodeheal.schemas.probe import ServiceState

    def agent(t: float, seq: int, *, full: bool, kubelet: str = "failed") -> TimelineMessage:
        base = probe("node-h", t, seq=seq, source="agent").model_copy(update={"reachability": (), "ready": None})
        if not full:
            return base.model_copy(update={"full": False})
        return base.model_copy(update={"services": (ServiceState(name="kubelet", state=kubelet),)})  # type: ignore[arg-type]

    messages = [agent(0, 1, full=True, kubelet="active"), agent(5, 2, full=True), agent(10, 3, full=False)]
    messages += [agent(15, 4, full=False), agent(20, 5, full=True), agent(25, 6, full=True, kubelet="active")]
    [node] = build_timeline(messages).nodes
    assert [(t.bad, t.at) for t in node.probe_transitions] == [(False, at(0)), (True, at(5)), (False, at(25))]
