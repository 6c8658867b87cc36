"""`compare` lists a verdict that comes at another time (tti) even when detection, cause and action agree: a rule
change that only delays or hastens the diagnosis (a longer hold, a crash-report wait) was reported as no
difference at all."""

from __future__ import annotations

from nodeheal.cli.timeline import build_timeline
from nodeheal.cli.whatif import compare
from tests.unit.replay.factories import diagnosis, firing, record


def _timeline(identified_s: float | None) -> object:
    down = firing("node-a", kind="node_down", onset=0, detected=5)
    messages: list[object] = [down]
    if identified_s is not None:
        messages.append(diagnosis("node-a", [down], t=identified_s, cause="node_crash", category="hardware"))
    return build_timeline(messages)  # type: ignore[arg-type]


def _diffs(recorded_s: float | None, what_if_s: float | None) -> list[tuple[str, float | None]]:
    recorded, what_if = _timeline(recorded_s), _timeline(what_if_s)
    # no recorded action and no planned one: only the verdict's time is compared here
    return [(d.kind, d.delta_s) for d in compare(recorded, what_if, plans={})]  # type: ignore[arg-type]


def test_a_later_verdict_is_a_difference() -> None:
    assert _diffs(65, 245) == [("later_identification", 180.0)]
    assert _diffs(245, 65) == [("earlier_identification", -180.0)]


def test_the_same_verdict_time_is_no_difference() -> None:
    assert _diffs(65, 65) == []


def test_a_verdict_given_or_no_longer_given_is_a_difference() -> None:
    assert [k for k, _ in _diffs(65, None)][:1] == ["not_identified"]
    assert [k for k, _ in _diffs(None, 65)][:1] == ["newly_identified"]


def test_milliseconds_are_the_same_verdict_time() -> None:
    """An unchanged-rules what-if of a demo listed 1–14 ms differences as earlier detections / verdicts."""
    assert _diffs(65.0, 65.014) == []
    assert _diffs(65.0, 66.5) == [("later_identification", 1.5)]


def test_the_same_detection_within_milliseconds_is_no_difference() -> None:
    recorded = build_timeline([firing("node-a", kind="node_down", onset=0, detected=5)])
    what_if = build_timeline([firing("node-a", kind="node_down", onset=0, detected=5.012)])
    later = build_timeline([firing("node-a", kind="node_down", onset=0, detected=7)])
    assert compare(recorded, what_if, plans={}) == []
    assert [(d.kind, d.delta_s) for d in compare(recorded, later, plans={})] == [("later_detection", 2.0)]


def test_a_live_budget_refusal_is_not_a_rule_difference() -> None:
    """A `blocked` record (over budget, the storm brake) is a live check the what-if does not run: under unchanged
    rules it was reported as `unblocked_action`. Waiting for approval is the plan's, and still compared."""
    a = firing("node-a", kind="node_down", onset=0, detected=10)
    d = diagnosis("node-a", [a], t=20, cause="node_hang")
    blocked = record("node-a", t=21, phase="blocked", action="cordon", diag=d, action_id="act-c")
    blocked = blocked.model_copy(update={"reason": "over budget: budget.cluster: *: 3 of 3 in use (size 60)"})
    waiting = record("node-a", t=21, phase="awaiting_approval", action="cordon", diag=d, action_id="act-c")
    sandbox = build_timeline([a, d])
    plans = {d.id: ("cordon", False, ())}
    assert compare(build_timeline([a, d, blocked]), sandbox, plans=plans) == []
    assert [x.kind for x in compare(build_timeline([a, d, waiting]), sandbox, plans=plans)] == ["unblocked_action"]
