"""`nodeheal bench wire`: what one probe costs the nats-server, measured as the server process's own CPU time.

The probes are the real agent's (`ProbeCollector` over the simulator's host, `NodeProbe.to_json`), one per
node of a synthetic fleet, published as core publishes into PROBES (as the simulator does) in two forms:
with a `Nats-Msg-Id` header (the stream keeps a dedupe entry per probe for its window) and without one (the
probe contract since the probe path was measured). Each stored backlog is then drained by the detector's
`BatchPuller` twice: with one `+ACK` per probe (AckPolicy.EXPLICIT, what the detector did before issue 19's
fourth round) and with one cumulative ack per chunk (AckPolicy.ALL, what it does now). The server's CPU
(utime + stime of its process, from /proc) is read before and after each phase, so the figures hold only the
server's work; the publisher and the puller run in this process. Linux only (/proc)."""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path
from typing import Any

from nodeheal.cloud_events.prober.batch import ResultBatcher
from nodeheal.detector.puller import highest
from nodeheal.runtime.settings import NatsSettings
from nodeheal.schemas.subjects import probe_subject
from nodeheal.sim.bench.detector import _drop, _provision, drain_chunks, open_puller
from nodeheal.sim.bench.secure import BenchAuth
from nodeheal.sim.fleet import FleetSpec, SimNode, build_inventory
from nodeheal.sim.nodehost import AgentProfile, SimAgent


def server_rss_mb(pid: int) -> float:
    """Resident set of a process now, in MB (/proc/<pid>/status)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def server_cpu_s(pid: int) -> float:
    """utime + stime of a process, in seconds (/proc/<pid>/stat)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def _agent_probes(nodes: int) -> tuple[str, list[tuple[str, bytes]]]:
    """(cluster, [(node, the real agent's probe JSON)]) for `nodes` simulated nodes."""
    spec = FleetSpec(nodes=nodes)
    now = time.time()
    out: list[tuple[str, bytes]] = []
    for i, inv in enumerate(build_inventory(spec)):
        agent = SimAgent(
            SimNode(inv=inv, index=i, booted_at=now - 3600), cluster=spec.cluster, profile=AgentProfile(), work_dir=None
        )
        probe = await agent.collect(now=now, noise=0.01)
        out.append((inv.node, probe.to_json()))
    return spec.cluster, out


async def _store(
    url: str,
    auth: BenchAuth,
    settings: NatsSettings,
    cluster: str,
    probes: list[tuple[str, bytes]],
    *,
    count: int,
    msg_id: bool,
) -> None:
    nc = await auth.connect(url, "admin", name="bench-wire-publisher", pending_size=64 * 1024 * 1024)
    subjects = [probe_subject(cluster, node, prefix=settings.prefix) for node, _ in probes]
    n = len(probes)
    for i in range(count):
        k = i % n
        if msg_id:
            await nc.publish(subjects[k], probes[k][1], headers={"Nats-Msg-Id": f"ap-{k}-{i:012d}"})
        else:
            await nc.publish(subjects[k], probes[k][1])
        if i % 1000 == 999:
            await nc.flush()
    await nc.flush()
    await nc.close()


async def _wait_stored(url: str, auth: BenchAuth, stream: str, count: int) -> int:
    nc = await auth.connect(url, "admin", name="bench-wire-check")
    js = nc.jetstream()
    deadline = time.monotonic() + 60
    stored = 0
    while time.monotonic() < deadline:
        stored = (await js.stream_info(stream)).state.messages
        if stored >= count:
            break
        await asyncio.sleep(0.1)
    await nc.close()
    return stored


async def _drain(url: str, auth: BenchAuth, stream: str, *, total: int, explicit: bool, batch: int) -> int:
    durable = "bench-wire-explicit" if explicit else "bench-wire-all"
    nc, puller = await open_puller(url, auth, stream, durable=durable, explicit=explicit, batch=batch)
    js = nc.jetstream()
    seen = await drain_chunks(puller, total=total, explicit=explicit)
    await nc.flush()
    # the last acks reach the server's consumer before its CPU is read
    for _ in range(50):
        info = await js.consumer_info(stream, durable)
        if info.num_ack_pending == 0:
            break
        await asyncio.sleep(0.1)
    await puller.stop()
    await nc.close()
    return seen


