"""The detector's anomaly publishing against a real nats-server: one flush at a time (the probe loop and the
CLOUD / AUDIT handlers all flush), a firing and its resolution never in flight together, and a failed flush
is a transient failure for the consumer runtime (a CLOUD / AUDIT message is tried again, not dead-lettered)."""

from __future__ import annotations

import asyncio
import contextvars
from typing import Any

import nats.errors
import pytest
from nats.aio.client import Client
from nats.js.api import DeliverPolicy

from nodeheal.detector.fastpath import probe_decoder
from nodeheal.detector.handlers import DetectorRuntime
from nodeheal.detector.rules import RuleConfig
from nodeheal.detector.settings import DetectorSettings
from nodeheal.runtime.consumer import TRANSIENT
from nodeheal.runtime.settings import NatsSettings
from nodeheal.schemas.subjects import cloud_subject
from tests.integration.deploy.natsauth_loader import RoleServer, admin_stands_in, violations
from tests.integration.detector.test_detector_nats import anomalies, cloud_event, eventually, probe, publish

pytestmark = pytest.mark.nats


nc, topology_ready = admin_stands_in()  # the tests run on the per-role server; admin stands in


@pytest.fixture
async def detector_nc(deployed: RoleServer) -> Client:
    """The detector's connection, under its role's credential and inbox prefix."""
    return await deployed.role_nc("detector")


async def test_a_probe_chunk_is_acked_only_after_its_anomalies_are_stored_even_if_a_cloud_flush_took_them(
    topology_ready: NatsSettings, nc: Client, detector_nc: Client, deployed: RoleServer
) -> None:
    """The probe loop publishes window 1 (n1's anomaly, held) while n2's waits in the queue; a CLOUD message's
    flush starts meanwhile. Once n1's is stored, the probe loop must not ack n2's probe while n2's anomaly is
    not stored (held in the CLOUD handler's flush, before the fix): a SIGKILL then would lose it for good.
    No timing: n2's publish is held until the probe chunk is acked or the probe loop itself publishes n2."""
    s = topology_ready
    await publish(nc, s, probe(node="n1", seq=1, used=99.0))
    await publish(nc, s, probe(node="n2", seq=1, used=99.0))
    rt = DetectorRuntime(
        settings=DetectorSettings(
            nats=deployed.role, batch_size=100, tick_s=0.1, publish_window=1, rules=RuleConfig(threshold_probes=1)
        ),
        nc=detector_nc,
    )
    flusher: contextvars.ContextVar[str] = contextvars.ContextVar("flusher", default="")
    gate1, gate2 = asyncio.Event(), asyncio.Event()
    n1_started, cloud_flushing = asyncio.Event(), asyncio.Event()
    stored: set[str] = set()  # nodes whose anomaly got its PubAck
    at_ack: list[set[str]] = []  # `stored` at each cumulative ack of probes
    real_publish, real_flush = rt.js.publish, rt._flush

    async def flush(now: float) -> None:
        task = asyncio.current_task()
        flusher.set(task.get_name() if task is not None else "")
        if flusher.get() != "detector-probes":
            cloud_flushing.set()
        await real_flush(now)

    async def gated(subject: str, payload: bytes = b"", **kw: Any) -> Any:
        node = subject.rsplit(".", 1)[-1]
        if ".anomaly." in subject and node == "n1":
            n1_started.set()
            await gate1.wait()
        if ".anomaly." in subject and node == "n2":
            if flusher.get() == "detector-probes":
                gate2.set()  # the probe loop publishes n2 itself: it cannot ack before this returns
            await gate2.wait()
        ack = await real_publish(subject, payload, **kw)
        stored.add(node)
        return ack

    make_puller = rt._make_probe_puller

    def one_chunk_of_both() -> Any:
        """The real puller, whose first chunk is held until it carries both probes: the puller returns what
        has reached the socket, and n2's probe may arrive a read after n1's (a chunk of n1 alone is acked
        with n1's anomaly stored, rightly, and the scenario under test does not happen)."""
        puller = make_puller()
        real_next = puller.next_chunk
        held: list[Any] = []
        first = [True]

        async def next_chunk(*, wait_s: float) -> Any:
            while True:
                held.extend(await real_next(wait_s=wait_s))
                if not first[0] or len(held) >= 2 or not held:
                    first[0] = first[0] and not held
                    got = list(held)
                    held.clear()
                    return got

        puller.next_chunk = next_chunk  # type: ignore[method-assign]
        return puller

    rt._make_probe_puller = one_chunk_of_both  # type: ignore[method-assign]
    rt._flush = flush  # type: ignore[method-assign]
    rt.js.publish = gated  # type: ignore[method-assign]
    await rt.start(rebuild=False, probe_deliver=DeliverPolicy.ALL)
    assert rt._probe_puller is not None
    real_ack = rt._probe_puller.ack_all_through

    async def ack_all_through(msg: Any) -> None:
        at_ack.append(set(stored))
        gate2.set()  # acked: n2 may go on (the defect is recorded)
        await real_ack(msg)

    rt._probe_puller.ack_all_through = ack_all_through  # type: ignore[method-assign]
    probes = s.topology().stream(f"{s.stream_prefix}PROBES").name
    try:
        await asyncio.wait_for(n1_started.wait(), 10)  # the probe loop's window 1 (n1) is in flight
        ev = cloud_event("n3", "in_progress", event_id="e-3", instance_id="i-3")
        await nc.jetstream().publish(cloud_subject("c1", "n3", prefix=s.prefix), ev.to_json())
        await asyncio.wait_for(cloud_flushing.wait(), 10)  # the CLOUD handler's flush has started
        gate1.set()

        async def both_acked() -> bool:
            info = await nc.jetstream().consumer_info(probes, rt.settings.probe_durable)
            return (info.ack_floor.stream_seq or 0) >= 2

        await eventually(both_acked, timeout_s=10)
        assert at_ack, "the probes were acked"
        assert at_ack[0] >= {"n1", "n2"}, f"probes acked while n2's anomaly was not stored: stored={at_ack[0]}"
        got = [(a.node, a.kind) for a in await anomalies(nc, s)]
        assert {("n1", "disk_full"), ("n2", "disk_full")} <= set(got)
    finally:
        gate1.set()
        gate2.set()
        await rt.stop()
    assert violations(deployed.dir) == []


