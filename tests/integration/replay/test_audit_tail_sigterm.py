"""`nodeheal audit tail --durable ops` stopped with SIGTERM (kubectl delete pod, systemctl stop, timeout(1)) —
the ordinary way a long-running subscriber is stopped — while it is printing. As for Ctrl-C: what it printed and
what the next run prints are every record once, in order. Before, SIGTERM killed it with its acknowledgements
unsent and its fetched records not given back: the next run printed newer records first, waited out the ack
wait, then printed the first run's records again."""

from __future__ import annotations

import asyncio
import fcntl
import signal
import subprocess
import sys
import threading

import pytest
from nats.js.client import JetStreamContext

from nodeheal.runtime.settings import NatsSettings
from tests.integration.replay.test_audit_tail import _args, _invoke, _publish
from tests.integration.replay.test_audit_tail_durable import RECORDS, _ids, _many, _read_lines

pytestmark = pytest.mark.nats


async def test_the_cli_stopped_by_sigterm_is_resumed_by_its_next_run(
    topology_ready: NatsSettings, js: JetStreamContext
) -> None:
    records = _many()
    await _publish(js, topology_ready, records)
    proc = subprocess.Popen(
        [sys.executable, "-m", "nodeheal.cli.main", *_args(topology_ready, "--durable", "ops", "--json", "--follow")],
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
        proc.send_signal(signal.SIGTERM)
        await asyncio.to_thread(_read_lines, fd, RECORDS + 1, out)
        code = await asyncio.to_thread(proc.wait, 30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stdout.close()
    await asyncio.to_thread(drain.join, 30)
    text = out.decode(errors="replace")
    complete = text[: text.rfind("\n") + 1]
    first = _ids(complete)
    assert code == 0 and 10 <= len(first) < RECORDS  # stopped part-way, quietly
    second = await _invoke(topology_ready, "--durable", "ops", "--json")
    got = first + _ids(second.stdout)
    want = [r.action_id for r in records]
    assert got == want, (
        len(got),
        len(got) - len(set(got)),
        [i for i, (a, b) in enumerate(zip(got, want, strict=False)) if a != b][:5],
    )