async def _fleet(
    url: str,
    pid: int,
    auth: BenchAuth,
    *,
    nodes: int,
    interval_s: float,
    prober_interval_s: float,
    seconds: float,
    batch: int,
    prober_batched: bool = True,
    partitions: int = 0,
) -> dict[str, Any]:
    """The simulator's whole probe traffic (the real agent's probe of every node each interval, the simulated
    prober's results at its round: one `NodeProbe` per node, or `ProberResults` batches through the prober's own
    batcher), into PROBES with `partitions` partitions, drained meanwhile by the detector's puller with one
    cumulative ack per chunk (what the detector does): the server's CPU per node and agent interval, after one
    warm-up interval (every node's first probe)."""
    from nodeheal.sim.engine import FleetSimulator, SimTimings

    settings = await _provision(url, auth, partitions=partitions)
    stream = settings.topology().stream(f"{settings.stream_prefix}PROBES").name
    nc = await auth.connect(url, "admin", name="bench-wire-fleet", pending_size=64 * 1024 * 1024)
    sim = FleetSimulator(
        spec=FleetSpec(nodes=nodes),
        settings=settings,
        timings=SimTimings(interval_s, prober_interval_s=prober_interval_s),
        probes_only=True,
    )
    sim.prober_batched = prober_batched
    dnc, puller = await open_puller(url, auth, stream, durable="bench-wire-fleet", explicit=False, batch=batch)
    stop = asyncio.Event()

    async def drain() -> int:
        seen = 0
        while not stop.is_set():
            chunk = await puller.next_chunk(wait_s=0.5)
            if chunk:
                top = highest(chunk)
                if top is not None:
                    await puller.ack_all_through(top)  # type: ignore[arg-type]  # a Msg of this puller
                seen += len(chunk)
        return seen

    drainer = asyncio.create_task(drain())
    try:
        await sim.start(prober_nc=nc, agent_nc=dict.fromkeys(sim.nodes, nc))
        await asyncio.sleep(interval_s + 1.0)
        stats = sim.stats
        cpu, published, agents, results = (
            server_cpu_s(pid),
            stats.probes_published,
            stats.collected,
            stats.prober_results,
        )
        started = time.perf_counter()
        await asyncio.sleep(seconds)
        used = server_cpu_s(pid) - cpu
        wall = time.perf_counter() - started
        published = stats.probes_published - published
        agents = stats.collected - agents
        results = stats.prober_results - results
        stretched = stats.stretched_s
    finally:
        await sim.stop()
        stop.set()
        drained = await drainer
        await puller.stop()
        await dnc.close()
        await nc.close()
        await _drop(url, settings, auth)
    return {
        "prober_interval_s": prober_interval_s,
        "prober_form": "ProberResults batches" if prober_batched else "one NodeProbe per node",
        "partitions": partitions,
        "seconds": round(wall, 1),
        "agent_probes": agents,
        "agent_probes_per_s": round(agents / wall),
        "messages": published,
        "prober_results_in_batches": results,
        "messages_per_node_interval": round(published / max(agents, 1), 3),
        "drained": drained,
        "sim_stretched_s": round(stretched, 1),
        "server_cpu_s": round(used, 2),
        "server_us_per_node_interval": round(1e6 * used / max(agents, 1), 1),
        "server_cores_at_50000_nodes_5s": round(used / max(agents, 1) * 10_000, 2),
    }


async def run_fleet_bench(
    *, url: str, pid: int, auth: BenchAuth, nodes: int, interval_s: float, seconds: float, batch: int, partitions: int
) -> dict[str, Any]:
    """The simulated fleet's traffic twice on one server, the prober at its own round (`ProberSettings.interval_s`)
    both times: its results one message per node (before), then in `ProberResults` batches (one per partition of
    PROBES and probe-loop tick, the prober's own batcher)."""
    from nodeheal.sim.engine import SimTimings

    prober_s = SimTimings().prober_interval_s
    variants = {
        name: await _fleet(
            url,
            pid,
            auth,
            nodes=nodes,
            interval_s=interval_s,
            prober_interval_s=prober_s,
            seconds=seconds,
            batch=batch,
            prober_batched=batched,
            partitions=partitions,
        )
        for name, batched in (("prober_one_message_per_node", False), ("prober_batched", True))
    }
    return {
        "benchmark": "wire --fleet",
        "what": "nats-server CPU per node and agent interval for the simulator's probe traffic, drained with"
        " cumulative acks; the prober's results one message per node vs in ProberResults batches",
        "config": auth.config,
        "nodes": nodes,
        "interval_s": interval_s,
        "partitions": partitions,
        "variants": variants,
    }