async def test_a_firing_whose_publish_failed_is_stored_before_its_resolution(
    topology_ready: NatsSettings, nc: Client, detector_nc: Client, deployed: RoleServer
) -> None:
    """One chunk fires and clears disk_full on n1 (one window by size). The firing's first publish fails (no
    PubAck): its resolution must not be stored first, ANOMALIES holds firing then resolved."""
    s = topology_ready
    await publish(nc, s, probe(node="n1", seq=1, used=99.0))  # fires (threshold_probes=1)
    await publish(nc, s, probe(node="n1", seq=2, used=10.0))  # clears (clear_probes=1)
    det = DetectorRuntime(
        settings=DetectorSettings(
            nats=deployed.role, batch_size=100, tick_s=0.1, rules=RuleConfig(threshold_probes=1, clear_probes=1)
        ),
        nc=detector_nc,
    )
    real = det.js.publish
    failed_once = False

    async def flaky(subject: str, payload: bytes = b"", **kw: Any) -> Any:
        nonlocal failed_once
        if ".anomaly." in subject and b'"status":"firing"' in payload and not failed_once:
            failed_once = True
            await asyncio.sleep(0.05)
            raise nats.errors.TimeoutError  # the firing's PubAck never came: not stored
        return await real(subject, payload, **kw)

    det.js.publish = flaky  # type: ignore[method-assign]
    await det.start(rebuild=False, probe_deliver=DeliverPolicy.ALL)
    try:

        async def two() -> bool:
            return len(await anomalies(nc, s)) >= 2

        await eventually(two)
        order = [(a.kind, a.status) for a in await anomalies(nc, s)]
    finally:
        await det.stop()
    assert failed_once
    assert order == [("disk_full", "firing"), ("disk_full", "resolved")]
    assert violations(deployed.dir) == []


async def test_a_failed_flush_is_transient_for_the_consumer_runtime(detector_nc: Client, deployed: RoleServer) -> None:
    """A CLOUD / AUDIT handler flushes; when ANOMALIES does not answer, what it raises must be one of the runtime's
    transient failures (nak'ed, tried again) — not a "handler failed" that ends a valid message in the DLQ."""
    rt = DetectorRuntime(settings=DetectorSettings(nats=deployed.role, batch_size=100, tick_s=0.1), nc=detector_nc)

    async def down(subject: str, payload: bytes = b"", **kw: Any) -> Any:
        raise nats.errors.TimeoutError

    rt.js.publish = down  # type: ignore[method-assign]
    rt.detector.observe_probe(probe_decoder.decode(probe(node="n5", seq=1, used=10.0).to_json()), now=rt.clock())
    ev = cloud_event("n5", "in_progress", event_id="e-5", instance_id="i-5")
    rt._on_cloud(ev.to_json(), None, rt.clock())
    assert rt.detector.outbox, "the cloud event should fire cloud_maintenance"
    with pytest.raises(TRANSIENT):
        await rt._flush(rt.clock())
    assert rt._unpublished, "the anomaly is kept for the next try"
    assert violations(deployed.dir) == []
