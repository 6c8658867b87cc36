"""`nodeheal audit tail` against a real nats-server: the command's tests on a server of their own with the deployed
per-role authorization, run under the operator's read-only `reader` credential while the remediator's credential
writes AUDIT (the only role that may; no permission violation logged); the tests of `read_stream` beneath it on
the shared server, under the test's unique names."""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from click.testing import CliRunner, Result
from nats.js.client import JetStreamContext

from nodeheal.cli.main import cli
from nodeheal.runtime.jetstream import publish_model
from nodeheal.runtime.settings import NatsSettings
from nodeheal.schemas.audit import RemediationRecord
from nodeheal.schemas.subjects import audit_subject
from tests.integration.deploy.natsauth_loader import RoleServer, role_server, violations
from tests.support.broker import cancel_as_data_arrives
from tests.support.cli import nats_args
from tests.unit.replay.factories import record

pytestmark = pytest.mark.nats


@pytest.fixture
async def deployed(tmp_path: Path) -> AsyncIterator[RoleServer]:
    """A nats-server of the test's own with the deployed per-role authorization (the remediator's role)."""
    async with role_server(tmp_path, "remediator") as d:
        yield d
        assert violations(d.dir) == []


@pytest.fixture
async def writer(deployed: RoleServer) -> JetStreamContext:
    """The remediator's connection: the only writer of AUDIT."""
    return (await deployed.role_nc("remediator")).jetstream()


@pytest.fixture
def admin(deployed: RoleServer) -> JetStreamContext:
    """The operator's admin, for what the test looks at on the server (consumers, stored messages)."""
    return deployed.nc.jetstream()


def _args(settings: NatsSettings, *extra: str) -> list[str]:
    return ["audit", "tail", *nats_args(settings), *extra]


async def _invoke(settings: NatsSettings, *extra: str) -> Result:
    result = await asyncio.to_thread(CliRunner().invoke, cli, _args(settings, *extra), catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result


async def _publish(js: JetStreamContext, settings: NatsSettings, records: list[RemediationRecord]) -> int:
    seq = 0
    for r in records:
        ack = await publish_model(js, audit_subject(r.cluster, r.node, prefix=settings.prefix), r, msg_id=r.id)
        seq = ack.seq
    return seq


def _records() -> list[RemediationRecord]:
    return [
        record("node-a", t=1, phase="intent", action_id="act-a"),
        record("node-b", t=2, phase="intent", action="restart_service", action_id="act-b", dry_run=True),
        record("node-a", t=3, phase="started", action_id="act-a"),
        record("node.with.dots", t=4, phase="blocked", action="drain", action_id="act-c"),
    ]


async def test_tail_prints_every_record_in_order_and_stops_at_the_end(
    reader: NatsSettings, writer: JetStreamContext
) -> None:
    await _publish(writer, reader, _records())
    result = await _invoke(reader)
    lines = result.stdout.splitlines()
    assert len(lines) == 4
    assert "prod-1/node-a  reboot  intent  act-a" in lines[0]
    assert "restart_service  intent DRY-RUN  act-b" in lines[1]
    assert "node.with.dots  drain  blocked" in lines[3]


async def test_tail_of_an_empty_stream_ends_with_nothing(reader: NatsSettings) -> None:
    result = await _invoke(reader, "--json")
    assert result.stdout == ""


async def test_node_filter_and_json_lines(reader: NatsSettings, writer: JetStreamContext) -> None:
    await _publish(writer, reader, _records())
    result = await _invoke(reader, "--node", "node-a", "--json")
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    assert [(r["node"], r["phase"], r["action_id"]) for r in rows] == [
        ("node-a", "intent", "act-a"),
        ("node-a", "started", "act-a"),
    ]
    assert rows[0]["schema"] == "nodeheal.audit/v1" and rows[0]["_stream_seq"] == 1
    dotted = await _invoke(reader, "--node", "node.with.dots", "--json")
    assert [json.loads(line)["action_id"] for line in dotted.stdout.splitlines()] == ["act-c"]


async def test_since_starts_at_the_given_stream_time(
    reader: NatsSettings, writer: JetStreamContext, admin: JetStreamContext
) -> None:
    records = _records()
    await _publish(writer, reader, records[:2])
    first_new = await _publish(writer, reader, records[2:])
    stream = reader.topology().stream(f"{reader.stream_prefix}AUDIT").name
    stored = await admin.get_msg(stream, first_new - 1)  # the first of the second batch
    assert stored.time is not None
    since = stored.time.isoformat().replace("+00:00", "Z")
    result = await _invoke(reader, "--since", since, "--json")
    assert [json.loads(line)["action_id"] for line in result.stdout.splitlines()] == ["act-a", "act-c"]
    assert (await _invoke(reader, "--since", "1h", "--json")).stdout.count("\n") == 4


async def test_bad_since_is_a_usage_error(reader: NatsSettings) -> None:
    result = await asyncio.to_thread(CliRunner().invoke, cli, _args(reader, "--since", "yesterday-ish"))
    assert result.exit_code == 2
    assert "cannot read the time 'yesterday-ish'" in result.output


async def test_durable_resumes_after_what_it_printed(reader: NatsSettings, writer: JetStreamContext) -> None:
    records = _records()
    await _publish(writer, reader, records[:3])
    first = await _invoke(reader, "--durable", "ops-tail", "--json")
    assert len(first.stdout.splitlines()) == 3
    await _publish(writer, reader, records[3:])
    second = await _invoke(reader, "--durable", "ops-tail", "--json")
    assert [json.loads(line)["action_id"] for line in second.stdout.splitlines()] == ["act-c"]


async def _following(settings: NatsSettings) -> asyncio.subprocess.Process:
    """`nodeheal audit tail --follow --json` as a process of its own (stdout and stderr piped)."""
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "nodeheal.cli.main",
        *_args(settings, "--follow", "--json"),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )


