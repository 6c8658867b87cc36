"""A small `nodeheal demo` end to end, in the production configuration: the four real services as
processes under their per-role NATS credentials, the real node agent code on every simulated node, and
the report held against the simulator's ground truth and an independent referee of side effects."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from rich.console import Console

from nodeheal.sim.demo import DemoConfig, run_demo

pytestmark = [pytest.mark.nats, pytest.mark.slow]

CHEAP_FIXES = ("kubelet_crash", "runtime_crash", "ops_agent_crash", "disk_fill", "fd_leak")


@pytest.fixture(scope="module")
async def report(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    out = tmp_path_factory.mktemp("demo")
    cfg = DemoConfig(
        nodes=400,
        duration_s=45.0,
        # the rate gate keeps some reboots waiting past any settle period, so the demo always waits all of
        # it; the repairs asserted here take seconds, and a fault of the last seconds is still identified
        # within it on a loaded machine (an unidentified fault counts as a wrong cause)
        settle_s=45.0,
        probe_interval_s=2.0,
        faults_per_minute=30.0,
        seed=11,
        # the zone spike runs 63 s from 45 % of the duration, past this short run's settle; it is proven by
        # tests/integration/sim/test_zone_spike_found.py and the measured run in docs/demo.md
        zone_spike=False,
        report_path=out / "report.html",
        run_dir=out / "run",
        quiet=True,
    )
    return await run_demo(cfg, console=Console(stderr=True, quiet=True))


def test_every_injected_fault_is_detected(report: dict[str, Any]) -> None:
    faults = report["faults"]
    assert faults["injected"] >= 40  # every class, every kernel class, the bad kernel, a rack
    missed = [r for r in report["fault_rows"] if not r["detected"]]
    assert not missed, missed


def test_every_fault_is_detected_within_a_minute_of_its_injection(report: dict[str, Any]) -> None:
    """1-5-10's first figure as the fleet feels it: from the moment the simulator broke the node, which
    includes the time until an agent's full probe carries a dead service or a full disk."""
    late = [(r["fault_class"], r["node"], r["ttd_from_injection_s"]) for r in report["fault_rows"] if r["detected"]]
    late = [row for row in late if row[2] is None or row[2] > 60.0]
    assert not late, late
    assert report["detected_after_budget_from_injection"] == 0
    assert report["ttd_from_injection_s"]["max"] <= 60.0


def test_causes_are_right_on_at_least_95_percent(report: dict[str, Any]) -> None:
    wrong = [
        (r["fault_class"], r["kernel_class"], r["cause"], r["expected_causes"])
        for r in report["fault_rows"]
        if not r["diagnosed_correctly"]
    ]
    assert report["faults"]["diagnosed_correctly"] / report["faults"]["injected"] >= 0.95, wrong


def test_no_budget_exceeded_and_no_reboot_inside_the_partition(report: dict[str, Any]) -> None:
    policy = report["policy"]
    assert policy["budget_violations"] == 0
    assert policy["reboots_in_partition"] == 0
    partition = [r for r in report["fault_rows"] if r["fault_class"] == "rack_partition"]
    assert partition, "the storm scenario ran"
    assert all(r["cause"] == "rack_partition" for r in partition)


SAFETY = (
    "actions_without_intent",
    "disrupted_twice_for_one_fault",
    "reboots_verified_without_new_boot",
    "uncordons_while_host_event_pending",
    "redeploys_for_reboot_events",
    "budget_exceedances",
    "reboots_in_partition",
    "replacements_without_approval",
)


def test_the_independent_referee_finds_no_unsafe_action(report: dict[str, Any]) -> None:
    safety = report["safety"]
    assert {k: safety[k] for k in SAFETY} == dict.fromkeys(SAFETY, 0), safety["examples"]
    seen = safety["side_effects_seen"]
    assert seen["cloud_api_calls"].get("RebootInstance", 0) > 0, seen  # the referee had something to judge
    assert seen["node_commands"], seen


def test_every_process_ran_as_its_role_without_a_permission_violation(report: dict[str, Any]) -> None:
    security = report["security"]
    assert security["auth_mode"] == "per-role"
    assert security["permission_violations"] == 0, security["samples"]


def test_cheap_local_faults_are_repaired_in_place(report: dict[str, Any]) -> None:
    for klass in CHEAP_FIXES:
        rows = [r for r in report["fault_rows"] if r["fault_class"] == klass]
        assert rows, klass
        assert all(r["repaired"] for r in rows), rows
        assert all(set(r["actions"]) & {"restart_service", "clean_disk"} for r in rows), rows


def test_report_has_the_documented_shape(report: dict[str, Any]) -> None:
    for key in ("ttd_s", "ttd_from_injection_s", "tti_s", "ttr_s"):
        assert set(report[key]) >= {"p50", "p95", "max"}
        assert report[key]["p95"] is not None
    assert set(report["faults"]) >= {"injected", "detected", "diagnosed_correctly", "repaired"}
    assert set(report["policy"]) >= {"budget_violations", "reboots_in_partition", "blocked"}
    assert set(report["fleet"]) >= {"crash_rate", "schedulable_rate", "online_rate"}
    assert isinstance(report["systematic_risks"], list)
    for klass, figures in report["by_class"].items():
        assert set(figures) >= {"ttd_s", "ttd_from_injection_s", "tti_s", "ttr_s"}, klass


def test_the_bad_kernel_is_found_as_a_systematic_risk(report: dict[str, Any]) -> None:
    assert report["bad_kernel_found"], report["systematic_risks"]


def test_the_html_report_has_its_plots(report: dict[str, Any]) -> None:
    html = Path(report["run_dir"]).parent.joinpath("report.html").read_text()
    assert "plotly" in html
    assert "1-5-10" in html
