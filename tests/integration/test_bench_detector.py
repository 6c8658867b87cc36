"""`nodeheal bench detector` measures the production configuration by default: a nats-server with TLS and
deploy/nats/natsauth.py's per-role users, every client of the run connected that way. A tiny run (the
numbers themselves belong in docs/BENCHMARKS.md, not in a test)."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from nodeheal.cli.main import cli

pytestmark = [pytest.mark.nats, pytest.mark.slow]

TINY = ["--nodes", "50", "--rounds", "2", "--seconds", "1", "--rate", "100", "--raw-count", "1000", "--json"]


def test_bench_detector_runs_in_the_production_configuration() -> None:
    result = CliRunner().invoke(cli, ["bench", "detector", *TINY])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["config"] == {"tls": True, "creds": True}
    # the detector user consumed the whole backlog the prober user published
    assert report["backlog_stored"] == report["backlog_probes"] == 100
    assert report["drain"]["probes"] == 100
    assert report["raw_nats_msgs_per_s"] > 0
    assert report["latency"]["anomalies_measured"] > 0


def test_bench_detector_against_a_given_server_needs_insecure() -> None:
    result = CliRunner().invoke(cli, ["bench", "detector", "--nats-url", "nats://127.0.0.1:1", *TINY])
    assert result.exit_code == 2
    assert "--insecure" in result.output
