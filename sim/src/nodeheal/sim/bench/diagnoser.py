"""`nodeheal bench diagnoser --storm N`: the diagnoser core under a silence storm.

A fleet from the simulator's generator (`--nodes`, 50,000 by default); `--storm N` node_down anomalies
over the nodes of one zone (shuffled by `--seed`), `--spacing-ms` apart by `detected_at` — a machine
whose probes fall behind makes the detector raise exactly this. Every `--resolve-every`-th arrival
also brings an earlier dark node back (its node_down resolves).

The pure `reasoning.Diagnoser`, driven as `handlers.py` drives it, on a simulated clock (the
anomalies' own times): each anomaly is `on_anomaly` then `evaluate` of every node it touched (a held
verdict is remembered with its hold); every `tick_s` the held verdicts that are due are evaluated,
and every `correlation_interval_s` a correlation run (`correlate` + `kpis`) comes first, as the
service's tick does. No NATS: this is the cost of the decisions alone, what the service adds on top
of its transport.

Reports anomalies/s (wall time of everything, ticks included), ms per anomaly (the anomaly path alone:
`on_anomaly` + `evaluate` of the touched nodes; wall and CPU — on a shared machine the CPU time is the
steadier figure), the cost of the ticks, and a digest of every verdict
(cause → count, and a hash of the (node, cause) sequence) so two versions of the code can be
compared for identical decisions.
"""

from __future__ import annotations

import cProfile
import hashlib
import io
import pstats
import random
import time
from collections import Counter
from datetime import UTC, datetime, timedelta
from typing import Any

from nodeheal.diagnoser.kb import Matcher, load_knowledge_base
from nodeheal.diagnoser.reasoning import Diagnoser
from nodeheal.schemas.anomaly import Anomaly
from nodeheal.schemas.diagnosis import Diagnosis
from nodeheal.schemas.ids import deterministic_id
from nodeheal.sim.fleet import FleetSpec, build_inventory

T0 = datetime(2026, 11, 1, 12, 0, 0, tzinfo=UTC)
CLUSTER = "bench"
TICK_S = 0.5  # DiagnoserSettings.tick_s
CORRELATION_INTERVAL_S = 5.0  # DiagnoserSettings.correlation_interval_s


def node_down(node: str, *, at: datetime, status: str = "firing", onset: datetime | None = None) -> Anomaly:
    key = f"{CLUSTER}/{node}/node_down/-"
    fault_onset = onset or at
    return Anomaly.model_validate(
        {
            "id": deterministic_id(key, status, fault_onset.isoformat(), prefix="anomaly-"),
            "time": at,
            "cluster": CLUSTER,
            "node": node,
            "anomaly_key": key,
            "kind": "node_down",
            "status": status,
            "severity": "critical",
            "fault_onset": fault_onset,
            "detected_at": at,
            "resolved_at": at if status == "resolved" else None,
        }
    )


def storm_messages(nodes: list[str], *, storm: int, spacing: timedelta, resolve_every: int, seed: int) -> list[Anomaly]:
    """`storm` node_down arrivals over `nodes` (shuffled), every `resolve_every`-th followed by the
    resolution of the node that went dark `resolve_every` arrivals earlier."""
    chosen = random.Random(seed).sample(nodes, min(storm, len(nodes)))
    msgs: list[Anomaly] = []
    onsets: list[datetime] = []
    for i, node in enumerate(chosen):
        at = T0 + spacing * i
        onset = at - timedelta(seconds=10)
        onsets.append(onset)
        msgs.append(node_down(node, at=at, onset=onset))
        if resolve_every and i % resolve_every == resolve_every - 1 and i >= resolve_every:
            back = i - resolve_every
            msgs.append(node_down(chosen[back], at=at, status="resolved", onset=onsets[back]))
    return msgs


class _Driver:
    """The service's loop on a simulated clock (handlers.py `_on_message`, `_evaluate`, `tick`)."""

    def __init__(self, diag: Diagnoser) -> None:
        self.diag = diag
        self.held: dict[str, datetime] = {}
        self.verdicts: list[tuple[str, str, bool]] = []
        self.diagnoses: list[Diagnosis] = []  # what the service would publish, in order (`bench remediator`)
        self.evaluations = 0
        self.last_correlation: datetime | None = None
        self.correlation_runs = 0

    def evaluate(self, keys: set[str], now: datetime) -> None:
        for key in sorted(keys):
            self.evaluations += 1
            outcome = self.diag.evaluate(key, now=now)
            if outcome.hold_until is not None:
                self.held[key] = outcome.hold_until
                continue
            self.held.pop(key, None)
            if outcome.diagnosis is not None:
                self.verdicts.append((key, outcome.diagnosis.cause, outcome.diagnosis.resolved))
                self.diagnoses.append(outcome.diagnosis)

    def tick(self, now: datetime) -> None:
        due = {k for k, t in self.held.items() if t <= now}
        last = self.last_correlation
        if last is None or (now - last).total_seconds() >= CORRELATION_INTERVAL_S:
            self.last_correlation = now
            self.correlation_runs += 1
            _, touched = self.diag.correlate(now=now, cluster=CLUSTER)
            for key in touched:
                self.held[key] = now
            due |= touched
            self.diag.kpis(now=now)
        if due:
            self.evaluate(due, now)


