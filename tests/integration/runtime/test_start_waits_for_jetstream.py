"""A service start waits out a JetStream that is briefly unavailable (#14, the chaos demo's cluster run:
the diagnoser's restart met a nats-server kill, its start failed on JetStream's 503 and nothing consumed
for 56 s). On a real nats-server that first runs *without* JetStream on the store's port, then again
with it on the same store: meanwhile `/readyz` says "waiting for JetStream" and `/healthz` stays 200;
once JetStream is back the service starts, with its subscribers and metrics declared once, and works.
A JetStream that stays away past the patience fails `/healthz` (Kubernetes restarts the pod)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import prometheus_client
import pytest
from aiohttp.test_utils import TestClient, TestServer

from nodeheal.cloud_events.ingest.app import build_app as build_ingest_app
from nodeheal.cloud_events.ingest.settings import IngestSettings
from nodeheal.diagnoser.app import build_app
from nodeheal.diagnoser.settings import DiagnoserSettings
from nodeheal.runtime.connect import connect
from nodeheal.runtime.inventory import InventoryFeed
from nodeheal.runtime.jetstream import publish_model
from nodeheal.runtime.provision import apply_topology
from nodeheal.runtime.settings import NatsSettings
from nodeheal.runtime.startup import StartWait, start_wait
from nodeheal.schemas import Diagnosis, NodeInventory
from nodeheal.schemas.inventory import inventory_key
from nodeheal.schemas.subjects import anomaly_subject, diagnosis_subject
from nodeheal.sim.embedded import EmbeddedNats, find_nats_server, free_port
from tests.integration.deploy.role_services import SERVICES
from tests.support.asgi import asgi_get
from tests.support.broker import unique_settings
from tests.unit.diagnoser.scenarios import CLUSTER, anomaly

pytestmark = pytest.mark.nats


@contextlib.contextmanager
def without_jetstream(port: int) -> Iterator[subprocess.Popen[bytes]]:
    """A nats-server on `port` with JetStream off: connections work, every JetStream API call finds no
    responders (what a client sees while a server comes back or a cluster has no meta leader)."""
    proc = subprocess.Popen(
        [find_nats_server(), "-a", "127.0.0.1", "-p", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT
    )
    try:
        deadline = time.monotonic() + 15
        while True:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.5):
                break
            assert proc.poll() is None and time.monotonic() < deadline, "nats-server without JetStream did not start"
            time.sleep(0.05)
        yield proc
    finally:
        proc.terminate()
        proc.wait(timeout=10)


@contextlib.asynccontextmanager
async def provisioned_then_stopped(store: Path) -> AsyncIterator[tuple[int, NatsSettings]]:
    """The whole topology provisioned on a JetStream server whose store is `store`; the server is then
    stopped (the store kept) so the test can bring the port back with or without JetStream."""
    server = EmbeddedNats(store_dir=str(store)).start()
    try:
        settings = unique_settings(server.url)
        nc = await connect(settings, name="pytest-provision")
        await apply_topology(nc.jetstream(), settings.topology())
        await nc.close()
    finally:
        server.stop()
    yield server.port, settings


@contextlib.asynccontextmanager
async def lifespan(app: Any) -> AsyncIterator[None]:
    """The ASGI lifespan as uvicorn drives it: startup now, shutdown at the end of the block."""
    incoming: asyncio.Queue[dict[str, object]] = asyncio.Queue()
    await incoming.put({"type": "lifespan.startup"})

    async def send(message: dict[str, object]) -> None:
        return None

    task = asyncio.create_task(app({"type": "lifespan", "asgi": {"version": "3.0"}}, incoming.get, send))
    try:
        yield
    finally:
        await incoming.put({"type": "lifespan.shutdown"})
        with contextlib.suppress(BaseException):
            await asyncio.wait_for(task, timeout=20)


async def until(check: Callable[[], Awaitable[bool]], *, within_s: float, what: str) -> None:
    deadline = asyncio.get_running_loop().time() + within_s
    while not await check():
        assert asyncio.get_running_loop().time() < deadline, what
        await asyncio.sleep(0.2)


def _families(registry: prometheus_client.CollectorRegistry) -> list[str]:
    return [
        line for line in prometheus_client.generate_latest(registry).decode().splitlines() if line.startswith("# TYPE")
    ]


async def test_the_diagnoser_waits_for_jetstream_then_starts_once_and_diagnoses(tmp_path: Path) -> None:
    async with provisioned_then_stopped(tmp_path / "store") as (port, nats):
        settings = DiagnoserSettings(nats=nats.model_copy(update={"start_patience_s": 120.0}), cluster=CLUSTER)
        app, holder = build_app(settings)
        with without_jetstream(port) as plain:
            async with lifespan(app):

                async def says_waiting() -> bool:
                    status, body = await asgi_get(app, "/readyz")
                    return status == 503 and "waiting for JetStream" in body

                await until(says_waiting, within_s=30, what="/readyz never said it waits for JetStream")
                await asyncio.sleep(3.0)  # a few retries later it still waits, alive
                assert await says_waiting()
                assert (await asgi_get(app, "/healthz"))[0] == 200
                jetstream_back: EmbeddedNats | None = None
                try:
                    # the same port and store, JetStream on: what a restarted server or a new meta leader gives
                    plain.terminate()
                    await asyncio.to_thread(plain.wait, 10)
                    jetstream_back = EmbeddedNats(port=port, store_dir=str(tmp_path / "store")).start()

                    async def ready() -> bool:
                        return (await asgi_get(app, "/readyz"))[0] == 200

                    await until(ready, within_s=60, what="the diagnoser never started once JetStream was back")
                    assert (await asgi_get(app, "/healthz"))[0] == 200
                    runtime = holder[0]
                    assert len(holder) == 1
                    # declared once: four consumers, each one faststream subscriber on the process's broker
                    assert len(runtime.consumers._subscribers) == 4
                    assert len(list(runtime.consumers.broker.subscribers)) == 4
                    families = _families(runtime.pipeline.registry)
                    assert len(families) == len(set(families))
                    # and it works: an anomaly in, a diagnosis out
                    nc = await connect(nats, name="pytest")
                    try:
                        js = nc.jetstream()
                        sub = await js.subscribe(
                            diagnosis_subject(CLUSTER, "solo", prefix=nats.prefix),
                            stream=f"{nats.stream_prefix}DIAGNOSES",
                            ordered_consumer=True,
                        )
                        item = anomaly("solo", "service_down", subject="containerd")
                        await publish_model(
                            js, anomaly_subject(CLUSTER, "solo", prefix=nats.prefix), item, msg_id=item.id
                        )
                        diagnosis = Diagnosis.model_validate_json((await sub.next_msg(timeout=30)).data)
                        assert diagnosis.cause == "container_runtime_down"
                    finally:
                        await nc.close()
                finally:
                    if jetstream_back is not None:
                        jetstream_back.stop()


async def test_a_jetstream_away_past_the_patience_fails_healthz(tmp_path: Path) -> None:
    async with provisioned_then_stopped(tmp_path / "store") as (port, nats):
        settings = DiagnoserSettings(nats=nats.model_copy(update={"start_patience_s": 3.0}), cluster=CLUSTER)
        app, _ = build_app(settings)
        with without_jetstream(port):
            async with lifespan(app):

                async def unhealthy() -> bool:
                    status, body = await asgi_get(app, "/healthz")
                    return status == 503 and "start failed" in body

                await until(unhealthy, within_s=30, what="/healthz stayed 200 after the patience was spent")


def _get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return int(response.status), response.read().decode(errors="replace")
    except urllib.error.HTTPError as exc:
        return int(exc.code), exc.read().decode(errors="replace")
    except OSError as exc:
        return 0, str(exc)


WAITING = ("detector", "remediator", "prober", "ingest")
"""Serve HTTP while their start waits (the kit's shell, the ops server, the ingest's aiohttp app whose start
runs behind its HTTP server)."""


async def test_every_service_process_waits_for_jetstream_then_becomes_ready(tmp_path: Path) -> None:
    async with provisioned_then_stopped(tmp_path / "store") as (port, nats):
        names = WAITING
        procs: dict[str, tuple[subprocess.Popen[bytes], int]] = {}
        jetstream_back: EmbeddedNats | None = None
        try:
            with without_jetstream(port) as plain:
                for name in names:
                    args, prefix, extra = SERVICES[name]
                    http = free_port()
                    env = {k: v for k, v in os.environ.items() if not k.startswith(("NODEHEAL_", "NATS_"))}
                    env.update(
                        {
                            f"{prefix}NATS__URL": nats.url,
                            f"{prefix}NATS__PREFIX": nats.prefix,
                            f"{prefix}NATS__STREAM_PREFIX": nats.stream_prefix,
                            f"{prefix}NATS__BUCKET_PREFIX": nats.bucket_prefix,
                            f"{prefix}HTTP_PORT": str(http),
                            f"{prefix}HTTP_HOST": "127.0.0.1",
                            f"{prefix}CLUSTER": "c1",
                            f"{prefix}LOG_FORMAT": "json",
                            **{prefix + k: v for k, v in extra.items()},
                        }
                    )
                    log = (tmp_path / f"{name}.log").open("wb")
                    procs[name] = (
                        subprocess.Popen([sys.executable, *args], env=env, stdout=log, stderr=subprocess.STDOUT),
                        http,
                    )

                def logs(*which: str) -> dict[str, str]:
                    return {n: (tmp_path / f"{n}.log").read_text()[-1500:] for n in which}

                waiting = set(WAITING)
                deadline = time.monotonic() + 60
                while waiting and time.monotonic() < deadline:
                    for name in sorted(waiting):
                        proc, http = procs[name]
                        assert proc.poll() is None, logs(name)
                        status, body = _get(f"http://127.0.0.1:{http}/readyz")
                        if status == 503 and "waiting for JetStream" in body:
                            assert _get(f"http://127.0.0.1:{http}/healthz")[0] == 200, logs(name)
                            waiting.discard(name)
                    await asyncio.sleep(0.2)
                assert not waiting, logs(*waiting)
                plain.terminate()
                await asyncio.to_thread(plain.wait, 10)
                jetstream_back = EmbeddedNats(port=port, store_dir=str(tmp_path / "store")).start()
                starting = set(names)
                deadline = time.monotonic() + 90
                while starting and time.monotonic() < deadline:
                    for name in sorted(starting):
                        proc, http = procs[name]
                        assert proc.poll() is None, logs(name)
                        if _get(f"http://127.0.0.1:{http}/readyz")[0] == 200:
                            assert _get(f"http://127.0.0.1:{http}/healthz")[0] == 200, logs(name)
                            starting.discard(name)
                    await asyncio.sleep(0.2)
                assert not starting, logs(*starting)
        finally:
            for proc, _ in procs.values():
                proc.terminate()
            for proc, _ in procs.values():
                try:
                    proc.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    proc.kill()
            if jetstream_back is not None:
                jetstream_back.stop()


async def test_the_ingest_answers_while_it_waits_then_fails_healthz_past_the_patience(tmp_path: Path) -> None:
    """Its start runs behind the HTTP server: alive (a liveness probe must not kill a pod that waits, nor
    keep one whose start gave up), not ready, and saying why."""
    async with provisioned_then_stopped(tmp_path / "store") as (port, nats):
        settings = IngestSettings(
            nats=nats.model_copy(update={"start_patience_s": 6.0}), cluster=CLUSTER, allow_unauthenticated=True
        )
        app = build_ingest_app(settings, serve_while_starting=True)
        with without_jetstream(port):
            async with TestClient(TestServer(app)) as client:

                async def get(path: str) -> tuple[int, str]:
                    response = await client.get(path)
                    return response.status, await response.text()

                async def says_waiting() -> bool:
                    status, body = await get("/readyz")
                    return status == 503 and "waiting for JetStream" in body

                await until(says_waiting, within_s=30, what="/readyz never said it waits for JetStream")
                assert (await get("/healthz"))[0] == 200
                posted = await client.post("/v1/events/alibaba", data=b"{}")
                assert posted.status == 503  # not taken while nothing can be published

                async def unhealthy() -> bool:
                    status, body = await get("/healthz")
                    return status == 503 and "start failed" in body

                await until(unhealthy, within_s=30, what="/healthz stayed 200 after the patience was spent")


async def test_the_inventory_watch_launched_by_a_start_waits_for_jetstream(tmp_path: Path) -> None:
    """The inventory watch is a loop the start launches (the detector's: no load before it); its first call runs
    when the start is over. A JetStream away at that moment is waited out (readiness says so) and the watch then
    follows changes; before, the loop died at once (`/healthz` failed, the pod was restarted)."""
    async with provisioned_then_stopped(tmp_path / "store") as (port, nats):
        server = EmbeddedNats(port=port, store_dir=str(tmp_path / "store")).start()
        nc = await connect(nats, name="pytest-inventory-watch")
        watch: asyncio.Task[None] | None = None
        try:
            js = nc.jetstream()
            got: list[NodeInventory] = []
            feed = InventoryFeed(f"{nats.bucket_prefix}-inventory", on_put=got.append)
            wait = StartWait(service="pytest", patience_s=120.0)
            with start_wait(wait):
                assert await feed.open(js)
                server.stop()  # JetStream goes away between the start and the watch's first call
                watch = asyncio.create_task(feed.watch())  # launched by the start, runs after it
            with without_jetstream(port) as plain:

                async def waiting() -> bool:
                    return bool(wait.waiting) and "inventory watch" in wait.waiting

                await until(waiting, within_s=30, what="the watch never said it waits for JetStream")
                await asyncio.sleep(2.0)
                assert not watch.done()  # alive, waiting
                plain.terminate()
                await asyncio.to_thread(plain.wait, 10)
                server = EmbeddedNats(port=port, store_dir=str(tmp_path / "store")).start()

            async def watching() -> bool:
                return wait.waiting is None

            await until(watching, within_s=60, what="the watch never started once JetStream was back")
            kv = await js.key_value(f"{nats.bucket_prefix}-inventory")
            record = NodeInventory(cluster="c1", node="late", instance_id="i-late", zone="z1", rack="r1")
            await kv.put(inventory_key("c1", "late"), record.to_json())

            async def seen() -> bool:
                return record in got

            await until(seen, within_s=30, what="the watch did not deliver a change")
        finally:
            if watch is not None:
                watch.cancel()
            await nc.close()
            server.stop()


async def test_an_inventory_watch_whose_jetstream_stays_away_ends_after_the_patience(tmp_path: Path) -> None:
    """...and one whose JetStream stays away past the start's patience ends with the error: the loop dies,
    which fails `/healthz` (`ConsumerRuntime.loop`), so the pod is restarted."""
    async with provisioned_then_stopped(tmp_path / "store") as (port, nats):
        server = EmbeddedNats(port=port, store_dir=str(tmp_path / "store")).start()
        nc = await connect(nats, name="pytest-inventory-watch")
        try:
            feed = InventoryFeed(f"{nats.bucket_prefix}-inventory", on_put=lambda _: None)
            wait = StartWait(service="pytest", patience_s=4.0)
            with start_wait(wait):
                assert await feed.open(nc.jetstream())
                server.stop()
                watch = asyncio.create_task(feed.watch())
            with without_jetstream(port):
                done, _ = await asyncio.wait({watch}, timeout=30)
                assert done, "the watch kept waiting past the patience"
                assert watch.exception() is not None
                assert wait.waiting is None
        finally:
            await nc.close()
            server.stop()
