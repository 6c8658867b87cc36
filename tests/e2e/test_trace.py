"""One injected fault followed through the pipeline by its trace: the detector, the diagnoser and the
remediator run as real processes (`python -m nodeheal.<service>`, configured only by env vars, as the
demo and Kubernetes run them) on a real nats-server with the deployed per-role authorization
(deploy/nats/natsauth.py), each under its role's credential and inbox prefix; the faulty node is served by
the real agent code under the node's own minted credential (its kubelet failed; it answers the remediator's
`restart_service`, and its probes verify the restart), and the test is the rest of the fleet (healthy probes of
two peers).

The anomaly's `traceparent`, the diagnosis's `traceparent` and the `trace_id` of every audit record
of that incident must name one and the same trace. The services export their spans to a local
OTLP/HTTP endpoint in this test, and every service's spans must be in that trace too.
"""

from __future__ import annotations

import asyncio
import threading
import time
import urllib.request
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from nats.aio.client import Client
from nats.js.api import ConsumerConfig, DeliverPolicy
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from nodeheal.agent.app import NodeAgent
from nodeheal.cli.procs import ServiceProcess, service_processes, stop_all
from nodeheal.runtime.settings import NatsSettings
from nodeheal.runtime.telemetry import trace_id_from_headers
from nodeheal.schemas.anomaly import Anomaly
from nodeheal.schemas.audit import RemediationRecord
from nodeheal.schemas.diagnosis import Diagnosis
from nodeheal.schemas.inventory import NodeInventory, inventory_key
from nodeheal.schemas.probe import FileHandles, FileSystem, LoadAverage, NodeProbe, ServiceState
from nodeheal.schemas.subjects import probe_subject, wildcard
from tests.integration.deploy.natsauth_loader import agent_nats, per_role_server, role_nats, violations
from tests.integration.remediator.harness import real_agent_with_a_dead_kubelet
from tests.unit.cloud_events.agent_fakenode import statvfs_with

pytestmark = [pytest.mark.nats, pytest.mark.slow]

CLUSTER = "c1"
NODE = "trace-n1"
PEERS = ("trace-n2", "trace-n3")


class Collector:
    """A local OTLP/HTTP trace endpoint (`POST /v1/traces`, protobuf): trace id (hex) -> service names."""

    def __init__(self) -> None:
        self.spans: dict[str, set[str]] = {}
        self._lock = threading.Lock()
        collector = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                request = ExportTraceServiceRequest()
                request.ParseFromString(body)
                with collector._lock:
                    for rs in request.resource_spans:
                        service = next(
                            (a.value.string_value for a in rs.resource.attributes if a.key == "service.name"), "?"
                        )
                        for ss in rs.scope_spans:
                            for span in ss.spans:
                                collector.spans.setdefault(span.trace_id.hex(), set()).add(service)
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.end_headers()

            def log_message(self, format: str, *args: object) -> None:
                return

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def services_in(self, trace_id: str) -> set[str]:
        with self._lock:
            return set(self.spans.get(trace_id, set()))

    def __enter__(self) -> Collector:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


