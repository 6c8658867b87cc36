"""`nodeheal bench remediator --storm N`: the remediator's cost per diagnosis in a silence storm.

The input is what the diagnoser publishes in `nodeheal bench diagnoser --storm N` (the same fleet, storm, seed
and decisions: `storm_diagnoses`), handed to the real `Remediator` one at a time in publishing order, as the
service's consumer hands them over (`Remediator.handle`), on a real nats-server (an embedded one, the
production topology: AUDIT, the leases and control buckets, the ledger, PROBES for verification), on a simulated
clock (the storm's own spacing, from now on: decisions that depend on time do not depend on the code's speed).
Each diagnosis that asked to be retried (a storm or a budget blocked its step) is handed over once more
`retry_delay_s` later, as its redelivery would be.

What is not measured: the consumer's transport (pull, ack), the followers (every replica reads every diagnosis
into its view: here `handle` does it), Kubernetes and the clouds. The policy is a dry run (`dry_run`: every
gate, record and verification, no action), so no node agent or cloud is needed; verification polls PROBES, where
no probe arrives, for `--verify-timeout-s`.

Reports diagnoses/s, CPU-s of this process (client side: the remediator and nats-py) and of the nats-server,
ms per diagnosis (wall and CPU), the audit records written, the control-bucket writes, and a digest of every
record (node, action, phase, target, in order) and disposition, so two versions of the code can be compared
for identical decisions (each node's records in order; the order between nodes aside).
"""

from __future__ import annotations

import asyncio
import cProfile
import hashlib
import heapq
import io
import os
import pstats
import time
from collections import Counter
from datetime import UTC, datetime, timedelta
from typing import Any

from nats.js.api import AckPolicy, ConsumerConfig

from nodeheal.remediator import runner as runner_module
from nodeheal.remediator.actions.cloud import Clouds
from nodeheal.remediator.actions.node import NodeAgent
from nodeheal.remediator.audit import AuditLog
from nodeheal.remediator.leases import Leases
from nodeheal.remediator.ledger import Ledger
from nodeheal.remediator.runner import Remediator
from nodeheal.remediator.settings import PolicySettings, RemediatorSettings
from nodeheal.remediator.verify import Verifier
from nodeheal.remediator.views import FleetView
from nodeheal.runtime.connect import connect
from nodeheal.runtime.provision import apply_topology
from nodeheal.runtime.settings import NatsSettings
from nodeheal.schemas.audit import RemediationRecord
from nodeheal.schemas.diagnosis import Diagnosis
from nodeheal.schemas.subjects import wildcard
from nodeheal.sim.bench.diagnoser import storm_diagnoses
from nodeheal.sim.embedded import EmbeddedNats


