"""The diagnoser core's cost per anomaly and per correlation run at a fleet size (docs/BENCHMARKS.md,
"diagnoser at 50,000 nodes"). Pure `Diagnoser`, driven as `handlers.py` drives it: each anomaly is
`on_anomaly` then `evaluate` of every node it touched; with `--inventory-churn` an inventory put (an
unchanged record, as the inventory watch re-delivers) comes before every other anomaly; a correlation
run is `correlate` + `kpis`, as the service's tick does every `CORRELATION_INTERVAL_S`.

    uv run python deploy/tools/diagnoser_cost.py --nodes 50000 [--inventory-churn] [--profile]
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import sys
import time
from datetime import timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tests.unit.diagnoser import scenarios as sc

from nodeheal.diagnoser.kb import Matcher, load_knowledge_base
from nodeheal.diagnoser.reasoning import Diagnoser
from nodeheal.sim.fleet import FleetSpec, build_inventory

KINDS = ("node_down", "node_hang", "kernel_fault", "disk_full", "service_down", "node_down")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--nodes", type=int, default=50_000)
    parser.add_argument("--anomalies", type=int, default=60, help="firing anomalies (every third also resolves)")
    parser.add_argument("--inventory-churn", action="store_true")
    parser.add_argument("--profile", action="store_true", help="print the cProfile top functions too")
    args = parser.parse_args()
    inventory = build_inventory(FleetSpec(nodes=args.nodes, cluster=sc.CLUSTER))
    diag = Diagnoser(matcher=Matcher(load_knowledge_base()))
    for record in inventory:
        diag.on_inventory(record)
    lines = sc.sample_lines(next(c for _, c, _ in sc.load_samples()))
    msgs = []
    for i in range(args.anomalies):
        node, kind, at = inventory[(i * 997) % args.nodes].node, KINDS[i % len(KINDS)], sc.T0 + timedelta(seconds=i)
        subject = "kubelet" if kind == "service_down" else None
        msgs.append(sc.anomaly(node, kind, at=at, lines=lines if kind == "kernel_fault" else None, subject=subject))
        if i % 3 == 2:
            resolved = sc.anomaly(
                node, kind, at=at + timedelta(seconds=1), status="resolved", onset=at, subject=subject
            )
            msgs.append(resolved)
    diag.fleet.peers(f"{sc.CLUSTER}/{inventory[0].node}", "rack")  # any lazily built index: built before timing
    profile = cProfile.Profile()
    if args.profile:
        profile.enable()
    started = time.perf_counter()
    for j, msg in enumerate(msgs):
        if args.inventory_churn and j % 2 == 0:
            diag.on_inventory(inventory[(j * 31) % args.nodes])
        for key in sorted(diag.on_anomaly(msg)):
            diag.evaluate(key, now=msg.detected_at + timedelta(seconds=30))
    per_anomaly = (time.perf_counter() - started) / len(msgs)
    started = time.perf_counter()
    runs = 3
    for i in range(runs):
        now = sc.T0 + timedelta(seconds=100 + 5 * i)
        diag.correlate(now=now, cluster=sc.CLUSTER)
        diag.kpis(now=now)
    per_run = (time.perf_counter() - started) / runs
    profile.disable()
    sys.stdout.write(
        f"nodes={args.nodes} anomalies={len(msgs)} churn={args.inventory_churn}:"
        f" {per_anomaly * 1e3:.2f} ms/anomaly, correlation run {per_run * 1e3:.0f} ms,"
        f" active findings {len(diag.fleet.findings)}\n"
    )
    if args.profile:
        pstats.Stats(profile).sort_stats("cumulative").print_stats(15)


if __name__ == "__main__":
    main()
