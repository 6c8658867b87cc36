"""`nodeheal bench detector`: the detector's throughput, latency and memory, measured on a real
nats-server next to raw nats-py on the same payload, in the same run.

- `probes_per_s`: the real consumer path (`DetectorRuntime`: durable pull consumer with
  AckPolicy.EXPLICIT, one +ACK per probe, the batch puller, msgspec decoding, the rules, timers,
  anomaly publishing, acks) draining a backlog of nodes x rounds probes that was stored in PROBES
  beforehand. A Python publisher cannot publish 50k/s to JetStream with acks, so the backlog is
  pre-filled (core publishes into the stream) and the drain is timed: first pull to last probe
  processed.
- `p50_ms` / `p99_ms`: probe published → anomaly published (PubAck received), from an open-loop run:
  a separate publisher process sends probes at a fixed rate with disk-full faults injected into ~1 % of
  them; the probe's own `time` is its publish time and becomes the anomaly's `fault_onset`.
- `bytes_per_node`: tracemalloc growth per tracked healthy node.
- `raw_nats_msgs_per_s`: nats-py core publish → subscribe of the same payload (the ceiling), over the
  same kind of connection as everything else in the run (`config`: TLS and per-role credentials by default).
- `breakdown`: the same drain through nats-py's own `fetch()` (what a straightforward consumer does)
  and through the batch puller without rules, plus decode costs (msgspec vs pydantic) and the rules
  alone, so each optimisation is measured against its alternative in the same run.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import platform
import statistics
import time
import tracemalloc
import uuid
from datetime import UTC, datetime
from importlib.metadata import version
from typing import Any

from nats.aio.client import Client
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from nodeheal.detector.fastpath import ProbeIdentity, probe_decoder
from nodeheal.detector.handlers import DetectorRuntime
from nodeheal.detector.puller import BatchPuller
from nodeheal.detector.rules import Detector, RuleConfig
from nodeheal.detector.settings import DetectorSettings
from nodeheal.runtime.provision import apply_topology
from nodeheal.runtime.settings import NatsSettings
from nodeheal.schemas import (
    Anomaly,
    FileHandles,
    FileSystem,
    LoadAverage,
    NodeProbe,
    Reachability,
    ServiceState,
)
from nodeheal.schemas.subjects import DEFAULT_PREFIX, probe_subject
from nodeheal.sim.bench.secure import BenchAuth

CLUSTER = "bench"


def sample_probe(node: str, *, seq: int = 0, used: float = 41.5, at: datetime | None = None) -> NodeProbe:
    """A realistic agent probe: 3 file systems, 3 services, load, file handles, one reachability result."""
    return NodeProbe(
        id=f"{node}-{seq:08d}",
        time=at or datetime.now(tz=UTC),
        cluster=CLUSTER,
        node=node,
        source="agent",
        seq=seq,
        boot_id="0f4c2b8e-5a1d-4f0e-9b7e-3c2d1a0b9f8e",
        uptime_s=86_400.0,
        reachability=(Reachability(check="agent", target="127.0.0.1:9100", ok=True, latency_ms=0.2),),
        load=LoadAverage(load1=3.2, load5=2.9, load15=2.5),
        cpu_count=64,
        filesystems=(
            FileSystem(mount="/", device="/dev/nvme0n1p1", used_pct=used, inodes_used_pct=7.5),
            FileSystem(mount="/var/lib/kubelet", device="/dev/nvme1n1", used_pct=33.0, inodes_used_pct=2.0),
            FileSystem(mount="/var/lib/containerd", device="/dev/nvme1n1", used_pct=58.0, inodes_used_pct=4.0),
        ),
        file_handles=FileHandles(allocated=23_456, max=9_223_372),
        services=(
            ServiceState(name="kubelet", state="active", restarts=0, healthy=True),
            ServiceState(name="containerd", state="active", restarts=0, healthy=True),
            ServiceState(name="ops-agent", state="active", restarts=1),
        ),
        kernel_release="5.10.134-16.al8.x86_64",
        os_image="Alibaba Cloud Linux 3",
        ready=True,
    )


def _node(i: int) -> str:
    return f"node-{i:06d}"


def _machine() -> dict[str, Any]:
    cpu = "unknown"
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            for line in fh:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return {
        "nproc": os.cpu_count(),
        "cpu_model": cpu,
        "python": platform.python_version(),
        "nats_py": version("nats-py"),
        "msgspec": version("msgspec"),
        "pydantic": version("pydantic"),
        "platform": platform.platform(),
    }


async def _server_version(nc: Client) -> str:
    info = nc._server_info
    return str(info.get("version", "unknown"))


# ---------------------------------------------------------------------- raw nats-py ceiling


async def raw_nats_msgs_per_s(url: str, payload: bytes, *, count: int, auth: BenchAuth) -> float:
    pub = await auth.connect(url, "admin", name="bench-raw-pub")
    sub_nc = await auth.connect(url, "admin", name="bench-raw-sub")
    subject = f"bench.raw.{uuid.uuid4().hex[:8]}"
    done = asyncio.Event()
    seen = 0

    async def on_msg(_msg: Any) -> None:
        nonlocal seen
        seen += 1
        if seen >= count:
            done.set()

    await sub_nc.subscribe(subject, cb=on_msg, pending_msgs_limit=count + 1, pending_bytes_limit=0)
    await sub_nc.flush()
    start = time.perf_counter()
    for _ in range(count):
        await pub.publish(subject, payload)
    await pub.flush()
    await asyncio.wait_for(done.wait(), timeout=120)
    elapsed = time.perf_counter() - start
    await pub.close()
    await sub_nc.close()
    return count / elapsed


# ---------------------------------------------------------------------- backlog and drains


async def _provision(url: str, auth: BenchAuth, *, partitions: int = 0) -> NatsSettings:
    """The layout of one phase, as the detector's settings. Under per-role credentials the layout is the
    one the permissions are written for (the bench's own server, dropped between phases); on a plain
    server each phase gets its own prefixes."""
    # 4 GiB of stream caps (PROBES 1.6 GiB): the backlog of a large --nodes × --rounds run must fit
    store = 4 * 1024**3
    if auth.creds:
        settings = auth.settings("detector", url=url, store_bytes=store)
    else:
        tag = uuid.uuid4().hex[:8]
        settings = NatsSettings(
            url=url, prefix=f"bench{tag}", stream_prefix=f"BENCH{tag}_", bucket_prefix=f"bench{tag}", store_bytes=store
        )
    if partitions:
        settings = settings.model_copy(update={"probe_partitions": partitions})
    nc = await auth.connect(url, "admin")
    await apply_topology(nc.jetstream(), settings.topology())
    await nc.close()
    return settings


async def _drop(url: str, settings: NatsSettings, auth: BenchAuth) -> None:
    nc = await auth.connect(url, "admin")
    js = nc.jetstream()
    for spec in settings.topology().streams:
        try:
            await js.delete_stream(spec.name)
        except Exception:  # noqa: S112 - best-effort cleanup of the bench's own streams
            continue
    for bucket in settings.topology().buckets:
        try:
            await js.delete_key_value(bucket.name)
        except Exception:  # noqa: S112
            continue
    await nc.close()


def _payloads(nodes: int, rounds: int) -> list[tuple[str, bytes, str]]:
    """(subject, payload, msg id) for nodes x rounds healthy probes; built from one template per node."""
    now = datetime.now(tz=UTC)
    out: list[tuple[str, bytes, str]] = []
    templates = []
    for i in range(nodes):
        node = _node(i)
        raw = sample_probe(node, seq=0, at=now).to_json()
        templates.append((node, raw))
    for r in range(rounds):
        seq = f'"seq":{r}'.encode()
        for node, raw in templates:
            msg_id = f"{node}-{r:08d}"
            out.append(("", raw.replace(b'"seq":0', seq).replace(f"{node}-00000000".encode(), msg_id.encode()), node))
    return out


async def prefill(url: str, settings: NatsSettings, *, nodes: int, rounds: int, auth: BenchAuth) -> tuple[int, int]:
    """Store nodes x rounds probes in PROBES (core publishes: the stream stores them without a PubAck round
    trip); returns (stored, payload bytes). They are agent probes of 20,000 nodes: no single real role
    may publish those (an agent speaks for its own node only, the prober only on `prober.*.*`), so the
    synthetic fleet publishes as admin."""
    nc = await auth.connect(url, "admin", name="bench-prefill", pending_size=64 * 1024 * 1024)
    stream = settings.topology().stream(f"{settings.stream_prefix}PROBES").name
    items = _payloads(nodes, rounds)
    subjects = {node: probe_subject(CLUSTER, node, prefix=settings.prefix) for node in {n for _, _, n in items}}
    for i, (_, payload, node) in enumerate(items):
        await nc.publish(subjects[node], payload)  # probes carry no Nats-Msg-Id (docs/design.md)
        if i % 5000 == 0:
            await nc.flush()
    await nc.flush()
    await nc.close()
    nc = await auth.connect(url, "admin", name="bench-prefill-check")
    js = nc.jetstream()
    deadline = time.monotonic() + 60
    stored = 0
    while time.monotonic() < deadline:
        stored = (await js.stream_info(stream)).state.messages
        if stored >= len(items):
            break
        await asyncio.sleep(0.2)
    await nc.close()
    return stored, len(items[0][1])


async def drain_detector(
    url: str,
    settings: NatsSettings,
    *,
    total: int,
    batch: int,
    auth: BenchAuth,
    durable: str = "detector",
) -> dict[str, Any]:
    nc = await auth.connect(url, "detector", name="bench-detector", pending_size=64 * 1024 * 1024)
    ds = DetectorSettings(nats=settings, batch_size=batch, tick_s=0.5, durable=durable)
    runtime = DetectorRuntime(settings=ds, nc=nc)
    await runtime.ensure_consumers(probe_deliver=DeliverPolicy.ALL)
    start = time.perf_counter()
    await runtime.start(rebuild=False, probe_deliver=DeliverPolicy.ALL)
    deadline = time.monotonic() + 600
    while runtime.detector.counters.probes < total and time.monotonic() < deadline:  # noqa: ASYNC110
        await asyncio.sleep(0.01)
    elapsed = time.perf_counter() - start
    processed = runtime.detector.counters.probes
    nodes = len(runtime.detector.nodes)
    await runtime.stop()
    await nc.close()
    return {"probes": processed, "seconds": round(elapsed, 3), "per_s": processed / elapsed, "nodes": nodes}


async def drain_nats_py_fetch(url: str, settings: NatsSettings, *, total: int, batch: int, auth: BenchAuth) -> float:
    """The straightforward consumer: nats-py `fetch(batch)` + ack of the last (no rules, no decode)."""
    nc = await auth.connect(url, "detector", name="bench-fetch")
    js = nc.jetstream()
    stream = settings.topology().stream(f"{settings.stream_prefix}PROBES").name
    durable = "bench-fetch"
    await js.add_consumer(
        stream,
        config=ConsumerConfig(durable_name=durable, ack_policy=AckPolicy.ALL, deliver_policy=DeliverPolicy.ALL),
    )
    sub = await js.pull_subscribe_bind(durable, stream=stream)
    seen = 0
    start = time.perf_counter()
    while seen < total:
        msgs = await sub.fetch(batch, timeout=5)
        seen += len(msgs)
        await msgs[-1].ack()
    elapsed = time.perf_counter() - start
    await nc.close()
    return seen / elapsed


async def open_puller(
    url: str, auth: BenchAuth, stream: str, *, durable: str, explicit: bool, batch: int
) -> tuple[Client, BatchPuller]:
    """A connection as the detector and the detector's batch puller on a new durable of `stream`: one
    `+ACK` per probe (AckPolicy.EXPLICIT) or, without `explicit`, one cumulative ack per chunk (AckPolicy.ALL,
    what the detector does)."""
    nc = await auth.connect(url, "detector", name=f"bench-{durable}", pending_size=64 * 1024 * 1024)
    await nc.jetstream().add_consumer(
        stream,
        config=ConsumerConfig(
            durable_name=durable,
            ack_policy=AckPolicy.EXPLICIT if explicit else AckPolicy.ALL,
            deliver_policy=DeliverPolicy.ALL,
            max_ack_pending=-1,
        ),
    )
    puller = BatchPuller(nc, stream=stream, consumer=durable, batch=batch)
    await puller.start()
    return nc, puller


async def drain_chunks(puller: BatchPuller, *, total: int, explicit: bool) -> int:
    """Pull chunks until `total` messages (or a 5 s silence), acknowledging each chunk; returns how many."""
    seen = 0
    while seen < total:
        chunk = await puller.next_chunk(wait_s=5)
        if not chunk:
            break
        seen += len(chunk)
        if explicit:
            await puller.ack_each(chunk)
        else:
            await puller.ack_all_through(chunk[-1])
    return seen


async def drain_puller_only(
    url: str, settings: NatsSettings, *, total: int, batch: int, auth: BenchAuth, explicit: bool = False
) -> float:
    """The batch puller alone (transport ceiling of the detector's path: no decode, no rules): one
    cumulative `+ACK` per chunk (AckPolicy.ALL, the detector before per-probe acks) or, with `explicit`,
    one `+ACK` per probe (AckPolicy.EXPLICIT, what the detector does now): the cost of acknowledging
    only what is done, measured in the same run."""
    stream = settings.topology().stream(f"{settings.stream_prefix}PROBES").name
    durable = "bench-puller-explicit" if explicit else "bench-puller"
    nc, puller = await open_puller(url, auth, stream, durable=durable, explicit=explicit, batch=batch)
    start = time.perf_counter()
    seen = await drain_chunks(puller, total=total, explicit=explicit)
    elapsed = time.perf_counter() - start
    await puller.stop()
    await nc.close()
    return seen / elapsed


# ---------------------------------------------------------------------- in-process costs


def decode_costs(payload: bytes, *, n: int = 20_000) -> dict[str, float]:
    start = time.perf_counter()
    for _ in range(n):
        probe_decoder.decode(payload)
    msgspec_us = (time.perf_counter() - start) / n * 1e6
    start = time.perf_counter()
    for _ in range(n // 4):
        NodeProbe.model_validate_json(payload)
    pydantic_us = (time.perf_counter() - start) / (n // 4) * 1e6
    # the subject identity check every probe gets after decoding (subject already seen: steady state)
    identity = ProbeIdentity(prefix=DEFAULT_PREFIX)
    probe = probe_decoder.decode(payload)
    subject = probe_subject(probe.cluster, probe.node)
    check = identity.mismatch
    assert check(subject, probe) is None
    start = time.perf_counter()
    for _ in range(n):
        check(subject, probe)
    identity_us = (time.perf_counter() - start) / n * 1e6
    return {
        "decode_us_msgspec": round(msgspec_us, 2),
        "decode_us_pydantic": round(pydantic_us, 2),
        "identity_check_us": round(identity_us, 2),
    }


def rules_cost(*, nodes: int, rounds: int = 3) -> float:
    det = Detector(config=RuleConfig(), started_at=time.time())
    probes = [probe_decoder.decode(sample_probe(_node(i)).to_json()) for i in range(nodes)]
    now = time.time()
    start = time.perf_counter()
    for _ in range(rounds):
        for p in probes:
            det.observe_probe(p, now=now)
    return (time.perf_counter() - start) / (nodes * rounds) * 1e6


def bytes_per_node(*, nodes: int) -> float:
    probes = [probe_decoder.decode(sample_probe(_node(i)).to_json()) for i in range(nodes)]
    now = time.time()
    tracemalloc.start()
    det = Detector(config=RuleConfig(), started_at=now)
    before = tracemalloc.get_traced_memory()[0]
    for p in probes:
        det.observe_probe(p, now=now)
    after = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    del probes
    return (after - before) / nodes


# ---------------------------------------------------------------------- open-loop latency


def _publisher_process(
    url: str, prefix: str, nodes: int, rate: float, seconds: float, fault_every: int, auth: BenchAuth
) -> None:
    asyncio.run(_publish_open_loop(url, prefix, nodes, rate, seconds, fault_every, auth))


async def _publish_open_loop(
    url: str, prefix: str, nodes: int, rate: float, seconds: float, fault_every: int, auth: BenchAuth
) -> None:
    # agent probes of many nodes: admin (see prefill)
    nc = await auth.connect(url, "admin", name="bench-open-loop", pending_size=64 * 1024 * 1024)
    names = [_node(i) for i in range(nodes)]
    subjects = [probe_subject(CLUSTER, n, prefix=prefix) for n in names]
    placeholder = datetime(2000, 1, 1, tzinfo=UTC)
    stamp = placeholder.isoformat().replace("+00:00", "Z").encode()
    # Templates (healthy and disk-full) per node; per message only time, seq and id are patched in.
    good = [sample_probe(n, seq=0, at=placeholder).to_json() for n in names]
    bad = [sample_probe(n, seq=0, at=placeholder, used=99.0).to_json() for n in names]
    start = time.perf_counter()
    sent = 0
    while time.perf_counter() - start < seconds:
        due = int((time.perf_counter() - start) * rate)
        while sent < due:
            i = sent % nodes
            rnd = sent // nodes
            template = bad[i] if (rnd * 7 + i) % fault_every == 0 else good[i]
            now = datetime.now(tz=UTC).isoformat().replace("+00:00", "Z").encode()
            msg_id = f"{names[i]}-{rnd:08d}"
            payload = (
                template.replace(stamp, now, 1)
                .replace(b'"seq":0', f'"seq":{rnd}'.encode(), 1)
                .replace(f"{names[i]}-00000000".encode(), msg_id.encode(), 1)
            )
            await nc.publish(subjects[i], payload)  # probes carry no Nats-Msg-Id (docs/design.md)
            sent += 1
        await nc.flush()
        await asyncio.sleep(0.002)
    await nc.close()


async def open_loop_latency(
    url: str,
    settings: NatsSettings,
    *,
    nodes: int,
    rate: float,
    seconds: float,
    auth: BenchAuth,
    fault_every: int = 100,
) -> dict[str, Any]:
    nc = await auth.connect(url, "detector", name="bench-latency")
    latencies: list[float] = []

    def on_published(anomaly: Anomaly, published_at: float) -> None:
        if anomaly.status == "firing" and anomaly.kind == "disk_full":
            latencies.append((published_at - anomaly.fault_onset.timestamp()) * 1000)

    ds = DetectorSettings(
        nats=settings, batch_size=1000, tick_s=0.2, rules=RuleConfig(threshold_probes=1, clear_probes=1)
    )
    runtime = DetectorRuntime(settings=ds, nc=nc, on_published=on_published)
    await runtime.start(rebuild=False)
    ctx = multiprocessing.get_context("spawn")
    proc = ctx.Process(
        target=_publisher_process, args=(url, settings.prefix, nodes, rate, seconds, fault_every, auth), daemon=True
    )
    start = time.perf_counter()
    proc.start()
    while proc.is_alive():  # noqa: ASYNC110
        await asyncio.sleep(0.1)
    # let the tail drain
    for _ in range(50):
        before = runtime.detector.counters.probes
        await asyncio.sleep(0.1)
        if runtime.detector.counters.probes == before:
            break
    elapsed = time.perf_counter() - start
    processed = runtime.detector.counters.probes
    await runtime.stop()
    await nc.close()
    latencies.sort()

    def pct(q: float) -> float:
        if not latencies:
            return float("nan")
        return round(latencies[min(len(latencies) - 1, int(q * len(latencies)))], 2)

    return {
        "rate_per_s": rate,
        "seconds": seconds,
        "probes_processed": processed,
        "achieved_per_s": round(processed / seconds, 1),
        "wall_s_including_publisher_start": round(elapsed, 2),
        "anomalies_measured": len(latencies),
        "p50_ms": pct(0.50),
        "p90_ms": pct(0.90),
        "p99_ms": pct(0.99),
        "max_ms": round(latencies[-1], 2) if latencies else float("nan"),
        "mean_ms": round(statistics.fmean(latencies), 2) if latencies else float("nan"),
    }


# ---------------------------------------------------------------------- the whole run


async def run_bench(
    *,
    url: str,
    nodes: int,
    seconds: float,
    rounds: int,
    rate: float,
    batch: int,
    raw_count: int,
    auth: BenchAuth | None = None,
) -> dict[str, Any]:
    """One run. `auth` is how every client connects (per-role creds + TLS in the production
    configuration); the raw ceiling, the drains and the latency run all use it."""
    auth = auth or BenchAuth()
    payload = sample_probe(_node(0)).to_json()
    nc = await auth.connect(url, "admin")
    server_version = await _server_version(nc)
    await nc.close()

    raw = await raw_nats_msgs_per_s(url, payload, count=raw_count, auth=auth)

    settings = await _provision(url, auth)
    try:
        stored, probe_bytes = await prefill(url, settings, nodes=nodes, rounds=rounds, auth=auth)
        total = nodes * rounds
        detector = await drain_detector(url, settings, total=stored, batch=batch, auth=auth)
        fetch_rate = await drain_nats_py_fetch(url, settings, total=stored, batch=batch, auth=auth)
        puller_rate = await drain_puller_only(url, settings, total=stored, batch=batch, auth=auth)
        explicit_rate = await drain_puller_only(url, settings, total=stored, batch=batch, auth=auth, explicit=True)
    finally:
        await _drop(url, settings, auth)

    lat_settings = await _provision(url, auth)
    try:
        latency = await open_loop_latency(url, lat_settings, nodes=nodes, rate=rate, seconds=seconds, auth=auth)
    finally:
        await _drop(url, lat_settings, auth)

    costs = decode_costs(payload)
    rules_us = rules_cost(nodes=min(nodes, 20_000))
    per_node = bytes_per_node(nodes=nodes)
    return {
        "benchmark": "detector",
        "probes_per_s": round(detector["per_s"], 1),
        "p50_ms": latency["p50_ms"],
        "p99_ms": latency["p99_ms"],
        "bytes_per_node": round(per_node, 1),
        "raw_nats_msgs_per_s": round(raw, 1),
        "share_of_raw": round(detector["per_s"] / raw, 3),
        "config": auth.config,
        "target_probes_per_s": 50_000,
        "nodes": nodes,
        "backlog_probes": total,
        "backlog_stored": stored,
        "probe_bytes": probe_bytes,
        "batch_size": batch,
        "drain": detector,
        "latency": latency,
        "breakdown": {
            "drain_nats_py_fetch_no_rules_per_s": round(fetch_rate, 1),
            "drain_nats_py_batch_puller_no_rules_per_s": round(puller_rate, 1),
            "drain_nats_py_batch_puller_no_rules_explicit_acks_per_s": round(explicit_rate, 1),
            "rules_us_per_probe": round(rules_us, 2),
            **costs,
        },
        "machine": {**_machine(), "nats_server": server_version},
        "method": (
            "probes_per_s: DetectorRuntime draining a backlog pre-filled into PROBES (a Python publisher cannot "
            "publish 50k/s to JetStream with acks); nats-server, detector and bench share this machine. "
            "p50/p99: open loop at rate_per_s from a separate publisher process, ~1% of probes disk-full, "
            "probe time (= publish time = fault_onset) to the anomaly's PubAck. raw_nats_msgs_per_s: core "
            "publish -> subscribe callback of the same payload. config: tls and creds = the bench's own "
            "nats-server with TLS and deploy/nats/natsauth.py's per-role users (admin provisions and "
            "publishes the synthetic agents' probes, detector consumes), every client of the run connected that way."
        ),
    }