def _cpu_of(pid: int) -> float:
    """CPU seconds (user + system) of a process from /proc."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return 0.0


async def _noop() -> None:
    return None


async def _audit_records(nc: Any, settings: NatsSettings) -> list[RemediationRecord]:
    """Every record in AUDIT, in order."""
    js = nc.jetstream()
    stream = settings.topology().stream(f"{settings.stream_prefix}AUDIT").name
    total = int((await js.stream_info(stream)).state.messages or 0)
    out: list[RemediationRecord] = []
    if not total:
        return out
    sub = await js.pull_subscribe(
        wildcard("audit", prefix=settings.prefix), stream=stream, config=ConsumerConfig(ack_policy=AckPolicy.NONE)
    )
    while len(out) < total:
        for msg in await sub.fetch(min(1000, total - len(out)), timeout=10):
            out.append(RemediationRecord.model_validate_json(msg.data))
    await sub.unsubscribe()
    return out


async def _run(
    *, nodes: int, storm: int, spacing_ms: float, resolve_every: int, seed: int, verify_timeout_s: float, profile: bool
) -> dict[str, Any]:
    inventory, diagnoses = storm_diagnoses(
        nodes=nodes, storm=storm, spacing_ms=spacing_ms, resolve_every=resolve_every, seed=seed
    )
    with EmbeddedNats() as server:
        nats = NatsSettings(url=server.url)
        nc = await connect(nats, name="bench-remediator")
        js = nc.jetstream(timeout=nats.publish_timeout_s)
        await apply_topology(js, nats.topology())
        settings = RemediatorSettings(
            nats=nats,
            cluster=inventory[0].cluster,
            instance="bench",
            verify_timeout_s=verify_timeout_s,
            verify_timeout_max_s=verify_timeout_s,  # the rungs' own times (a reboot 900 s) are real-world ones
            verify_poll_s=min(0.05, verify_timeout_s),
            policy=PolicySettings(dry_run=True, approval_required=()),  # the demo approves nothing by hand
        )
        topo = nats.topology()
        bp = nats.bucket_prefix
        leases_kv = await js.key_value(f"{bp}-leases")
        control_kv = await js.key_value(f"{bp}-control")
        view = FleetView()
        for record in inventory:
            view.on_inventory(record)
        remediator = Remediator(
            settings=settings,
            audit=AuditLog(js, stream=topo.stream(f"{nats.stream_prefix}AUDIT").name, prefix=nats.prefix),
            leases=Leases(leases_kv, holder=settings.instance, ttl_s=30.0),
            ledger=Ledger(control_kv),
            control_kv=control_kv,
            view=view,
            node_agent=NodeAgent(nc, prefix=nats.prefix, timeout_s=1.0),
            kube=None,
            clouds=Clouds(settings.cloud),
            verifier=Verifier(
                js,
                stream=topo.stream(f"{nats.stream_prefix}PROBES").name,
                prefix=nats.prefix,
                partitions=nats.probe_partitions,
                kube=None,
                thresholds=settings.health,
                timeout_s=verify_timeout_s,
                poll_s=settings.verify_poll_s,
            ),
        )
        await remediator.restore()
        control_stream = f"KV_{bp}-control"
        control_before = int((await js.stream_info(control_stream)).state.last_seq or 0)
        # The storm on a simulated clock (the remediator's `utcnow`), so decisions that depend on time (freshness,
        # the disruption rate per minute, slot expiry) are the same however fast the code runs: the diagnoses keep
        # their spacing, shifted to start now; each is handed over 0.1 s after it was identified, and one that asks
        # to be retried once more `retry_delay_s` later (its redelivery), in time order with the rest.
        shift = datetime.now(tz=UTC) - diagnoses[0].identified_at
        queue: list[tuple[datetime, int, int, Diagnosis]] = []
        for i, d in enumerate(diagnoses):
            d = d.model_copy(update={"identified_at": d.identified_at + shift})
            heapq.heappush(queue, (d.identified_at + timedelta(seconds=0.1), 0, i, d))
        simulated = [datetime.now(tz=UTC)]
        real_utcnow = runner_module.utcnow
        runner_module.utcnow = lambda: simulated[0]
        dispositions: list[str] = []
        handle_s = handle_cpu = 0.0
        profiler = cProfile.Profile() if profile else None
        server_cpu0 = _cpu_of(server.pid or 0)
        wall0, cpu0 = time.perf_counter(), time.process_time()
        if profiler is not None:
            profiler.enable()
        try:
            while queue:
                at, delivery, i, d = heapq.heappop(queue)
                simulated[0] = at
                t0, c0 = time.perf_counter(), time.process_time()
                disposition = await remediator.handle(d, heartbeat=_noop)
                handle_s += time.perf_counter() - t0
                handle_cpu += time.process_time() - c0
                dispositions.append(disposition)
                if disposition == "retry" and delivery == 0:
                    heapq.heappush(queue, (at + timedelta(seconds=settings.retry_delay_s), 1, i, d))
        finally:
            runner_module.utcnow = real_utcnow
        if profiler is not None:
            profiler.disable()
        wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
        server_cpu = _cpu_of(server.pid or 0) - server_cpu0
        control_writes = int((await js.stream_info(control_stream)).state.last_seq or 0) - control_before
        records = await _audit_records(nc, nats)
        await nc.close()
    handled = len(dispositions)
    # each node's records in their order (the nodes' interleaving aside: a storm's escalations come out of a set)
    per_node = sorted(((r.node, r.action, r.phase, r.target) for r in records), key=lambda t: t[0])
    digest_input = [*per_node, *dispositions]
    result: dict[str, Any] = {
        "benchmark": "remediator-storm",
        "nodes": nodes,
        "storm": storm,
        "diagnoses": len(diagnoses),
        "handled": handled,
        "redelivered": handled - len(diagnoses),
        "dispositions": dict(sorted(Counter(dispositions).items())),
        "wall_s": round(wall, 3),
        "cpu_s": round(cpu, 3),
        "nats_server_cpu_s": round(server_cpu, 3),
        "diagnoses_per_s": round(handled / wall, 1) if wall else 0.0,
        "ms_per_diagnosis": round(1e3 * handle_s / handled, 3) if handled else 0.0,
        "cpu_ms_per_diagnosis": round(1e3 * handle_cpu / handled, 3) if handled else 0.0,
        "audit_records": len(records),
        "records": dict(sorted(Counter(f"{r.action}/{r.phase}" for r in records).items())),
        "control_bucket_writes": control_writes,
        "storms_in_force": len(remediator.storms),
        "verdict_digest": hashlib.sha256(repr(digest_input).encode()).hexdigest()[:16],
    }
    if profiler is not None:
        out = io.StringIO()
        pstats.Stats(profiler, stream=out).sort_stats("cumulative").print_stats(30)
        result["profile"] = out.getvalue()
    return result


def run_storm(
    *,
    nodes: int = 50_000,
    storm: int = 1000,
    spacing_ms: float = 20.0,
    resolve_every: int = 10,
    seed: int = 7,
    verify_timeout_s: float = 0.05,
    profile: bool = False,
) -> dict[str, Any]:
    return asyncio.run(
        _run(
            nodes=nodes,
            storm=storm,
            spacing_ms=spacing_ms,
            resolve_every=resolve_every,
            seed=seed,
            verify_timeout_s=verify_timeout_s,
            profile=profile,
        )
    )
