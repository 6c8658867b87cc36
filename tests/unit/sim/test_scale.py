"""What the demo says about its own pace and size: how many probe shards it starts, and the one line a
run that could not keep up ends with."""

from __future__ import annotations

import os

from nodeheal.sim.scale import Mark, ProcessMeter, auto_detector_replicas, auto_sim_processes, fell_behind, rates


def test_small_fleets_probe_in_the_demo_process_and_large_ones_in_shards() -> None:
    assert auto_sim_processes(nodes=5000, interval_s=5.0, cpus=2) == 1
    assert auto_sim_processes(nodes=50_000, interval_s=5.0, cpus=2) == 2
    assert auto_sim_processes(nodes=50_000, interval_s=5.0, cpus=16) == 4
    assert auto_sim_processes(nodes=50_000, interval_s=5.0, cpus=1) == 2  # never one shard: that is no shard


def test_a_fleet_above_one_detectors_ceiling_gets_detector_replicas() -> None:
    assert auto_detector_replicas(nodes=5000, interval_s=5.0, cpus=2) == 1  # 1,500 probes/s
    assert auto_detector_replicas(nodes=50_000, interval_s=5.0, cpus=2) == 2  # 15,000 probes/s (prober every 10 s)
    assert auto_detector_replicas(nodes=35_000, interval_s=5.0, cpus=2) == 2  # 10,500: 7,000 + 3,500
    assert auto_detector_replicas(nodes=32_000, interval_s=5.0, cpus=2) == 1  # 9,600: not 12,800 (2 per interval)
    assert auto_detector_replicas(nodes=50_000, interval_s=5.0, cpus=8) == 2
    assert auto_detector_replicas(nodes=50_000, interval_s=2.0, cpus=2) == 2  # never more than the CPUs


def _marks(*, detector_acked: int, pending: int) -> tuple[Mark, Mark]:
    first = Mark(
        at=0.0,
        streams={"PROBES": {"last_seq": 0, "messages": 0, "bytes": 0}},
        consumers={"PROBES/detector": {"delivered": 0, "acked": 0, "pending": 0, "ack_pending": 0}},
    )
    last = Mark(
        at=10.0,
        streams={"PROBES": {"last_seq": 200_000, "messages": 200_000, "bytes": 1}},
        consumers={
            "PROBES/detector": {
                "delivered": detector_acked,
                "acked": detector_acked,
                "pending": pending,
                "ack_pending": 0,
            }
        },
    )
    return first, last


def test_a_run_that_kept_up_says_nothing() -> None:
    flow = rates(*_marks(detector_acked=200_000, pending=0))
    assert flow["streams"]["PROBES"]["in_per_s"] == 20_000
    assert flow["consumers"]["PROBES/detector"]["through_per_s"] == 20_000
    sim = {"effective_interval_s": 5.02, "effective_interval_max_s": 5.4}
    assert fell_behind(interval_s=5.0, sim=sim, flow=flow, processes={"over_limit": []}) is None


def test_what_fell_behind_is_named_with_how_far_in_one_line() -> None:
    flow = rates(*_marks(detector_acked=140_000, pending=60_000))
    processes = {
        "over_limit": ["nats-server"],
        "per_process": {"nats-server": {"peak_rss_mb": 5000.0}},
        "limit_mb": 4096,
    }
    sim = {"effective_interval_s": 8.0, "effective_interval_max_s": 9.1}
    line = fell_behind(interval_s=5.0, sim=sim, flow=flow, processes=processes)
    assert line is not None
    assert "\n" not in line
    # the interval the nodes really got, and what share of the requested rate that is
    assert "simulator probed every node every 8.0 s on average, not every 5 s (62% of the" in line
    assert "the longest gap 9.1 s" in line
    assert "PROBES/detector ended 60,000 probes (3 s) behind" not in line  # 3 s < two intervals: kept up
    assert "nats-server peaked at 5,000 MB" in line
    slower = rates(*_marks(detector_acked=0, pending=300_000))
    line = fell_behind(interval_s=5.0, sim={}, flow=slower, processes={"over_limit": []})
    assert line == "consumer PROBES/detector ended 300,000 probes (15 s) behind"
    # kept the interval on average, but one node waited long enough to look silent
    starved = {"effective_interval_s": 5.1, "effective_interval_max_s": 13.0}
    line = fell_behind(interval_s=5.0, sim=starved, flow=flow, processes={"over_limit": []})
    assert line is not None and line.startswith("simulator left a node 13.0 s between two probes")


def test_every_process_is_measured_by_its_peak_resident_set() -> None:
    meter = ProcessMeter(lambda: {"demo": os.getpid(), "gone": None})
    ballast = bytearray(64 * 1024 * 1024)
    ballast[::4096] = b"x" * len(ballast[::4096])
    meter.sample()
    del ballast
    meter.sample()
    section = meter.section(limit_mb=32.0)
    assert set(section["per_process"]) == {"demo"}
    assert section["per_process"]["demo"]["peak_rss_mb"] >= 64
    assert section["over_limit"] == ["demo"]
