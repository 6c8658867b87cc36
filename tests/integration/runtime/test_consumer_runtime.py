"""The shared consumer runtime on a real nats-server: bad input of any kind goes to the DLQ with a
reason and the loop goes on; a transient failure is redelivered; a dead loop fails /healthz."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js.api import ConsumerConfig, DeliverPolicy
from nats.js.client import JetStreamContext
from prometheus_client import REGISTRY

from nodeheal.runtime.consumer import ConsumerRuntime, Delivery, Inbound, Rejected, Transient
from nodeheal.runtime.jetstream import DEFAULT_DLQ_LIMITER, MAX_DEAD_RAW
from nodeheal.runtime.service import build_asgi, make_broker
from nodeheal.runtime.settings import NatsSettings
from nodeheal.schemas.anomaly import Anomaly
from nodeheal.schemas.dlq import DeadLetter
from nodeheal.schemas.subjects import dlq_subject, wildcard
from tests.support.asgi import asgi_get
from tests.support.fuzz import draw, hostile
from tests.unit.diagnoser.scenarios import anomaly

pytestmark = pytest.mark.nats


async def dead_letters(js: JetStreamContext, settings: NatsSettings, service: str) -> list[DeadLetter]:
    """Everything in the DLQ for `service` (read with an ephemeral consumer)."""
    stream = settings.topology().stream(f"{settings.stream_prefix}DLQ").name
    sub = await js.pull_subscribe(
        dlq_subject(service, prefix=settings.prefix),
        stream=stream,
        config=ConsumerConfig(deliver_policy=DeliverPolicy.ALL, inactive_threshold=10.0),
    )
    out: list[DeadLetter] = []
    try:
        while True:
            try:
                msgs = await sub.fetch(500, timeout=0.5)
            except TimeoutError:
                return out
            out += [DeadLetter.model_validate_json(m.data) for m in msgs]
    finally:
        await sub.unsubscribe()


async def eventually(check: Callable[[], Awaitable[bool]], *, within_s: float = 20.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within_s
    while not await check():
        assert loop.time() < deadline, "condition not met in time"
        await asyncio.sleep(0.1)


def rejects(raw: bytes) -> bool:
    try:
        Anomaly.model_validate_json(raw)
    except Exception:
        return True
    return False


def spec(settings: NatsSettings, **overrides: object) -> Inbound[Anomaly]:
    stream = settings.topology().stream(f"{settings.stream_prefix}ANOMALIES").name
    values: dict[str, object] = {
        "title": "anomalies",
        "stream": stream,
        "subject": wildcard("anomaly", prefix=settings.prefix),
        "durable": "fuzzed",
        "model": Anomaly,
        "batch_size": 50,
        "fetch_timeout_s": 0.2,
        "nak_delay_s": 0.2,
    }
    values.update(overrides)
    return Inbound(**values)  # type: ignore[arg-type]


@pytest.fixture
async def runtime(topology_ready: NatsSettings) -> AsyncIterator[ConsumerRuntime]:
    rt = ConsumerRuntime(service="fuzzed", nats=topology_ready)
    yield rt
    await rt.stop()


async def test_hostile_input_goes_to_the_dlq_and_the_loop_goes_on(
    topology_ready: NatsSettings, nc: Client, runtime: ConsumerRuntime
) -> None:
    settings = topology_ready
    js = nc.jetstream()
    valid = json.loads(anomaly("n1", "node_down").to_json())
    inputs = [
        raw for raw in draw(hostile(valid, time_fields=["detected_at", "fault_onset", "time"]), 60) if rejects(raw)
    ]
    assert len(inputs) >= 30
    handled: list[str] = []

    async def handle(item: Anomaly, delivery: Delivery) -> None:
        handled.append(item.id)

    runtime.consume(spec(settings), handle)
    await runtime.start()
    subject = f"{settings.prefix}.anomaly.c1.n1"
    for i, raw in enumerate(inputs):
        await js.publish(subject, raw, headers={"Nats-Msg-Id": f"bad-{i}"})
    good = anomaly("n2", "node_down")
    await js.publish(f"{settings.prefix}.anomaly.c1.n2", good.to_json(), headers={"Nats-Msg-Id": good.id})

    async def all_settled() -> bool:
        return good.id in handled and len(await dead_letters(js, settings, "fuzzed")) >= len(inputs)

    await eventually(all_settled)
    letters = await dead_letters(js, settings, "fuzzed")
    assert sorted(letter.raw for letter in letters) == sorted(raw[:MAX_DEAD_RAW] for raw in inputs)
    assert len(letters) == len(inputs)
    assert all(letter.reason and "rejected" in letter.reason for letter in letters)
    assert handled == [good.id]
    assert runtime.liveness() == (True, "ok")
    info = await js.consumer_info(spec(settings).stream, "fuzzed")
    assert info.num_ack_pending == 0 and info.num_pending == 0


async def test_the_dead_letter_count_is_what_the_dlq_kept_not_what_the_rate_limit_dropped(
    topology_ready: NatsSettings, nc: Client, runtime: ConsumerRuntime
) -> None:
    """A flood of bad input from one subject: the DLQ keeps a burst (the per-source rate limit drops the
    rest, counted in `nodeheal_dlq_rate_limited_total`), and `nodeheal_messages_dead_lettered_total`
    counts the letters kept, not the ones dropped."""
    settings = topology_ready
    js = nc.jetstream()
    flood = 3 * int(DEFAULT_DLQ_LIMITER.burst)
    dropped_before = REGISTRY.get_sample_value("nodeheal_dlq_rate_limited_total", {"service": "fuzzed"}) or 0.0
    handled: list[str] = []

    async def handle(item: Anomaly, delivery: Delivery) -> None:
        handled.append(item.id)

    def counted() -> float:
        return (
            runtime.metrics.registry.get_sample_value("nodeheal_messages_dead_lettered_total", {"service": "fuzzed"})
            or 0.0
        )

    def dropped() -> float:
        value = REGISTRY.get_sample_value("nodeheal_dlq_rate_limited_total", {"service": "fuzzed"}) or 0.0
        return value - dropped_before

    runtime.consume(spec(settings), handle)
    await runtime.start()
    subject = f"{settings.prefix}.anomaly.c1.n-flood"
    for i in range(flood):
        await js.publish(subject, b"\xff not json %d" % i)

    async def all_settled() -> bool:
        return counted() + dropped() >= flood

    await eventually(all_settled)
    kept = len(await dead_letters(js, settings, "fuzzed"))
    assert dropped() > 0, "the flood was not over the rate limit: the test shows nothing"
    assert counted() == kept < flood
    assert runtime.liveness() == (True, "ok")


async def test_transient_failure_is_redelivered_then_acked(
    topology_ready: NatsSettings, nc: Client, runtime: ConsumerRuntime
) -> None:
    js = nc.jetstream()
    calls: list[int] = []

    async def handle(item: Anomaly, delivery: Delivery) -> None:
        calls.append(delivery.num_delivered)
        if len(calls) < 3:
            raise Transient("downstream not there yet")

    runtime.consume(spec(topology_ready), handle)
    await runtime.start()
    item = anomaly("n3", "node_down")
    await js.publish(f"{topology_ready.prefix}.anomaly.c1.n3", item.to_json(), headers={"Nats-Msg-Id": item.id})

    async def acked() -> bool:
        info = await js.consumer_info(spec(topology_ready).stream, "fuzzed")
        return len(calls) >= 3 and info.num_ack_pending == 0

    await eventually(acked)
    assert calls == [1, 2, 3]
    assert await dead_letters(js, topology_ready, "fuzzed") == []


async def test_a_passing_failure_on_every_delivery_is_kept_in_the_dlq_not_dropped(
    topology_ready: NatsSettings, nc: Client, runtime: ConsumerRuntime
) -> None:
    """A KV without a leader for longer than all deliveries (the diagnoser counting a crash bucket): every try
    fails with a passing error. Before, the last delivery was nak'ed like the others, the server never delivered
    it again and nothing kept it: the crash report vanished. Now the last delivery keeps it in the DLQ with the
    reason, and it is acked."""
    js = nc.jetstream()
    calls: list[int] = []

    async def handle(item: Anomaly, delivery: Delivery) -> None:
        calls.append(delivery.num_delivered)
        raise Transient("crash-buckets KV: no leader")

    runtime.consume(spec(topology_ready, max_deliver=3), handle)
    await runtime.start()
    item = anomaly("n5", "node_down")
    subject = f"{topology_ready.prefix}.anomaly.c1.n5"
    await js.publish(subject, item.to_json(), headers={"Nats-Msg-Id": item.id})

    async def kept() -> bool:
        return len(await dead_letters(js, topology_ready, "fuzzed")) >= 1

    await eventually(kept)
    [letter] = await dead_letters(js, topology_ready, "fuzzed")
    assert calls == [1, 2, 3]
    assert letter.subject == subject and letter.raw == item.to_json()
    assert "delivery 3 of 3" in letter.reason and "no leader" in letter.reason and "publish its raw" in letter.reason
    info = await js.consumer_info(spec(topology_ready).stream, "fuzzed")
    assert info.num_ack_pending == 0 and info.num_pending == 0


async def test_a_rejected_message_is_dead_lettered_at_once_with_its_reason(
    topology_ready: NatsSettings, nc: Client, runtime: ConsumerRuntime
) -> None:
    """What a message caused was refused for good: kept in the DLQ with the handler's reason on its first
    delivery and acked — not nak'ed, so a redelivery that finds nothing left to do cannot ack it without a trace."""
    js = nc.jetstream()
    calls: list[int] = []

    async def handle(item: Anomaly, delivery: Delivery) -> None:
        calls.append(delivery.num_delivered)
        raise Rejected("its diagnosis was refused by the server: message size exceeds maximum allowed")

    runtime.consume(spec(topology_ready, max_deliver=5), handle)
    await runtime.start()
    item = anomaly("n4", "node_down")
    subject = f"{topology_ready.prefix}.anomaly.c1.n4"
    await js.publish(subject, item.to_json(), headers={"Nats-Msg-Id": item.id})

    async def kept() -> bool:
        return len(await dead_letters(js, topology_ready, "fuzzed")) >= 1

    await eventually(kept)
    await asyncio.sleep(0.6)  # a redelivery (0.2 s nak delay) would be in by now
    [letter] = await dead_letters(js, topology_ready, "fuzzed")
    assert calls == [1]
    assert letter.subject == subject and letter.raw == item.to_json()
    assert "refused on delivery 1" in letter.reason and "message size exceeds maximum allowed" in letter.reason
    info = await js.consumer_info(spec(topology_ready).stream, "fuzzed")
    assert info.num_ack_pending == 0 and info.num_pending == 0


