"""`nodeheal bench remediator --storm`, `nodeheal bench detector-storm` and `nodeheal bench cloud-read` on tiny
fleets: they run, every diagnosis / node / cloud event is accounted for, and the remediator's digest is the same
on a second run (its decisions do not depend on the code's speed: the simulated clock). The numbers belong in
docs/BENCHMARKS.md."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from nodeheal.cli.main import cli

pytestmark = [pytest.mark.nats, pytest.mark.slow]


def run(*args: str) -> dict[str, object]:
    result = CliRunner().invoke(cli, ["bench", *args, "--json"])
    assert result.exit_code == 0, result.output
    report: dict[str, object] = json.loads(result.stdout.strip().splitlines()[-1])
    return report


def test_bench_remediator_storm_decides_the_same_twice() -> None:
    first = run("remediator", "--nodes", "2000", "--storm", "60")
    second = run("remediator", "--nodes", "2000", "--storm", "60")
    assert first["verdict_digest"] == second["verdict_digest"]
    assert first["handled"] == first["diagnoses"] + first["redelivered"]  # type: ignore[operator]
    assert first["audit_records"]
    assert "cordon/blocked" in first["records"]  # type: ignore[operator]  # the storm guard was reached


def test_bench_detector_storm_publishes_every_silent_node() -> None:
    report = run("detector-storm", "--nodes", "300")
    assert report["anomalies_published"] == 299
    assert report["loop_turns_watched"]


def test_bench_cloud_read_reads_every_stored_event_and_keeps_the_host_events() -> None:
    report = run("cloud-read", "--messages", "400", "--nodes", "100", "--host-share", "0.25", "--repeat", "2")
    assert report["stored"] == report["read"] == 400
    assert report["host_events_kept"] == 100  # every fourth a reboot notice; the state changes are not kept
    assert len(report["wall_s_runs"]) == 2  # type: ignore[arg-type]