def _storm_setup(
    *, nodes: int, storm: int, spacing_ms: float, resolve_every: int, seed: int
) -> tuple[list[Any], str | None, list[Anomaly], Diagnoser, _Driver]:
    """The fleet, the storm's zone, its anomalies in arrival order, a diagnoser that knows the inventory and
    the service loop's driver: what `run_storm` and `storm_diagnoses` both start from."""
    inventory = build_inventory(FleetSpec(nodes=nodes, cluster=CLUSTER))
    zone = inventory[0].zone
    in_zone = [r.node for r in inventory if r.zone == zone]
    msgs = storm_messages(
        in_zone, storm=storm, spacing=timedelta(milliseconds=spacing_ms), resolve_every=resolve_every, seed=seed
    )
    diag = Diagnoser(matcher=Matcher(load_knowledge_base()))
    for record in inventory:
        diag.on_inventory(record)
    return inventory, zone, msgs, diag, _Driver(diag)


def run_storm(
    *,
    nodes: int = 50_000,
    storm: int = 4000,
    spacing_ms: float = 20.0,
    resolve_every: int = 10,
    settle_s: float = 300.0,
    seed: int = 7,
    profile: bool = False,
) -> dict[str, Any]:
    inventory, zone, msgs, diag, driver = _storm_setup(
        nodes=nodes, storm=storm, spacing_ms=spacing_ms, resolve_every=resolve_every, seed=seed
    )
    zone_nodes = sum(1 for r in inventory if r.zone == zone)
    tick = timedelta(seconds=TICK_S)
    next_tick = msgs[0].detected_at
    anomaly_s = tick_s = anomaly_cpu = tick_cpu = 0.0
    profiler = cProfile.Profile() if profile else None
    wall0, cpu0 = time.perf_counter(), time.process_time()
    if profiler is not None:
        profiler.enable()
    for msg in msgs:
        while next_tick <= msg.detected_at:
            t0, c0 = time.perf_counter(), time.process_time()
            driver.tick(next_tick)
            tick_s += time.perf_counter() - t0
            tick_cpu += time.process_time() - c0
            next_tick += tick
        t0, c0 = time.perf_counter(), time.process_time()
        driver.evaluate(diag.on_anomaly(msg), msg.detected_at)
        anomaly_s += time.perf_counter() - t0
        anomaly_cpu += time.process_time() - c0
    end = msgs[-1].detected_at + timedelta(seconds=settle_s)
    while next_tick <= end:  # the held verdicts come due; the correlation keeps running
        t0, c0 = time.perf_counter(), time.process_time()
        driver.tick(next_tick)
        tick_s += time.perf_counter() - t0
        tick_cpu += time.process_time() - c0
        next_tick += tick
    if profiler is not None:
        profiler.disable()
    wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
    digest = hashlib.sha256(repr(driver.verdicts).encode()).hexdigest()[:16]
    result: dict[str, Any] = {
        "benchmark": "diagnoser-storm",
        "nodes": nodes,
        "zone": zone,
        "zone_nodes": zone_nodes,
        "storm": min(storm, zone_nodes),
        "anomalies": len(msgs),
        "spacing_ms": spacing_ms,
        "resolve_every": resolve_every,
        "simulated_s": round((end - msgs[0].detected_at).total_seconds(), 1),
        "wall_s": round(wall, 3),
        "cpu_s": round(cpu, 3),
        "anomalies_per_s": round(len(msgs) / wall, 1),
        "ms_per_anomaly": round(1e3 * anomaly_s / len(msgs), 3),
        "cpu_ms_per_anomaly": round(1e3 * anomaly_cpu / len(msgs), 3),
        "anomaly_path_s": round(anomaly_s, 3),
        "ticks_s": round(tick_s, 3),
        "ticks_cpu_s": round(tick_cpu, 3),
        "correlation_runs": driver.correlation_runs,
        "evaluations": driver.evaluations,
        "verdicts": len(driver.verdicts),
        "causes": dict(sorted(Counter(c for _, c, r in driver.verdicts if not r).items())),
        "verdict_digest": digest,
    }
    if profiler is not None:
        out = io.StringIO()
        pstats.Stats(profiler, stream=out).sort_stats("cumulative").print_stats(25)
        result["profile"] = out.getvalue()
    return result


def storm_diagnoses(
    *, nodes: int, storm: int, spacing_ms: float, resolve_every: int, seed: int, settle_s: float = 300.0
) -> tuple[list[Any], list[Diagnosis]]:
    """The fleet's inventory and the diagnoses the diagnoser publishes for the storm of `run_storm` (same
    arguments, same decisions), in publishing order: the input of `nodeheal bench remediator --storm`."""
    inventory, _zone, msgs, diag, driver = _storm_setup(
        nodes=nodes, storm=storm, spacing_ms=spacing_ms, resolve_every=resolve_every, seed=seed
    )
    tick = timedelta(seconds=TICK_S)
    next_tick = msgs[0].detected_at
    for msg in msgs:
        while next_tick <= msg.detected_at:
            driver.tick(next_tick)
            next_tick += tick
        driver.evaluate(diag.on_anomaly(msg), msg.detected_at)
    end = msgs[-1].detected_at + timedelta(seconds=settle_s)
    while next_tick <= end:
        driver.tick(next_tick)
        next_tick += tick
    return inventory, driver.diagnoses
