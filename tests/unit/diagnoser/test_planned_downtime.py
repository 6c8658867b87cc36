"""An orderly shutdown or reboot the node logged (kured, an admin's `reboot`, an update manager; not ours) is not a
fault to repair. Before, the node got the default ladder (cordon, drain, reboot) while it went down, and again when
it came back (`planned_reboot`): a node rebooted on purpose was rebooted by nodeheal too."""

from __future__ import annotations

from nodeheal.diagnoser.rules import DecisionConfig
from tests.unit.diagnoser.scenarios import anomaly, later, sample_lines
from tests.unit.diagnoser.test_decisions import actions, make, run

GRACE_S = DecisionConfig().planned_grace.total_seconds()


def shutdown_logged(at_s: float, *, subject: str = "planned") -> object:
    """The detector's kernel_fault of a real orderly-shutdown excerpt (tests/data/kernel-log-samples.jsonl)."""
    return anomaly("n1", "kernel_fault", at=later(at_s), subject=subject, lines=sample_lines("planned_shutdown_reboot"))


def test_a_node_dark_after_an_orderly_shutdown_is_not_judged_within_the_grace() -> None:
    diag = make()
    diag.on_anomaly(shutdown_logged(0))  # type: ignore[arg-type]
    diag.on_anomaly(anomaly("n1", "node_down", at=later(40), onset=later(10)))
    out = diag.evaluate("prod-1/n1", now=later(60))
    assert out.diagnosis is None and out.hold_until == later(GRACE_S)
    # still dark when the grace ends: an ordinary dark node, with its ordinary ladder
    late = run(diag, "n1", GRACE_S + 1)
    assert late.cause not in ("planned_reboot", "planned_shutdown_reboot") and "reboot" in actions(late)


def test_a_node_back_from_an_orderly_reboot_has_nothing_to_repair() -> None:
    diag = make()
    diag.on_anomaly(shutdown_logged(0))  # type: ignore[arg-type]
    diag.on_anomaly(anomaly("n1", "unexpected_reboot", at=later(200)))
    d = run(diag, "n1", 210)
    assert (d.cause, d.category, actions(d)) == ("planned_reboot", "ops", ["none"])


def test_a_crash_reports_shutdown_lines_count_as_the_detectors_do() -> None:
    """The previous boot's journal in a crash report opens an episode named by its class."""
    diag = make()
    diag.on_anomaly(shutdown_logged(0, subject="planned_shutdown_reboot"))  # type: ignore[arg-type]
    diag.on_anomaly(anomaly("n1", "unexpected_reboot", at=later(200)))
    assert actions(run(diag, "n1", 210)) == ["none"]


def test_another_fault_next_to_the_shutdown_lines_is_judged_at_once() -> None:
    diag = make()
    diag.on_anomaly(shutdown_logged(0))  # type: ignore[arg-type]
    diag.on_anomaly(anomaly("n1", "disk_full", at=later(20), subject="/"))
    d = run(diag, "n1", 30)
    assert d.cause != "planned_reboot" and actions(d) != ["none"]


def test_a_service_still_down_after_the_grace_is_repaired() -> None:
    diag = make()
    diag.on_anomaly(shutdown_logged(0))  # type: ignore[arg-type]
    diag.on_anomaly(anomaly("n1", "service_down", at=later(30), subject="kubelet"))
    assert diag.evaluate("prod-1/n1", now=later(60)).hold_until == later(GRACE_S)
    d = run(diag, "n1", GRACE_S + 1)
    assert "restart_service" in actions(d), actions(d)
