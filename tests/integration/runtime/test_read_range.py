"""`nodeheal.runtime.jetstream.read_range`, the one start-up stream read of the detector's replay, the
diagnoser's rebuild and the ingest's ledger seed: what the stream holds is handled once each, in order;
a nats-server that dies and comes back in the middle of the read (the chaos demo's cluster run) is waited
out and the read goes on after the last message handled; a last-per-subject read gives each subject's last
message; no reader consumer is left on the server."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from nats.aio.msg import Msg
from nats.js.api import DeliverPolicy
from nats.js.client import JetStreamContext

from nodeheal.runtime.connect import connect
from nodeheal.runtime.jetstream import read_range
from nodeheal.runtime.provision import apply_topology
from nodeheal.runtime.settings import NatsSettings
from nodeheal.runtime.startup import StartWait, start_wait
from nodeheal.schemas.subjects import anomaly_subject, wildcard
from nodeheal.sim.embedded import EmbeddedNats
from tests.support.broker import publish_all, unique_settings

pytestmark = pytest.mark.nats

MESSAGES = 6000  # two batches of 2,000 are asked ahead: more than that must come after the restart


async def _publish(js: JetStreamContext, nats: NatsSettings, count: int, nodes: int) -> None:
    subjects = [anomaly_subject("c1", f"n{i % nodes}", prefix=nats.prefix) for i in range(count)]
    # acknowledged: all stored before the read starts
    await publish_all(js, [(subject, f"message {i}".encode()) for i, subject in enumerate(subjects)])


async def test_a_read_cut_by_a_server_restart_resumes_after_its_last_message(tmp_path: Path) -> None:
    server = EmbeddedNats(store_dir=str(tmp_path / "store")).start()
    try:
        nats = unique_settings(server.url)
        nc = await connect(nats, name="pytest-read-range")
        try:
            js = nc.jetstream()
            await apply_topology(js, nats.topology())
            await _publish(js, nats, MESSAGES, 7)
            stream = f"{nats.stream_prefix}ANOMALIES"
            handled: list[int] = []

            def on_msg(msg: Msg) -> None:
                handled.append(msg.metadata.sequence.stream)
                if len(handled) == 500:  # mid-read: the server goes away and comes back on its store
                    server.stop()  # SIGTERM: a SIGKILL may lose the newest stored messages (sync_interval)
                    server.start()

            with start_wait(StartWait(service="pytest", patience_s=90.0)):
                seen = await read_range(
                    js,
                    stream=stream,
                    filters=[wildcard("anomaly", prefix=nats.prefix)],
                    name="pytest-read",
                    on_msg=on_msg,
                    since=datetime.now(tz=UTC) - timedelta(hours=1),
                )
            consumers = await js.consumers_info(stream)
        finally:
            await nc.close()
    finally:
        server.stop()
    assert handled == list(range(1, MESSAGES + 1))  # each once, in order, none skipped
    assert seen == MESSAGES
    assert [c.name for c in consumers] == []  # the readers were deleted


async def test_last_per_subject_and_an_empty_range(js: JetStreamContext, topology_ready: NatsSettings) -> None:
    nats = topology_ready
    await _publish(js, nats, 50, 5)
    stream = f"{nats.stream_prefix}ANOMALIES"
    last: dict[str, bytes] = {}

    def keep(msg: Msg) -> None:
        assert msg.subject not in last  # one message per subject
        last[msg.subject] = msg.data

    seen = await read_range(
        js,
        stream=stream,
        filters=[wildcard("anomaly", prefix=nats.prefix)],
        name="pytest-read",
        on_msg=keep,
        deliver=DeliverPolicy.LAST_PER_SUBJECT,
    )
    assert seen == 5
    assert last == {anomaly_subject("c1", f"n{i}", prefix=nats.prefix): f"message {45 + i}".encode() for i in range(5)}
    nothing = await read_range(
        js,
        stream=stream,
        filters=[wildcard("anomaly", prefix=nats.prefix)],
        name="pytest-read",
        on_msg=keep,
        since=datetime.now(tz=UTC) + timedelta(minutes=1),
    )
    assert nothing == 0
    assert [c.name for c in await js.consumers_info(stream)] == []


async def test_a_reader_consumer_deleted_mid_read_is_recreated_after_the_last_message(
    js: JetStreamContext, topology_ready: NatsSettings
) -> None:
    """What a server that forgot the memory-stored reader answers (a status for each pull request, no
    data) ends that attempt; the read goes on after the last message handled."""
    nats = topology_ready
    await _publish(js, nats, MESSAGES, 7)
    stream = f"{nats.stream_prefix}ANOMALIES"
    handled: list[int] = []
    deleted: list[asyncio.Task[bool]] = []

    def on_msg(msg: Msg) -> None:
        handled.append(msg.metadata.sequence.stream)
        if len(handled) == 100:
            deleted.append(asyncio.get_running_loop().create_task(js.delete_consumer(stream, msg.metadata.consumer)))

    with start_wait(StartWait(service="pytest", patience_s=60.0)):
        seen = await read_range(
            js,
            stream=stream,
            filters=[wildcard("anomaly", prefix=nats.prefix)],
            name="pytest-read",
            on_msg=on_msg,
            batch=50,  # most of the stream is still to be pulled when the reader goes
        )
    assert deleted and deleted[0].done() and deleted[0].result()
    assert handled == list(range(1, MESSAGES + 1))
    assert seen == MESSAGES
