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


async def test_wire_bench_prober_rounds_store_and_drain_every_node_result_in_both_forms() -> None:
    from nodeheal.sim.bench.wire import run_prober_bench

    with EmbeddedNats() as server:
        pid = server_pid(server.url)
        assert pid is not None
        result = await run_prober_bench(
            url=server.url, pid=pid, auth=BenchAuth(), nodes=60, rounds=2, per_message=25, batch=50
        )
    per_node, batched = result["variants"]["one_message_per_node"], result["variants"]["25_nodes_per_message"]
    assert per_node["messages"] == per_node["stored"] == per_node["drained"] == 120
    assert batched["messages"] == batched["stored"] == batched["drained"] == 2 * 3  # 25 + 25 + 10 per round
    assert batched["bytes_per_node_result"] < per_node["bytes_per_node_result"]
    assert per_node["node_results"] == batched["node_results"] == 120


async def test_wire_bench_fleet_sends_the_probers_results_in_batches() -> None:
    from nodeheal.sim.bench.wire import _fleet

    with EmbeddedNats() as server:
        pid = server_pid(server.url)
        assert pid is not None
        single = await _fleet(
            server.url,
            pid,
            BenchAuth(),
            nodes=40,
            interval_s=0.5,
            prober_interval_s=2.0,
            seconds=3.0,
            batch=50,
            prober_batched=False,
            partitions=2,
        )
        batched = await _fleet(
            server.url,
            pid,
            BenchAuth(),
            nodes=40,
            interval_s=0.5,
            prober_interval_s=2.0,
            seconds=3.0,
            batch=50,
            prober_batched=True,
            partitions=2,
        )
    assert 1.15 <= single["messages_per_node_interval"] <= 1.4  # one prober probe per four agent probes
    assert single["prober_results_in_batches"] == 0
    # the same results, a few messages per tick and partition
    assert batched["prober_results_in_batches"] >= batched["agent_probes"] / 5
    assert batched["messages_per_node_interval"] < 1.1
    assert single["drained"] >= single["messages"] and batched["drained"] >= batched["messages"]