async def test_a_dead_loop_fails_healthz(topology_ready: NatsSettings, runtime: ConsumerRuntime) -> None:
    async def handle(item: Anomaly, delivery: Delivery) -> None:
        return None

    async def broken() -> None:
        await asyncio.sleep(0.2)
        raise RuntimeError("a bug in a background loop")

    runtime.consume(spec(topology_ready), handle)
    runtime.loop("broken", broken)
    await runtime.start()
    shell = make_broker(topology_ready, name="pytest-shell")
    app = build_asgi(shell, liveness=[runtime.liveness])
    assert (await asgi_get(app, "/healthz"))[0] == 200

    async def unhealthy() -> bool:
        return (await asgi_get(app, "/healthz"))[0] == 503

    await eventually(unhealthy, within_s=5.0)
    assert "broken" in (await asgi_get(app, "/healthz"))[1]


async def test_ops_server_healthz_fails_when_a_watched_loop_ends() -> None:
    import aiohttp

    from nodeheal.runtime.ops import OpsServer

    ops = OpsServer(host="127.0.0.1", port=0)
    done = asyncio.Event()

    async def probes() -> None:
        await done.wait()

    task = asyncio.create_task(probes())
    ops.watch("probes", task)
    await ops.start()
    try:
        async with aiohttp.ClientSession() as http:
            url = f"http://127.0.0.1:{ops.bound_port}/healthz"
            async with http.get(url) as response:
                assert response.status == 200
            done.set()
            await task
            async with http.get(url) as response:
                assert response.status == 503
                assert "probes" in await response.text()
    finally:
        await ops.stop()


