"""`nodeheal bench agent --shard`: one probe shard's loop, in the production configuration (per-role users,
TLS) against its own nats-server, publishes the real agent's probes into PROBES and reports its CPU per
agent probe (the prober left out of the window)."""

from __future__ import annotations

import pytest

from nodeheal.sim.bench.shard import run_shard_bench

pytestmark = [pytest.mark.nats]


def test_shard_bench_publishes_agent_probes_into_probes_and_reports_cpu_per_probe() -> None:
    result = run_shard_bench(nodes=500, interval_s=1.0, seconds=2.0)
    assert result["config"] == {"tls": True, "creds": True, "agents_per_connection": 500}
    assert result["agent_probes"] >= 500  # about one round of the 500 nodes per second
    assert result["prober_probes"] == 0  # the figure is per agent probe
    assert (
        result["stored_in_probes"] >= result["agent_probes"] + 500
    )  # the window's, the warm-up's and the stream got them
    assert result["cpu_us_per_probe"] > 0
    assert result["probes_per_cpu_s"] > 0
