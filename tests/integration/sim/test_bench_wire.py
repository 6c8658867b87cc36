"""`nodeheal bench wire` against a real nats-server: every variant stores and drains the whole backlog of
real agent probes, and the server's own CPU is what is read (its process, not this one)."""

from __future__ import annotations

import pytest

from nodeheal.sim.bench.secure import BenchAuth
from nodeheal.sim.bench.wire import run_bench, server_cpu_s
from nodeheal.sim.embedded import EmbeddedNats, server_pid

pytestmark = [pytest.mark.nats]


async def test_wire_bench_stores_and_drains_every_probe_of_each_variant() -> None:
    with EmbeddedNats() as server:
        pid = server_pid(server.url)
        assert pid == server.pid
        assert server_cpu_s(pid) >= 0
        result = await run_bench(url=server.url, pid=pid, auth=BenchAuth(), nodes=10, count=400, batch=100)
    assert result["probe_bytes_median"] > 500  # the real agent's probe, not a stub
    assert set(result["variants"]) == {"with_nats_msg_id", "without_nats_msg_id"}
    for variant in result["variants"].values():
        assert variant["stored"] == 400
        assert variant["drained_explicit_acks"] == 400
        assert variant["drained_ack_all_per_chunk"] == 400
        assert variant["server_us_per_probe_store"] >= 0
        assert variant["server_rss_mb_after_store"] > 0
    assert server_pid("nats://127.0.0.1:1") is None