async def test_upgrading_a_durable_to_explicit_acks_keeps_its_place(topology_ready: NatsSettings, nc: Client) -> None:
    """A durable created with AckPolicy.ALL (older detectors) is recreated with EXPLICIT where its ack
    floor ended: nothing acknowledged comes back, nothing unacknowledged is skipped."""
    from nats.js.api import AckPolicy

    from nodeheal.runtime.jetstream import ensure_pull_consumer

    js = nc.jetstream()
    stream = topology_ready.topology().stream(f"{topology_ready.stream_prefix}PROBES").name
    subject = f"{topology_ready.prefix}.probe.c1.n1"
    filters = [f"{topology_ready.prefix}.probe.*.*"]
    await ensure_pull_consumer(js, stream=stream, durable="old", filter_subjects=filters, ack_policy=AckPolicy.ALL)
    for i in range(5):
        await js.publish(subject, f"m{i}".encode())
    sub = await js.pull_subscribe_bind("old", stream)
    first = await sub.fetch(2, timeout=2)
    await first[-1].ack_sync()  # cumulative: m0 and m1
    await sub.unsubscribe()
    await ensure_pull_consumer(js, stream=stream, durable="old", filter_subjects=filters, ack_policy=AckPolicy.EXPLICIT)
    info = await js.consumer_info(stream, "old")
    assert info.config.ack_policy == AckPolicy.EXPLICIT
    sub = await js.pull_subscribe_bind("old", stream)
    rest = await sub.fetch(10, timeout=2)
    assert [m.data for m in rest] == [b"m2", b"m3", b"m4"]
    await sub.unsubscribe()


