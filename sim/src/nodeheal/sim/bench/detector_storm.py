"""`nodeheal bench detector-storm`: how long a silence storm holds the detector's event loop.

A real `DetectorRuntime` (its probe loop, timer sweep and anomaly publishing) on an embedded nats-server knows
`--nodes` nodes (each seen once: fed to its rules directly, as the probe path would); then every node but one
falls silent at once (its clock jumps past the silence timeout while one node keeps the input alive), which is
what a detector whose simulator or fleet fell behind sees. The loop sweeps the storm and publishes its
`node_down` anomalies to ANOMALIES while a watcher task asks for the loop every 10 ms.

Reports the anomalies published, wall and CPU seconds of the storm, and the loop's holds: the longest, the 99th
percentile and how many exceeded 1 s and 3 s (the kubelet's liveness timeout in deploy/: a `/healthz` request
waits as long as the loop is held), plus a digest of the anomalies published (node, kind, status; sorted).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import time
from datetime import UTC, datetime
from typing import Any

from nodeheal.detector.fastpath import FastProbe, probe_decoder
from nodeheal.detector.handlers import DetectorRuntime
from nodeheal.detector.settings import DetectorSettings
from nodeheal.runtime.connect import connect
from nodeheal.runtime.provision import apply_topology
from nodeheal.runtime.settings import NatsSettings
from nodeheal.schemas import Anomaly, FileSystem, LoadAverage, NodeProbe
from nodeheal.sim.embedded import EmbeddedNats

CLUSTER = "bench"


def _probe(node: str, seq: int, at: float) -> FastProbe:
    """An agent probe as the probe path hands it to the rules (decoded by msgspec)."""
    probe = NodeProbe(
        id=f"{node}-{seq}",
        time=datetime.fromtimestamp(at, tz=UTC),
        cluster=CLUSTER,
        node=node,
        source="agent",
        seq=seq,
        boot_id="boot-1",
        load=LoadAverage(load1=0.5, load5=0.5, load15=0.5),
        cpu_count=4,
        filesystems=(FileSystem(mount="/", used_pct=30.0, inodes_used_pct=1.0),),
        ready=True,
    )
    return probe_decoder.decode(probe.to_json())


async def _run(*, nodes: int, timeout_s: float) -> dict[str, Any]:
    with EmbeddedNats() as server:
        nats = NatsSettings(url=server.url)
        nc = await connect(nats, name="bench-detector-storm")
        await apply_topology(nc.jetstream(), nats.topology())
        clock = [time.time()]
        published: list[tuple[str, str, str]] = []
        all_out = asyncio.Event()

        def on_published(anomaly: Anomaly, at: float) -> None:
            published.append((anomaly.node, anomaly.kind, anomaly.status))
            if len(published) >= nodes - 1:
                all_out.set()

        rt = DetectorRuntime(
            settings=DetectorSettings(nats=nats), nc=nc, clock=lambda: clock[0], on_published=on_published
        )
        await rt.start(rebuild=False)
        det = rt.detector
        t0 = clock[0]
        for i in range(nodes):
            det.observe_probe(_probe(f"n{i}", 1, t0), now=t0)
        await asyncio.sleep(1.0)  # the loop settles (the nodes' first sweep)
        holds: list[float] = []
        stop = asyncio.Event()

        async def watch() -> None:
            last = time.perf_counter()
            while not stop.is_set():
                await asyncio.sleep(0.01)
                now = time.perf_counter()
                holds.append(max(0.0, now - last - 0.01))
                last = now

        watcher = asyncio.create_task(watch())
        wall0, cpu0 = time.perf_counter(), time.process_time()
        clock[0] = t0 + 300.0  # every node silent for 300 s ...
        det.observe_probe(_probe("n0", 2, clock[0]), now=clock[0])  # ... but one: the input is alive
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(all_out.wait(), timeout_s)
        wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
        stop.set()
        await watcher
        await rt.stop()
        await nc.close()
    holds.sort()
    return {
        "benchmark": "detector-storm",
        "nodes": nodes,
        "anomalies_published": len(published),
        "wall_s": round(wall, 3),
        "cpu_s": round(cpu, 3),
        "longest_hold_s": round(holds[-1], 3) if holds else 0.0,
        "p99_hold_s": round(holds[int(len(holds) * 0.99)], 3) if holds else 0.0,
        "holds_over_1s": sum(1 for h in holds if h > 1.0),
        "holds_over_3s": sum(1 for h in holds if h > 3.0),
        "loop_turns_watched": len(holds),
        "anomaly_digest": hashlib.sha256(repr(sorted(published)).encode()).hexdigest()[:16],
    }


def run_storm(*, nodes: int = 25_000, timeout_s: float = 300.0) -> dict[str, Any]:
    return asyncio.run(_run(nodes=nodes, timeout_s=timeout_s))
