"""The diagnoser's start-up rebuild reads its streams once each; a nats-server that dies and comes back in
the middle of a read (the chaos demo's cluster run: the diagnoser's restart met a server kill) is waited
out and the read goes on after the last message it applied — every message applied exactly once, in
order. Before, the read ended early, silently (its fetches timed out), or the start failed."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from nats.aio.msg import Msg

from nodeheal.diagnoser.durable import DurableState
from nodeheal.diagnoser.handlers import DiagnoserRuntime
from nodeheal.diagnoser.settings import DiagnoserSettings
from nodeheal.runtime.connect import connect
from nodeheal.runtime.provision import apply_topology
from nodeheal.runtime.startup import StartWait, start_wait
from nodeheal.schemas.subjects import anomaly_subject, wildcard
from nodeheal.sim.embedded import EmbeddedNats
from tests.support.broker import publish_all, unique_settings

pytestmark = pytest.mark.nats

MESSAGES = 3000  # three fetches of 1,000 at least: the server dies inside the first batch's handling


async def test_a_rebuild_read_cut_by_a_server_restart_resumes_after_its_last_message(tmp_path: Path) -> None:
    server = EmbeddedNats(store_dir=str(tmp_path / "store")).start()
    try:
        nats = unique_settings(server.url)
        nc = await connect(nats, name="pytest-rebuild-read")
        try:
            js = nc.jetstream()
            await apply_topology(js, nats.topology())
            # acknowledged: all stored before the read starts
            subjects = [anomaly_subject("c1", f"n{i % 7}", prefix=nats.prefix) for i in range(MESSAGES)]
            await publish_all(js, [(subject, f"message {i}".encode()) for i, subject in enumerate(subjects)])
            runtime = DiagnoserRuntime(settings=DiagnoserSettings(nats=nats), nc=nc)
            durable = DurableState(
                js=js,
                diagnoser=runtime.diagnoser,
                streams=runtime._streams,
                prefix=nats.prefix,
                bucket=None,
                lookback=timedelta(hours=1),
                cloud_lookback=timedelta(hours=1),
            )
            applied: list[int] = []

            def apply(msg: Msg) -> None:
                applied.append(msg.metadata.sequence.stream)
                if len(applied) == 500:  # mid-read: the server goes away and comes back on its store
                    server.stop()  # SIGTERM: a SIGKILL may lose the newest stored messages (sync_interval)
                    server.start()

            with start_wait(StartWait(service="diagnoser", patience_s=90.0)):
                seen = await durable._read(
                    "ANOMALIES",
                    [wildcard("anomaly", prefix=nats.prefix)],
                    datetime.now(tz=UTC) - timedelta(hours=1),
                    apply,
                )
        finally:
            await nc.close()
    finally:
        server.stop()
    assert applied == list(range(1, MESSAGES + 1))  # each once, in order, none skipped
    assert seen == MESSAGES