async def test_a_message_cancelled_at_shutdown_is_neither_acked_nor_dead_lettered(
    topology_ready: NatsSettings, nc: Client
) -> None:
    js = nc.jetstream()
    runtime = ConsumerRuntime(service="fuzzed", nats=topology_ready, graceful_timeout_s=0.5)
    entered = asyncio.Event()

    async def handle(item: Anomaly, delivery: Delivery) -> None:
        entered.set()
        await asyncio.sleep(3600)

    runtime.consume(spec(topology_ready, ack_wait_s=60.0), handle)
    await runtime.start()
    item = anomaly("n4", "node_down")
    await js.publish(f"{topology_ready.prefix}.anomaly.c1.n4", item.to_json(), headers={"Nats-Msg-Id": item.id})
    await asyncio.wait_for(entered.wait(), timeout=20)
    await runtime.stop()
    info = await js.consumer_info(spec(topology_ready).stream, "fuzzed")
    assert info.num_ack_pending == 1
    assert await dead_letters(js, topology_ready, "fuzzed") == []


async def test_an_idle_consumer_logs_no_error(
    topology_ready: NatsSettings, nc: Client, runtime: ConsumerRuntime, caplog: pytest.LogCaptureFixture
) -> None:
    """An empty stream's fetches time out: faststream's pull loop ends and starts again, which it used
    to log as an error with a `TimeoutError` traceback at every service start (an operator reads it as
    a failure). Nothing failed, so nothing at INFO or above is logged; the loop still consumes."""
    handled: list[str] = []

    async def handle(item: Anomaly, delivery: Delivery) -> None:
        handled.append(item.id)

    caplog.set_level(logging.INFO)
    runtime.consume(spec(topology_ready, fetch_timeout_s=0.1), handle)
    await runtime.start()
    await asyncio.sleep(1.5)  # several idle fetches
    noisy = [r for r in caplog.records if r.name == "nodeheal.fuzzed.consumers" and r.levelno >= logging.INFO]
    assert noisy == [], [r.getMessage()[:120] for r in noisy]
    assert runtime.liveness() == (True, "ok")
    item = anomaly("n4", "node_down")
    subject = f"{topology_ready.prefix}.anomaly.c1.n4"
    await nc.jetstream().publish(subject, item.to_json(), headers={"Nats-Msg-Id": item.id})

    async def consumed() -> bool:
        return handled == [item.id]

    await eventually(consumed, within_s=10.0)


async def test_a_service_whose_start_fails_fails_healthz(topology_ready: NatsSettings) -> None:
    """The chaos demo's silent remediator: its start timed out while the nats-server was being killed,
    faststream's startup hook failed, and the process went on serving HTTP with no consumers while
    `/healthz` said 200 — nothing restarts such a pod. A failed start fails `/healthz`."""

    async def start() -> None:
        raise TimeoutError("nats: timeout")

    shell = make_broker(topology_ready, name="pytest-failing-start")
    app = build_asgi(shell, after_startup=[start])
    sent: list[dict[str, object]] = []
    incoming: asyncio.Queue[dict[str, object]] = asyncio.Queue()
    await incoming.put({"type": "lifespan.startup"})

    async def send(message: dict[str, object]) -> None:
        sent.append(message)

    lifespan = asyncio.create_task(app({"type": "lifespan", "asgi": {"version": "3.0"}}, incoming.get, send))
    try:
        await eventually(lambda: _async(bool(sent)), within_s=20.0)
        status, body = await asgi_get(app, "/healthz")
        assert status == 503 and "start failed" in body
    finally:
        lifespan.cancel()
        with contextlib.suppress(BaseException):
            await lifespan
        with contextlib.suppress(Exception):
            await shell.stop()


async def _async(value: bool) -> bool:
    return value


