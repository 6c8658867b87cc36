"""`nodeheal audit tail --durable NAME` against a real nats-server: an interrupted run (a `break`, Ctrl-C) is
resumed by the next one after the last record it printed, nothing skipped and nothing printed twice; a
following run outlives a server restart; a stdout that closes (`| head`) ends the command quietly."""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import nats
import pytest
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from nats.js.client import JetStreamContext

from nodeheal.cli.window import DURABLE_BATCH, DURABLE_MARK, read_durable
from nodeheal.runtime.provision import apply_topology
from nodeheal.runtime.settings import NatsSettings
from nodeheal.schemas.audit import RemediationRecord
from nodeheal.sim.embedded import EmbeddedNats
from tests.integration.replay.test_audit_tail import _args, _invoke, _publish
from tests.support.broker import unique_settings
from tests.unit.replay.factories import record

pytestmark = pytest.mark.nats

RECORDS = 300


def _many(n: int = RECORDS, *, first: int = 0) -> list[RemediationRecord]:
    return [record(f"node-{i % 7}", t=i, phase="intent", action_id=f"act-{i:04d}") for i in range(first, first + n)]


def _ids(stdout: str) -> list[str]:
    return [json.loads(line)["action_id"] for line in stdout.splitlines()]


def _stream_and_subject(settings: NatsSettings) -> tuple[str, str]:
    return f"{settings.stream_prefix}AUDIT", f"{settings.prefix}.audit.*.*"


async def test_a_durable_read_stopped_early_is_resumed_after_its_last_record(
    topology_ready: NatsSettings, js: JetStreamContext
) -> None:
    """The reader fetched a batch, its caller stopped after 10 records: the next read with the same durable
    prints 11..300 in order. Before, the fetched-but-not-yielded rest of the batch stayed unacknowledged on the
    server (until the 30 s ack wait) and the next read, which ended on `num_pending` alone, printed only the
    records after the first batch and stopped."""
    records = _many()
    await _publish(js, topology_ready, records)
    stream, subject = _stream_and_subject(topology_ready)
    first: list[int] = []
    async with contextlib.aclosing(read_durable(js, stream=stream, durable="ops", subjects=[subject])) as source:
        async for stored in source:
            first.append(stored.seq)
            if len(first) == 10:
                break
    second = [s.seq async for s in read_durable(js, stream=stream, durable="ops", subjects=[subject])]
    assert first == list(range(1, 11))
    assert second == list(range(11, RECORDS + 1))
    info = await js.consumer_info(stream, "ops")
    assert (info.num_pending, info.num_ack_pending) == (0, 0)


async def test_a_durable_read_ends_on_its_own_last_acknowledgements_without_waiting(
    topology_ready: NatsSettings, js: JetStreamContext, capfd: pytest.CaptureFixture[str]
) -> None:
    """A bounded durable read with nobody else on the durable ends when it has read everything: it does not
    take its own last acknowledgements, not yet counted by the server when it asks for the consumer's state,
    for records "delivered to another reader" and wait on them. Before, a read often did so, saying it on stderr:
    these four reads each did, in each of three runs (16-22 s; 0.2 s now)."""
    records = _many()
    await _publish(js, topology_ready, records)
    stream, subject = _stream_and_subject(topology_ready)
    for durable in ("ops-1", "ops-2", "ops-3", "ops-4"):
        got = [s.seq async for s in read_durable(js, stream=stream, durable=durable, subjects=[subject])]
        assert got == list(range(1, RECORDS + 1))
    assert "another reader" not in capfd.readouterr().err


async def test_a_durable_read_waits_for_what_another_reader_holds(
    topology_ready: NatsSettings, js: JetStreamContext
) -> None:
    """Another reader of the same durable took records 1..4 and never acknowledges them: a bounded read prints
    5..10, then waits for the four (within the durable's ack wait they come back to it) and prints them too,
    and ends. Before, it ended at `num_pending == 0` without them."""
    from nats.js.api import AckPolicy, ConsumerConfig

    records = _many(10)
    await _publish(js, topology_ready, records)
    stream, subject = _stream_and_subject(topology_ready)
    await js.add_consumer(
        stream,
        ConsumerConfig(durable_name="ops", ack_policy=AckPolicy.EXPLICIT, ack_wait=2.0, filter_subject=subject),
    )
    other = await js.pull_subscribe_bind("ops", stream)
    held = await other.fetch(4, timeout=10)
    assert len(held) == 4
    got = [s.seq async for s in read_durable(js, stream=stream, durable="ops", subjects=[subject])]
    await other.unsubscribe()
    assert got[:6] == list(range(5, 11))
    assert sorted(got[6:]) == [1, 2, 3, 4]
    info = await js.consumer_info(stream, "ops")
    assert (info.num_pending, info.num_ack_pending) == (0, 0)