async def _prober_phase(
    url: str, pid: int, auth: BenchAuth, *, nodes: int, rounds: int, per_message: int, batch: int
) -> dict[str, Any]:
    """The simulated prober's results of `rounds` rounds over `nodes` nodes, stored into PROBES one message per
    node (the prober's form before batches) or `per_message` nodes' results per message (`ProberResults`,
    through the prober's own batcher), then drained with one cumulative ack per chunk (the detector's acks).
    Server CPU per node result."""
    import orjson

    from nodeheal.schemas.subjects import prober_probe_subject

    settings = await _provision(url, auth)
    stream = settings.topology().stream(f"{settings.stream_prefix}PROBES").name
    spec = FleetSpec(nodes=nodes)
    now = time.time()
    sim_nodes = [SimNode(inv=inv, index=i, booted_at=now - 3600) for i, inv in enumerate(build_inventory(spec))]
    subjects = [prober_probe_subject(spec.cluster, n.inv.node, prefix=settings.prefix) for n in sim_nodes]
    messages: list[tuple[str, bytes]] = []
    for r in range(rounds):
        iso = time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime(now + 10 * r))
        if per_message == 1:
            bodies = [n.prober_probe(time_iso=iso) for n in sim_nodes]
            messages += [(subject, orjson.dumps(body)) for subject, body in zip(subjects, bodies, strict=True)]
            continue
        # the prober's own batcher (`ProberResults`, PROBES not partitioned here: one subject)
        batcher = ResultBatcher(cluster=spec.cluster, partitions=0, prefix=settings.prefix, max_results=per_message)
        for n in sim_nodes:
            messages += [(b.subject, b.body) for b in batcher.add(n.inv.node, n.prober_checks())]
        messages += [(b.subject, b.body) for b in batcher.drain()]
    total_bytes = sum(len(body) for _, body in messages)
    try:
        nc = await auth.connect(url, "admin", name="bench-wire-prober", pending_size=64 * 1024 * 1024)
        before = server_cpu_s(pid)
        for i, (subject, body) in enumerate(messages):
            await nc.publish(subject, body)
            if i % 200 == 199:
                await nc.flush()
        await nc.flush()
        await nc.close()
        stored = await _wait_stored(url, auth, stream, len(messages))
        store_s = server_cpu_s(pid) - before
        rss = server_rss_mb(pid)
        before = server_cpu_s(pid)
        drained = await _drain(url, auth, stream, total=stored, explicit=False, batch=batch)
        drain_s = server_cpu_s(pid) - before
    finally:
        await _drop(url, settings, auth)
    results = nodes * rounds
    return {
        "node_results": results,
        "messages": len(messages),
        "stored": stored,
        "drained": drained,
        "bytes_per_node_result": round(total_bytes / results, 1),
        "server_us_per_node_result_store": round(1e6 * store_s / results, 2),
        "server_us_per_node_result_drain_ack_all": round(1e6 * drain_s / results, 2),
        "server_rss_mb_after_store": round(rss, 1),
    }


async def run_prober_bench(
    *, url: str, pid: int, auth: BenchAuth, nodes: int, rounds: int, per_message: int, batch: int
) -> dict[str, Any]:
    """The prober's results one message per node, then `per_message` per message, on one server."""
    variants = {
        "one_message_per_node": await _prober_phase(
            url, pid, auth, nodes=nodes, rounds=rounds, per_message=1, batch=batch
        ),
        f"{per_message}_nodes_per_message": await _prober_phase(
            url, pid, auth, nodes=nodes, rounds=rounds, per_message=per_message, batch=batch
        ),
    }
    return {
        "benchmark": "wire --prober-rounds",
        "what": "nats-server CPU per node result of the active prober: one message per node vs ProberResults batches",
        "config": auth.config,
        "nodes": nodes,
        "rounds": rounds,
        "variants": variants,
    }


VARIANTS = {"with_nats_msg_id": True, "without_nats_msg_id": False}


async def run_bench(
    *, url: str, pid: int, auth: BenchAuth, nodes: int, count: int, batch: int, only: str | None = None
) -> dict[str, Any]:
    """Both variants on one server, in order, or `only` one of them (`VARIANTS`): on a fresh server its RSS
    is its own."""
    cluster, probes = await _agent_probes(nodes)
    sizes = sorted(len(body) for _, body in probes)
    variants: dict[str, Any] = {}
    for name, msg_id in VARIANTS.items():
        if only is not None and name != only:
            continue
        settings = await _provision(url, auth)
        stream = settings.topology().stream(f"{settings.stream_prefix}PROBES").name
        try:
            before = server_cpu_s(pid)
            started = time.perf_counter()
            await _store(url, auth, settings, cluster, probes, count=count, msg_id=msg_id)
            stored = await _wait_stored(url, auth, stream, count)
            store_s = server_cpu_s(pid) - before
            wall = time.perf_counter() - started
            result: dict[str, Any] = {
                "stored": stored,
                "store_wall_s": round(wall, 2),
                "server_us_per_probe_store": round(1e6 * store_s / max(stored, 1), 1),
                "server_rss_mb_after_store": round(server_rss_mb(pid), 1),
            }
            for explicit in (True, False):
                before = server_cpu_s(pid)
                seen = await _drain(url, auth, stream, total=stored, explicit=explicit, batch=batch)
                used = server_cpu_s(pid) - before
                key = "explicit_acks" if explicit else "ack_all_per_chunk"
                result[f"server_us_per_probe_drain_{key}"] = round(1e6 * used / max(seen, 1), 1)
                result[f"drained_{key}"] = seen
            variants[name] = result
        finally:
            await _drop(url, settings, auth)
    return {
        "benchmark": "wire",
        "what": "nats-server CPU per agent probe: store into PROBES, drain by the detector's batch puller",
        "config": auth.config,
        "nodes": nodes,
        "probes_per_variant": count,
        "probe_bytes_median": sizes[len(sizes) // 2],
        "batch": batch,
        "variants": variants,
        "method": (
            "server CPU = utime+stime of the nats-server process before/after each phase; the real agent "
            "collector's probes (one per simulated node) published as core publishes by the admin user, "
            "then drained by the detector role with the detector's BatchPuller"
        ),
    }