@pytest.mark.alone  # it makes the event loop busy on purpose: another worker's load changes its timing
async def test_a_pull_loop_faststream_starts_again_is_not_reported_stopped(
    topology_ready: NatsSettings, nc: Client, runtime: ConsumerRuntime
) -> None:
    """A busy event loop (the detector sweeping a silence storm on a loaded machine) can resume a fetch after its
    timeout although the server's answer came in time: nats-py then raises the builtin `TimeoutError`, which
    faststream's pull loop does not suppress, so the loop's task ends and faststream's task supervisor starts it
    again at the next step of the event loop. In between, the only task of the subscriber is done, and `/healthz`
    asked then answered 503 "consumer ... stopped" (the flaky `test_a_detector_far_behind_in_a_silence_storm_stays_
    alive`, whose kubelet asks at every step). The consumer never stopped: it is reported alive throughout and
    still consumes. Here the loop is made that busy for real: blocked while the answer to a fetch's first pull
    request arrives, then a few 30 ms slices of work per step."""
    handled: list[str] = []

    async def handle(item: Anomaly, delivery: Delivery) -> None:
        handled.append(item.id)

    inbound = spec(topology_ready, fetch_timeout_s=1.0, batch_size=100)
    runtime.consume(inbound, handle)
    await runtime.start()
    loop = asyncio.get_running_loop()
    subscriber = runtime._subscribers[0][1]

    def busy(slices: int) -> None:  # one slice of work per step of the event loop
        time.sleep(0.03)
        if slices > 1:
            loop.call_soon(busy, slices - 1)

    stalls: list[int] = []

    def ended() -> bool:  # the pull loop ended and was started again (the runtime lets the ended task go)
        return len(subscriber.tasks) >= 2 or runtime.loop_restarts.get(inbound.title, 0) >= 1

    async def on_pull_request(msg: Msg) -> None:
        if json.loads(msg.data).get("no_wait") and len(stalls) < 10 and not ended():
            stalls.append(1)
            time.sleep(0.95)  # the answer (no messages) arrives meanwhile, before the fetch's 1 s timeout
            loop.call_soon(busy, 10)

    watch = await nc.subscribe(f"$JS.API.CONSUMER.MSG.NEXT.{inbound.stream}.{inbound.durable}", cb=on_pull_request)
    answers: list[tuple[bool, str]] = []
    done = asyncio.Event()

    async def kubelet() -> None:
        while not done.is_set():
            answers.append(runtime.liveness())
            await asyncio.sleep(0)

    asking = asyncio.create_task(kubelet())
    try:

        async def started_again() -> bool:
            return ended() or len(stalls) >= 10

        await eventually(started_again, within_s=60.0)
    finally:
        done.set()
        await asking
        await watch.unsubscribe()
    assert ended(), "the pull loop never ended: nothing was tested"
    assert {ok for ok, _ in answers} == {True}, sorted({why for ok, why in answers if not ok})
    item = anomaly("n5", "node_down")
    await nc.jetstream().publish(
        f"{topology_ready.prefix}.anomaly.c1.n5", item.to_json(), headers={"Nats-Msg-Id": item.id}
    )

    async def consumed() -> bool:
        return handled == [item.id]

    await eventually(consumed, within_s=10.0)


async def _pin_to_a_priority_group(nc: Client, inbound: Inbound[Anomaly], *, group: str | None) -> None:
    """Update the durable through the JetStream API (as `nats consumer edit` does) with a priority group, or
    without one again. A pull request without a group to a consumer with groups is answered "400 Bad Request -
    Priority Group missing"; nats-py raises it as an `APIError`, which faststream's pull loop does not suppress:
    its task ends at every fetch and faststream's supervisor starts it again, for ever."""
    info = await nc.jetstream().consumer_info(inbound.stream, inbound.durable)
    config = info.config.as_dict()
    if group is None:
        config.pop("priority_policy", None)
        config.pop("priority_groups", None)
    else:
        config.update(priority_policy="overflow", priority_groups=[group])
    reply = await nc.request(
        f"$JS.API.CONSUMER.CREATE.{inbound.stream}.{inbound.durable}",
        json.dumps({"stream_name": inbound.stream, "config": config, "action": "update"}).encode(),
        timeout=5.0,
    )
    answer = json.loads(reply.data)
    assert "error" not in answer, answer


