"""The embedded nats-server helper: starts, serves JetStream, stops cleanly, leaves no orphan."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import nats
import pytest

from nodeheal.sim.embedded import EmbeddedNats


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie still answers kill(0); look at its state
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().split()[2] != "Z"
    except FileNotFoundError:
        return False


async def test_embedded_server_serves_jetstream_and_stops() -> None:
    server = EmbeddedNats().start()
    pid = server.pid
    assert pid is not None
    try:
        nc = await nats.connect(server.url)
        js = nc.jetstream()
        await js.add_stream(name="EMB", subjects=["emb.>"])
        ack = await js.publish("emb.x", b"1")
        assert ack.seq == 1
        await nc.close()
    finally:
        server.stop()
    deadline = time.monotonic() + 5
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _alive(pid)
    assert not os.path.exists(server.store_dir)


@pytest.mark.skipif(sys.platform != "linux", reason="PR_SET_PDEATHSIG is Linux-only")
def test_no_orphan_when_the_parent_is_killed() -> None:
    script = textwrap.dedent(
        """
        import sys, time
        from nodeheal.sim.embedded import EmbeddedNats
        s = EmbeddedNats().start()
        print(s.pid, flush=True)
        time.sleep(60)
        """
    )
    parent = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    assert parent.stdout is not None
    child_pid = int(parent.stdout.readline())
    assert _alive(child_pid)
    parent.send_signal(signal.SIGKILL)
    parent.wait(timeout=10)
    deadline = time.monotonic() + 10
    while _alive(child_pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _alive(child_pid), "nats-server outlived its parent"