def _metrics(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        return str(response.read().decode())


@pytest.fixture
def collector() -> Iterator[Collector]:
    with Collector() as c:
        yield c


def _probe(node: str, *, kubelet_ok: bool, seq: int) -> NodeProbe:
    """What a node's agent sends: every measurement the remediator's verification needs is present."""
    return NodeProbe(
        cluster=CLUSTER,
        node=node,
        source="simulator",
        seq=seq,
        ready=True,
        boot_id="boot-1",
        load=LoadAverage(load1=0.5, load5=0.5, load15=0.5),
        cpu_count=4,
        filesystems=(FileSystem(mount="/", used_pct=40.0, inodes_used_pct=10.0),),
        file_handles=FileHandles(allocated=1000, max=100_000),
        services=(ServiceState(name="kubelet", state="active" if kubelet_ok else "failed"),),
    )


async def _stored(nc: Client, stream: str, subject: str) -> list[tuple[bytes, dict[str, str]]]:
    """Everything a stream holds on `subject` (data, headers), read once."""
    js = nc.jetstream()
    info = await js.stream_info(stream)
    if not info.state.messages:
        return []
    sub = await js.subscribe(
        subject, stream=stream, ordered_consumer=True, config=ConsumerConfig(deliver_policy=DeliverPolicy.ALL)
    )
    out: list[tuple[bytes, dict[str, str]]] = []
    try:
        while True:
            try:
                msg = await sub.next_msg(timeout=1.0)
            except TimeoutError:
                break
            out.append((msg.data, dict(msg.headers or {})))
            if msg.metadata.num_pending == 0:
                break
    finally:
        await sub.unsubscribe()
    return out


async def _wait(what: str, check: object, *, procs: list[ServiceProcess], timeout_s: float = 120.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if await check():  # type: ignore[operator]
            return
        for p in procs:
            assert p.alive, f"{p.name} exited:\n{p.tail(40)}"
        await asyncio.sleep(0.25)
    logs = "\n\n".join(f"--- {p.name}\n{p.tail(25)}" for p in procs)
    raise AssertionError(f"timed out waiting for {what}\n{logs}")


ROLES = ("detector", "diagnoser", "remediator")


@dataclass
class Deployed:
    """A nats-server with the deployed per-role authorization: the admin connection and settings the test
    reads and drives with, and the directory of the credentials and the server's log."""

    nc: Client
    nats: NatsSettings
    directory: Path


@pytest.fixture
async def deployed(tmp_path: Path) -> AsyncIterator[Deployed]:
    directory = tmp_path / "nats"
    directory.mkdir()
    async with per_role_server(directory, *ROLES, nodes=((CLUSTER, NODE),)) as (_server, nc, admin):
        yield Deployed(nc=nc, nats=admin, directory=directory)


@pytest.fixture
async def pipeline(deployed: Deployed, tmp_path: Path, collector: Collector) -> AsyncIterator[list[ServiceProcess]]:
    common = {
        "TELEMETRY__OTLP_ENDPOINT": collector.url,
        "TELEMETRY__SAMPLE_RATIO": "1.0",
    }
    extra = {
        "detector": {
            "RULES__PROBE_INTERVAL_S": "1",
            "RULES__WARMUP_S": "0",
            "TICK_S": "0.2",
        },
        "diagnoser": {"TICK_S": "0.2"},
        "remediator": {
            "KUBE__ENABLED": "false",
            "CLOUD__PROVIDER": "none",
            "VERIFY_TIMEOUT_S": "30",
            "VERIFY_POLL_S": "0.2",
            "NODE_COMMAND_TIMEOUT_S": "5",
            "POLICY__APPROVAL_REQUIRED": "[]",
        },
    }
    prefixes = {
        "detector": "NODEHEAL_DETECTOR_",
        "diagnoser": "NODEHEAL_DIAGNOSER_",
        "remediator": "NODEHEAL_REMEDIATOR_",
    }
    env = {name: {prefixes[name] + k: v for k, v in {**common, **extra[name]}.items()} for name in prefixes}
    for name in prefixes:
        env[name]["OTEL_BSP_SCHEDULE_DELAY"] = "200"  # export spans quickly (ms)
        role = role_nats(deployed.directory, deployed.nats.url, name)  # as deploy/base/<name>.yaml configures it
        env[name][f"{prefixes[name]}NATS__CREDS_FILE"] = str(role.creds_file)
        env[name][f"{prefixes[name]}NATS__INBOX_PREFIX"] = role.inbox_prefix
    procs = service_processes(
        settings=deployed.nats,
        cluster=CLUSTER,
        run_dir=tmp_path,
        names=list(prefixes),
        extra_env=env,
    )
    try:
        for p in procs:
            p.start()
        deadline = time.monotonic() + 90
        waiting = list(procs)
        while waiting and time.monotonic() < deadline:
            for p in list(waiting):
                assert p.alive, f"{p.name} exited:\n{p.tail(40)}"
                if p.ready():
                    waiting.remove(p)
            await asyncio.sleep(0.2)
        assert not waiting, {p.name: p.tail(30) for p in waiting}
        yield procs
    finally:
        # all at once, with a short grace: the spans and the metrics were read by then, and a service
        # that does not exit within it is killed (one grace period, not one per service)
        stop_all(procs, timeout_s=5.0)


async def test_one_fault_one_trace_from_anomaly_to_audit(
    deployed: Deployed, pipeline: list[ServiceProcess], collector: Collector, tmp_path: Path
) -> None:
    nats, nc = deployed.nats, deployed.nc
    topo = nats.topology()
    js = nc.jetstream()
    kv = await js.key_value(f"{nats.bucket_prefix}-inventory")
    for node in (NODE, *PEERS):
        await kv.put(
            inventory_key(CLUSTER, node),
            NodeInventory(cluster=CLUSTER, node=node, zone="z1", cloud="alibaba", instance_id=f"i-{node}").to_json(),
        )

    # the node's agent, the real code under the node's own credential: kubelet failed, probes every 0.2 s
    fake, agent_settings = real_agent_with_a_dead_kubelet(
        agent_nats(deployed.directory, nats.url, CLUSTER, NODE), NODE, tmp_path
    )
    agent = NodeAgent(agent_settings, statvfs=statvfs_with({"root": (50, 10)}))  # type: ignore[arg-type]
    await agent.start()
    probes = asyncio.create_task(agent.run_probes())

    stop = asyncio.Event()

    async def fleet() -> None:
        seq = 0
        while not stop.is_set():
            seq += 1
            for node in PEERS:
                probe = _probe(node, kubelet_ok=True, seq=seq)
                await js.publish(
                    probe_subject(CLUSTER, node, prefix=nats.prefix),
                    probe.to_json(),
                    headers={"Nats-Msg-Id": f"{node}-{seq}-{id(stop)}"},
                )
            await asyncio.sleep(0.5)

    prober = asyncio.create_task(fleet())
    audit_stream = topo.stream(f"{nats.stream_prefix}AUDIT").name
    audit_subject = wildcard("audit", prefix=nats.prefix)

    async def verified() -> bool:
        records = [RemediationRecord.model_validate_json(d) for d, _ in await _stored(nc, audit_stream, audit_subject)]
        return any(r.phase == "verified" and r.node == NODE for r in records)

    try:
        await _wait("the restart to be verified in AUDIT", verified, procs=pipeline)
    finally:
        stop.set()
        await prober
        await agent.stop()
        await probes
    assert fake.restarts_logged() == ["kubelet.service"]  # at the node, by the real agent, once
    assert agent.executor.executed == 1

    anomalies = [
        (Anomaly.model_validate_json(d), h)
        for d, h in await _stored(
            nc, topo.stream(f"{nats.stream_prefix}ANOMALIES").name, wildcard("anomaly", prefix=nats.prefix)
        )
    ]
    firing = [(a, h) for a, h in anomalies if a.node == NODE and a.status == "firing" and a.subject == "kubelet"]
    assert len(firing) == 1, [a for a, _ in anomalies]
    anomaly, anomaly_headers = firing[0]
    trace_id = trace_id_from_headers(anomaly_headers)
    assert trace_id is not None, anomaly_headers

    diagnoses = [
        (Diagnosis.model_validate_json(d), h)
        for d, h in await _stored(
            nc, topo.stream(f"{nats.stream_prefix}DIAGNOSES").name, wildcard("diagnosis", prefix=nats.prefix)
        )
    ]
    explaining = [(d, h) for d, h in diagnoses if anomaly.id in d.anomaly_ids and not d.resolved]
    assert explaining, [d for d, _ in diagnoses]
    for diagnosis, headers in explaining:
        assert trace_id_from_headers(headers) == trace_id, (diagnosis.cause, headers)

    diagnosis_ids = {d.id for d, _ in explaining}
    stored_audit = await _stored(nc, audit_stream, audit_subject)
    records = [
        (r, h)
        for r, h in ((RemediationRecord.model_validate_json(d), h) for d, h in stored_audit)
        if r.diagnosis_id in diagnosis_ids
    ]
    assert records, "no audit record of the incident"
    assert {r.phase for r, _ in records} >= {"intent", "started", "succeeded", "verified"}
    for record, headers in records:
        assert record.trace_id == trace_id, (record.phase, record.action, record.trace_id)
        assert trace_id_from_headers(headers) == trace_id, (record.phase, headers)

    # and every service exported its spans of this incident into that one trace
    async def exported() -> bool:
        return collector.services_in(trace_id) >= {"nodeheal-detector", "nodeheal-diagnoser", "nodeheal-remediator"}

    await _wait(f"spans of trace {trace_id} from the three services", exported, procs=pipeline, timeout_s=30)

    # the 1-5-10 histograms of the dashboard saw this incident, each in its own service
    expected = {
        "detector": 'nodeheal_time_to_detect_seconds_count{fault_class="service_down"}',
        "diagnoser": "nodeheal_time_to_identify_seconds_count{",
        "remediator": "nodeheal_time_to_repair_seconds_count{",
    }
    for proc in pipeline:
        text = _metrics(proc.http_port)
        lines = [line for line in text.splitlines() if line.startswith(expected[proc.name])]
        assert lines and all(float(line.rsplit(" ", 1)[1]) >= 1 for line in lines), (proc.name, lines)
    remediator = _metrics(next(p for p in pipeline if p.name == "remediator").http_port)
    assert 'nodeheal_remediation_actions_total{action="restart_service",outcome="verified"} 1.0' in remediator
    assert violations(deployed.directory) == []


async def test_cloud_maintenance_anomaly_continues_the_cloud_events_trace(
    topology_ready: NatsSettings, nc: Client
) -> None:
    """The ingest starts a trace with each CLOUD message; the maintenance anomaly it causes carries on."""
    from datetime import UTC, datetime

    from opentelemetry.sdk.trace import TracerProvider

    from nodeheal.detector.handlers import DetectorRuntime
    from nodeheal.detector.settings import DetectorSettings
    from nodeheal.runtime.telemetry import make_sampler, publish_span, start_incident
    from nodeheal.schemas.cloud import CloudSystemEvent
    from nodeheal.schemas.subjects import cloud_subject

    s = topology_ready
    provider = TracerProvider(sampler=make_sampler(1.0))
    tracer = provider.get_tracer("test")
    runtime = DetectorRuntime(settings=DetectorSettings(nats=s, batch_size=100, tick_s=0.1), nc=nc, tracer=tracer)
    await runtime.start()
    try:
        js = nc.jetstream()
        await js.publish(
            probe_subject(CLUSTER, "cm-1", prefix=s.prefix), _probe("cm-1", kubelet_ok=True, seq=1).to_json()
        )

        async def known() -> bool:
            return f"{CLUSTER}/cm-1" in runtime.detector.nodes

        await _wait("the detector to learn the node", known, procs=[], timeout_s=20)
        event = CloudSystemEvent(
            cluster=CLUSTER,
            node="cm-1",
            cloud="alibaba",
            channel="simulator",
            provider_event_id="e-trace",
            provider_event_type="SystemMaintenance.Reboot",
            action="reboot",
            cause="planned_maintenance",
            phase="in_progress",
            instance_id="i-cm-1",
            observed_at=datetime.now(tz=UTC),
        )
        subject = cloud_subject(CLUSTER, "cm-1", prefix=s.prefix)
        with start_incident(tracer, name="cloud event"), publish_span(tracer, subject=subject) as headers:
            pass
        await js.publish(subject, event.to_json(), headers={**headers, "Nats-Msg-Id": event.dedup_id})
        stream = s.topology().stream(f"{s.stream_prefix}ANOMALIES").name
        found: list[tuple[Anomaly, dict[str, str]]] = []
        deadline = time.monotonic() + 20
        while not found and time.monotonic() < deadline:
            found = [
                (a, h)
                for a, h in (
                    (Anomaly.model_validate_json(d), h)
                    for d, h in await _stored(nc, stream, wildcard("anomaly", prefix=s.prefix))
                )
                if a.kind == "cloud_maintenance" and a.node == "cm-1"
            ]
            await asyncio.sleep(0.1)
        assert found, "no cloud_maintenance anomaly"
        assert trace_id_from_headers(found[0][1]) == trace_id_from_headers(headers) is not None
    finally:
        await runtime.stop()