async def test_follow_prints_records_published_later(reader: NatsSettings, writer: JetStreamContext) -> None:
    records = _records()
    await _publish(writer, reader, records[:1])
    proc = await _following(reader)
    try:
        assert proc.stdout is not None
        first = await asyncio.wait_for(proc.stdout.readline(), timeout=30)
        assert json.loads(first)["action_id"] == "act-a"
        await _publish(writer, reader, records[3:])
        later = await asyncio.wait_for(proc.stdout.readline(), timeout=30)
        assert json.loads(later)["action_id"] == "act-c"
        assert proc.returncode is None  # still following
    finally:
        proc.terminate()
        await proc.wait()


async def test_follow_outlives_the_loss_of_its_consumer_without_a_gap_or_a_repeat(
    reader: NatsSettings, writer: JetStreamContext, admin: JetStreamContext
) -> None:
    """`--follow` reads through a named ephemeral consumer; when the server loses it (a restart drops a
    memory-stored consumer; here it is deleted), a new one starts after the last record printed: the
    records published meanwhile are printed once each, none twice."""
    records = _records()
    await _publish(writer, reader, records[:1])
    stream = f"{reader.stream_prefix}AUDIT"
    before = {c.name for c in await admin.consumers_info(stream)}
    proc = await _following(reader)
    try:
        assert proc.stdout is not None
        first = await asyncio.wait_for(proc.stdout.readline(), timeout=30)
        assert json.loads(first)["action_id"] == "act-a"
        readers = [c.name for c in await admin.consumers_info(stream) if c.name not in before]
        assert len(readers) == 1, readers
        await admin.delete_consumer(stream, readers[0])
        await _publish(writer, reader, records[1:])
        later = [json.loads(await asyncio.wait_for(proc.stdout.readline(), timeout=30)) for _ in records[1:]]
        assert [(r["action_id"], r["phase"]) for r in later] == [(r.action_id, r.phase) for r in records[1:]]
        assert proc.returncode is None  # still following
    finally:
        proc.terminate()
        await proc.wait()


@pytest.mark.parametrize("how", ["cancelled", "connection-closed"])
async def test_a_following_read_ends_with_its_caller(topology_ready: NatsSettings, how: str) -> None:
    """`read_stream(follow=True)` recreates a lost reader, but never outlives its caller: cancelled (Ctrl-C,
    `nodeheal batch` ending its progress follower) or with its connection closed, it ends. Before, nats-py's
    `ConnectionClosedError` for a fetch cancelled on a closing connection was taken for a lost reader and
    retried forever: an interrupted `nodeheal batch` did not exit (seen once in CI)."""
    import nats

    from nodeheal.cli.window import read_stream

    nc = await nats.connect(topology_ready.url)
    js = nc.jetstream()
    subject = f"{topology_ready.prefix}.audit.*.*"
    got: list[int] = []

    async def follow() -> None:
        async for stored in read_stream(
            js, stream=f"{topology_ready.stream_prefix}AUDIT", subjects=[subject], follow=True
        ):
            got.append(stored.seq)

    task = asyncio.create_task(follow())
    try:
        await asyncio.sleep(1.5)  # waiting in a fetch on an empty stream
        assert not task.done()
        if how == "cancelled":
            task.cancel()
        else:
            await nc.close()
        await asyncio.wait_for(asyncio.gather(task, return_exceptions=True), timeout=10)
    finally:
        if not nc.is_closed:
            await nc.close()
    assert task.done() and got == []


async def test_a_following_read_cancelled_as_a_record_arrives_still_ends(
    topology_ready: NatsSettings, js: JetStreamContext
) -> None:
    """The Ctrl-C of `nodeheal batch` lands in the loop turn in which an AUDIT record reaches the follower's
    subscription. On Python 3.11 `asyncio.wait_for` (inside nats-py's `fetch`) then returns the record and
    drops the cancellation (CPython gh-86296); the read took the next fetch and went on forever: an
    interrupted `nodeheal batch` did not exit within 30 s (seen in this suite under load; its task dump
    showed the follower `cancelling` inside a new fetch). Here the cancellation is made to land exactly
    there (`cancel_as_data_arrives`)."""
    import nats

    from nodeheal.cli.window import read_stream

    reader_nc = await nats.connect(topology_ready.url)
    reader_js = reader_nc.jetstream()
    task: asyncio.Task[None] | None = None
    cancel_as_data_arrives(reader_js, lambda: task)
    got: list[int] = []

    async def follow() -> None:
        async for stored in read_stream(
            reader_js,
            stream=f"{topology_ready.stream_prefix}AUDIT",
            subjects=[f"{topology_ready.prefix}.audit.*.*"],
            follow=True,
        ):
            got.append(stored.seq)

    task = asyncio.create_task(follow())
    try:
        await asyncio.sleep(1.0)  # waiting in a fetch on an empty stream
        await _publish(js, topology_ready, _records()[:1])
        await asyncio.wait_for(asyncio.gather(task, return_exceptions=True), timeout=15)
    finally:
        await reader_nc.close()
    assert task.cancelled()