def _read_lines(fd: int, count: int, into: bytearray) -> None:
    """Read from `fd` until `into` holds `count` whole lines (or the end)."""
    while into.count(b"\n") < count:
        chunk = os.read(fd, 512)
        if not chunk:
            return
        into += chunk


@pytest.mark.parametrize(
    ("stop", "follow"),
    [(signal.SIGINT, ()), (signal.SIGTERM, ("--follow",))],
    ids=["ctrl_c", "sigterm_follow"],
)
async def test_the_cli_interrupted_is_resumed_by_its_next_run(
    topology_ready: NatsSettings, js: JetStreamContext, stop: signal.Signals, follow: tuple[str, ...]
) -> None:
    """The real command, its stdout a small pipe read 10 lines and then left alone (so the command is blocked
    printing), interrupted with SIGINT, or with SIGTERM while following (how Kubernetes, systemd and
    `timeout` stop a subscriber): what it printed and what the next run prints are every record once, in
    order. Before, SIGTERM killed it with its acknowledgements unsent and its fetched records not given back:
    the next run printed newer records first, waited out the ack wait, then the first run's records again."""
    records = _many()
    await _publish(js, topology_ready, records)
    proc = subprocess.Popen(
        [sys.executable, "-m", "nodeheal.cli.main", *_args(topology_ready, "--durable", "ops", "--json", *follow)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert proc.stdout is not None and proc.stderr is not None
    fd = proc.stdout.fileno()
    fcntl.fcntl(fd, 1031, 4096)  # F_SETPIPE_SZ: the command blocks after a few records nobody reads
    out = bytearray()
    err: list[bytes] = []
    drain = threading.Thread(target=lambda: err.append(proc.stderr.read() if proc.stderr else b""), daemon=True)
    drain.start()
    try:
        await asyncio.to_thread(_read_lines, fd, 10, out)
        assert out.count(b"\n") >= 10 and proc.poll() is None  # blocked printing
        proc.send_signal(stop)
        await asyncio.to_thread(_read_lines, fd, RECORDS + 1, out)  # the rest it prints while it stops
        code = await asyncio.to_thread(proc.wait, 30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stdout.close()
    await asyncio.to_thread(drain.join, 30)
    assert code == 0, err
    text = out.decode(errors="replace")
    first = _ids(text[: text.rfind("\n") + 1])
    assert 10 <= len(first) < RECORDS
    second = await _invoke(topology_ready, "--durable", "ops", "--json")
    assert first + _ids(second.stdout) == [r.action_id for r in records]


async def test_the_cli_killed_while_printing_prints_nothing_again(
    topology_ready: NatsSettings, js: JetStreamContext
) -> None:
    """The real command blocked writing to a full pipe, then SIGKILLed (a pod's grace period over): every
    record it wrote whole was acknowledged before the next was written, so the next run, once the killed
    one's fetched records are back (the durable's ack wait), prints the rest: every record once, in order.
    Before, the acknowledgements of a fetched batch stayed in the client's buffer while the batch was
    printed (the event loop never ran its flusher between two records): the next run printed the killed
    run's records again."""
    records = _many()
    await _publish(js, topology_ready, records)
    stream, subject = _stream_and_subject(topology_ready)
    # the durable as the command makes it, with a 1 s ack wait so the killed run's batch is redelivered soon
    await js.add_consumer(
        stream,
        config=ConsumerConfig(
            durable_name="ops",
            ack_policy=AckPolicy.EXPLICIT,
            deliver_policy=DeliverPolicy.ALL,
            filter_subject=subject,
            description=DURABLE_MARK,
            ack_wait=1.0,
        ),
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "nodeheal.cli.main", *_args(topology_ready, "--durable", "ops", "--json")],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
    )
    assert proc.stdout is not None
    fd = proc.stdout.fileno()
    fcntl.fcntl(fd, 1031, 4096)  # F_SETPIPE_SZ: the command blocks after a few records nobody reads
    out = bytearray()
    try:
        await asyncio.to_thread(_read_lines, fd, 10, out)
        await asyncio.sleep(1.0)  # it fills the pipe and blocks in the middle of its first batch
        assert proc.poll() is None
        proc.kill()
        await asyncio.to_thread(proc.wait, 30)
        await asyncio.to_thread(_read_lines, fd, RECORDS + 1, out)  # what it wrote before the kill
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stdout.close()
    text = out.decode(errors="replace")
    first = _ids(text[: text.rfind("\n") + 1])  # whole lines: a record cut by the kill was not printed
    assert 10 <= len(first) < DURABLE_BATCH  # killed inside the first batch
    await asyncio.sleep(1.5)  # the killed run's fetched records come back after the 1 s ack wait
    second = await _invoke(topology_ready, "--durable", "ops", "--json")
    assert first + _ids(second.stdout) == [r.action_id for r in records]


async def test_tail_into_a_pipe_that_closes_ends_quietly(topology_ready: NatsSettings, js: JetStreamContext) -> None:
    """`nodeheal audit tail | head -n 3`: three lines, and the command ends with 0 and nothing on stderr but
    its count. Before, it said "audit tail ... failed: [Errno 32] Broken pipe" and exited 1."""
    await _publish(js, topology_ready, _many())
    tail = subprocess.Popen(
        [sys.executable, "-m", "nodeheal.cli.main", *_args(topology_ready, "--json")],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert tail.stdout is not None
    head = subprocess.Popen(["head", "-n", "3"], stdin=tail.stdout, stdout=subprocess.PIPE)
    tail.stdout.close()  # head holds the only read end
    shown, _ = await asyncio.to_thread(head.communicate, None, 60)
    _, err = await asyncio.to_thread(tail.communicate, None, 60)
    assert _ids(shown.decode()) == ["act-0000", "act-0001", "act-0002"]
    assert tail.returncode == 0, err
    assert b"Broken pipe" not in err and b"Error" not in err, err


async def test_the_cli_into_a_pipe_that_closes_is_resumed_after_what_it_wrote(
    topology_ready: NatsSettings, js: JetStreamContext
) -> None:
    """`nodeheal audit tail --durable X | head -n 3` (a small pipe): the command ends with 0 and counts on
    stderr the records it wrote; the next run prints exactly the records after those. (What `head` read and
    threw away is gone with it: the command cannot know.) Before, the run ended with "Broken pipe ... failed"
    and the next one went on after the whole first batch of 256."""
    records = _many()
    await _publish(js, topology_ready, records)
    read_end, write_end = os.pipe()
    fcntl.fcntl(write_end, 1031, 4096)  # F_SETPIPE_SZ
    tail = subprocess.Popen(
        [sys.executable, "-m", "nodeheal.cli.main", *_args(topology_ready, "--durable", "ops")],
        stdout=write_end,
        stderr=subprocess.PIPE,
    )
    head = subprocess.Popen(["head", "-n", "3"], stdin=read_end, stdout=subprocess.PIPE)
    os.close(read_end)
    os.close(write_end)
    shown, _ = await asyncio.to_thread(head.communicate, None, 60)
    _, err = await asyncio.to_thread(tail.communicate, None, 60)
    assert tail.returncode == 0, err
    assert [line.split()[4] for line in shown.decode().splitlines()] == ["act-0000", "act-0001", "act-0002"]
    written = int(err.decode().split(" audit records")[0].split()[-1])
    assert 3 <= written < RECORDS
    second = await _invoke(topology_ready, "--durable", "ops", "--json")
    assert _ids(second.stdout) == [r.action_id for r in records[written:]]


async def _follower(settings: NatsSettings, durable: str) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "nodeheal.cli.main",
        *_args(settings, "--durable", durable, "--follow", "--json"),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )


async def test_a_durable_follow_outlives_a_server_restart(tmp_path: Path) -> None:
    """A nats-server (file store) restarted under `audit tail --durable X --follow`: the records published
    after the restart are printed, and none from before it again. Before, the command exited 1 on the
    consumer info or fetch that met the restart."""
    store = str(tmp_path / "store")
    server = EmbeddedNats(store_dir=store).start()
    restarted: EmbeddedNats | None = None
    settings = unique_settings(server.url)
    options = {"max_reconnect_attempts": -1, "reconnect_time_wait": 0.2, "allow_reconnect": True}
    nc = await nats.connect(server.url, **options)
    js = nc.jetstream()
    records = _many(6)
    proc: asyncio.subprocess.Process | None = None
    try:
        await apply_topology(js, settings.topology())
        await _publish(js, settings, records[:3])
        proc = await _follower(settings, "ops")
        assert proc.stdout is not None
        before = [json.loads(await asyncio.wait_for(proc.stdout.readline(), timeout=30)) for _ in range(3)]
        assert [r["action_id"] for r in before] == [r.action_id for r in records[:3]]
        server.stop()
        # down longer than a fetch wait (5 s) and then a request's (5 s): the reader's consumer info is sure
        # to meet the outage (a shorter one can fall inside a fetch that simply times out)
        await asyncio.sleep(11.0)
        restarted = EmbeddedNats(port=server.port, store_dir=store).start()
        for attempt in range(60):  # until this test's connection is back (msg ids make a retry harmless)
            try:
                await _publish(js, settings, records[3:])
                break
            except Exception:
                if attempt == 59:
                    raise
                await asyncio.sleep(0.5)
        after = [await asyncio.wait_for(proc.stdout.readline(), timeout=60) for _ in records[3:]]
        assert [json.loads(line)["action_id"] for line in after if line] == [r.action_id for r in records[3:]]
        assert proc.returncode is None  # still following
    finally:
        if proc is not None:
            if proc.returncode is None:
                proc.terminate()
            await proc.wait()
        await nc.close()
        for s in (server, restarted):
            if s is not None:
                s.stop()
