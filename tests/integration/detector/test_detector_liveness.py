"""The detector's liveness under load (issue 19): a detector far behind its PROBES backlog, sweeping a silence
storm, is alive — `/healthz` keeps answering 200 between the storm's slices while the feed-lag metric says how far
behind it reads; a probe loop that is stuck (no step at all) still fails `/healthz` so the pod is restarted."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
from collections.abc import AsyncIterator

import prometheus_client
import pytest
from nats.aio.client import Client
from nats.js.api import DeliverPolicy

from nodeheal.detector.handlers import DetectorRuntime
from nodeheal.detector.settings import DetectorSettings
from nodeheal.runtime.service import build_asgi, make_broker
from nodeheal.runtime.settings import NatsSettings
from nodeheal.schemas.subjects import probe_subject
from tests.integration.deploy.natsauth_loader import RoleServer, admin_stands_in, violations
from tests.integration.detector.test_detector_nats import eventually, probe
from tests.support.asgi import asgi_get

pytestmark = pytest.mark.nats

NODES = 3000


@contextlib.asynccontextmanager
async def detector_with_health(
    settings: DetectorSettings, nc: Client, clock: list[float]
) -> AsyncIterator[tuple[DetectorRuntime, object, prometheus_client.CollectorRegistry]]:
    """A started detector reading PROBES from its beginning (the backlog), with the process shell's
    `/healthz` on its liveness, as `build_runtime_app` wires them."""
    registry = prometheus_client.CollectorRegistry()
    rt = DetectorRuntime(settings=settings, nc=nc, registry=registry, clock=lambda: clock[0])
    await rt.start(rebuild=False, probe_deliver=DeliverPolicy.ALL)
    shell = make_broker(settings.nats, name="pytest-shell")
    app = build_asgi(shell, liveness=[rt.liveness], registry=registry)
    try:
        yield rt, app, registry
    finally:
        await rt.stop()


nc, topology_ready = admin_stands_in()  # the tests run on the per-role server; admin stands in


async def test_a_detector_far_behind_in_a_silence_storm_stays_alive(
    deployed: RoleServer, topology_ready: NatsSettings, nc: Client
) -> None:
    """The 50,000-node demo: a detector behind its stream swept a silence storm (tens of thousands of node_down)
    in one go — the timer sweep and the anomalies' publishing ran without giving the event loop back, its
    `/healthz` went unanswered past the kubelet's timeout and the pod was restarted (twice), which put a
    rebuild on top of the backlog. Now the storm is swept and published in slices: `/healthz` is answered
    between them, 200 throughout, and the lag metric shows how far behind the detector reads."""
    for i in range(NODES):  # the backlog: every node's probe, stored before the detector reads any
        p = probe(node=f"n{i}", seq=1, used=30.0)
        await nc.publish(probe_subject(p.cluster, p.node, prefix=topology_ready.prefix), p.to_json())
    await nc.flush()
    await asyncio.sleep(2.0)  # the backlog ages: the detector starts at least 2 s behind its stream
    clock = [time.time()]
    settings = DetectorSettings(nats=deployed.role, batch_size=500, tick_s=0.1, tick_limit=200, publish_window=100)
    async with detector_with_health(settings, await deployed.role_nc("detector"), clock) as (rt, app, registry):
        det = rt.detector
        answers: list[tuple[int, int]] = []  # (/healthz status, anomalies fired when it answered)
        failures: list[str] = []  # what /healthz said when it did not answer 200
        done = asyncio.Event()

        async def kubelet() -> None:
            while not done.is_set():
                status, body = await asgi_get(app, "/healthz")
                answers.append((status, det.counters.fired))
                if status != 200:
                    failures.append(f"{status} after {det.counters.fired} fired: {body}")
                await asyncio.sleep(0)

        asking = asyncio.create_task(kubelet())
        try:
            await eventually(lambda: det.counters.probes >= NODES)
            lag = registry.get_sample_value("nodeheal_detector_feed_lag_seconds")
            assert lag is not None
            assert lag >= 2.0  # behind its stream, and the metric says so

            # every node but one falls silent: one node keeps the input alive, the rest is a silence storm
            clock[0] += 300.0
            fresh = probe(node="n0", seq=2, used=30.0)
            await nc.publish(probe_subject(fresh.cluster, fresh.node, prefix=topology_ready.prefix), fresh.to_json())
            await eventually(lambda: det.counters.fired >= NODES - 1, timeout_s=60)
        finally:
            done.set()
            await asking
        assert det.counters.fired == NODES - 1
        assert failures == []  # each says why /healthz failed
        assert {status for status, _ in answers} == {200}
        # /healthz was answered while the storm was swept and published, not only before and after it
        fired = [count for _, count in answers]
        steps = [b - a for a, b in itertools.pairwise(fired)]
        assert sum(1 for count in fired if 0 < count < NODES - 1) >= 5
        assert max(steps) <= 2 * settings.tick_limit, max(steps)
    assert violations(deployed.dir) == []


async def test_a_stuck_probe_loop_fails_healthz(deployed: RoleServer) -> None:
    """Alive but making no progress is not alive: a probe loop stuck on one step (here its pull never returns)
    fails `/healthz` after `stall_s`, so the pod is restarted; it answered 200 while the loop stepped."""
    clock = [time.time()]
    settings = DetectorSettings(nats=deployed.role, tick_s=0.1, stall_s=1.0)
    async with detector_with_health(settings, await deployed.role_nc("detector"), clock) as (rt, app, _):
        await asyncio.sleep(1.5)  # idle but stepping (each empty pull is a step): alive
        assert (await asgi_get(app, "/healthz"))[0] == 200
        puller = rt._probe_puller
        assert puller is not None
        never = asyncio.Event()

        async def stuck(*, wait_s: float) -> list[object]:
            await never.wait()
            return []

        puller.next_chunk = stuck  # type: ignore[method-assign]

        async def unhealthy() -> bool:
            return (await asgi_get(app, "/healthz"))[0] == 503

        await eventually(unhealthy, timeout_s=10)
        assert "no progress" in (await asgi_get(app, "/healthz"))[1]
    assert violations(deployed.dir) == []
