"""The demo report's systematic risks carry each finding's own message, once per finding, as last said."""

from __future__ import annotations

from datetime import UTC, datetime

from nodeheal.schemas.finding import FleetFinding
from nodeheal.sim.demo_report import systematic_risks


def _finding(**kw: object) -> dict[str, object]:
    base: dict[str, object] = dict(
        cluster="prod-1",
        finding_id="f-1",
        kind="rate_outlier",
        dimension="kernel",
        value="5.10.134-bad",
        scope="any",
        group_events=9,
        group_nodes=40,
        fleet_events=12,
        fleet_nodes=2000,
        group_rate=0.225,
        rest_rate=0.0015,
        ratio=150.0,
        window_s=600,
        detected_at=datetime(2026, 12, 2, 3, 0, tzinfo=UTC),
        message="kernel 5.10.134-bad crashes 150x the rest of the fleet",
    )
    base.update(kw)
    return FleetFinding.model_validate(base).model_dump(mode="json", by_alias=True)


def test_a_risk_is_summarised_by_the_findings_message_and_counted_once() -> None:
    raised = _finding()
    updated = _finding(group_events=10, message="kernel 5.10.134-bad crashes 160x the rest of the fleet")
    other = _finding(finding_id="f-2", dimension="zone", value="zone-b", message="zone-b crash rate 4x")
    cleared = _finding(finding_id="f-2", cleared=True, message="zone-b back to normal")

    risks = systematic_risks([raised, updated, other, cleared], bad_kernel="5.10.134-bad")

    assert [(r["dimension"], r["summary"]) for r in risks] == [
        ("kernel", "kernel 5.10.134-bad crashes 160x the rest of the fleet"),
        ("zone", "zone-b crash rate 4x"),
    ]
    assert [r["is_injected_bad_kernel"] for r in risks] == [True, False]
    assert [r["cleared_during_run"] for r in risks] == [False, True]


def test_a_grown_finding_is_reported_with_its_grown_node_set() -> None:
    """The diagnoser says a finding again when it names new nodes (same finding_id); the report shows the
    last set, not the one it was raised with."""
    first = _finding(kind="down_spike", dimension="zone", value="z1", affected_nodes=["n1", "n2"])
    grown = _finding(kind="down_spike", dimension="zone", value="z1", affected_nodes=["n1", "n2", "n3", "n4"])
    (risk,) = systematic_risks([first, grown], bad_kernel=None)
    assert risk["affected_nodes"] == 4