async def test_a_pull_loop_that_keeps_failing_fails_healthz_and_its_ended_tasks_are_let_go(
    topology_ready: NatsSettings, nc: Client, runtime: ConsumerRuntime
) -> None:
    """faststream restarts a pull loop that raised, for ever, and keeps every ended task (with its traceback) in
    `subscriber.tasks`. Before, a durable whose every pull is refused (given a priority group here: "400 Bad
    Request - Priority Group missing") left `/healthz` at 200 while the consumer consumed nothing, and the task
    list grew by one per fetch for the life of the pod. Now the ended tasks are let go at every check, counted
    (`nodeheal_consumer_loop_restarts`), and ten errors in ten minutes with no message handled fail `/healthz`
    with the last error; once the durable is put right and messages are handled, it is healthy again."""
    handled: list[str] = []

    async def handle(item: Anomaly, delivery: Delivery) -> None:
        handled.append(item.id)

    inbound = spec(topology_ready)
    runtime.consume(inbound, handle)
    await runtime.start()
    subscriber = runtime._subscribers[0][1]
    assert runtime.liveness() == (True, "ok")
    await _pin_to_a_priority_group(nc, inbound, group="elsewhere")
    sizes: list[int] = []
    try:

        async def failing() -> bool:
            ok, _ = runtime.liveness()
            sizes.append(len(subscriber.tasks))
            return not ok

        await eventually(failing, within_s=30.0)
        ok, why = runtime.liveness()
        assert not ok
        assert "its pull loop failed 10 times" in why and "Priority Group missing" in why, why
        assert max(sizes) <= 3, sizes  # what faststream kept is let go at every check
        restarts = runtime.metrics.registry.get_sample_value(
            "nodeheal_consumer_loop_restarts_total",
            {"service": "fuzzed", "consumer": inbound.title, "error": "APIError"},
        )
        assert restarts is not None and restarts >= 10
    finally:
        await _pin_to_a_priority_group(nc, inbound, group=None)
    item = anomaly("n7", "node_down")
    await nc.jetstream().publish(
        f"{topology_ready.prefix}.anomaly.c1.n7", item.to_json(), headers={"Nats-Msg-Id": item.id}
    )

    async def recovered() -> bool:
        return handled == [item.id] and runtime.liveness()[0]

    await eventually(recovered, within_s=20.0)


async def test_a_durable_deleted_under_the_running_service_is_made_again_where_it_was(
    topology_ready: NatsSettings, nc: Client
) -> None:
    """`nats consumer rm` (or a stream deleted and made again) under a running service: before, its
    subscriber's fetches only timed out — nothing was consumed again and `/healthz` said 200. Now the lag round
    finds the durable gone and creates it again after the acknowledged floor it last read: what came after is
    handled, what was handled before is not handled again, and it is counted. With the stream gone too it
    cannot be made again, and liveness says so until it can."""
    runtime = ConsumerRuntime(service="fuzzed", nats=topology_ready, lag_every_s=0.2)
    handled: list[str] = []

    async def handle(item: Anomaly, delivery: Delivery) -> None:
        handled.append(item.id)

    inbound = spec(topology_ready)
    runtime.consume(inbound, handle)
    js = nc.jetstream()

    async def publish(node: str) -> Anomaly:
        item = anomaly(node, "node_down")
        await js.publish(f"{topology_ready.prefix}.anomaly.c1.{node}", item.to_json(), headers={"Nats-Msg-Id": item.id})
        return item

    await runtime.start()
    try:
        first = await publish("n1")

        async def acked() -> bool:
            info = await js.consumer_info(inbound.stream, inbound.durable)
            return handled == [first.id] and info.num_ack_pending == 0 and info.ack_floor.stream_seq >= 1

        await eventually(acked)
        await asyncio.sleep(1.0)  # a few lag rounds read the floor
        await js.delete_consumer(inbound.stream, inbound.durable)
        second = await publish("n2")

        async def resumed() -> bool:
            return second.id in handled

        await eventually(resumed, within_s=20.0)
        assert handled == [first.id, second.id]
        recreated = runtime.metrics.registry.get_sample_value(
            "nodeheal_consumer_recreated_total", {"service": "fuzzed", "consumer": inbound.title}
        )
        assert recreated == 1.0
        assert runtime.liveness() == (True, "ok")

        await js.delete_stream(inbound.stream)

        async def failing() -> bool:
            return not runtime.liveness()[0]

        await eventually(failing, within_s=20.0)
        _, why = runtime.liveness()
        assert f"its durable {inbound.durable} on {inbound.stream} is gone" in why, why
    finally:
        await runtime.stop()
