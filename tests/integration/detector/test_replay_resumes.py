"""The detector's start-up replay reads ANOMALIES (and CLOUD, AUDIT) once; a nats-server that dies and
comes back in the middle of a replay is waited out and the replay goes on after the last message it
handled — every message handled exactly once, in order. Before, the replay ended early and silently
(its pull requests went to a consumer the restarted server had forgotten)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from nats.aio.msg import Msg
from nats.js.api import DeliverPolicy

from nodeheal.detector.handlers import DetectorRuntime
from nodeheal.detector.settings import DetectorSettings
from nodeheal.runtime.connect import connect
from nodeheal.runtime.provision import apply_topology
from nodeheal.runtime.startup import StartWait, start_wait
from nodeheal.schemas.subjects import anomaly_subject, wildcard
from nodeheal.sim.embedded import EmbeddedNats
from tests.support.broker import publish_all, unique_settings

pytestmark = pytest.mark.nats

MESSAGES = 6000  # the puller asks for two batches of 2,000 ahead: more than that must come after the restart


async def test_a_replay_cut_by_a_server_restart_resumes_after_its_last_message(tmp_path: Path) -> None:
    server = EmbeddedNats(store_dir=str(tmp_path / "store")).start()
    try:
        nats = unique_settings(server.url)
        nc = await connect(nats, name="pytest-detector-replay")
        try:
            js = nc.jetstream()
            await apply_topology(js, nats.topology())
            # acknowledged: all stored before the read starts
            subjects = [anomaly_subject("c1", f"n{i % 7}", prefix=nats.prefix) for i in range(MESSAGES)]
            await publish_all(js, [(subject, f"message {i}".encode()) for i, subject in enumerate(subjects)])
            runtime = DetectorRuntime(settings=DetectorSettings(nats=nats), nc=nc)
            handled: list[int] = []

            def on_msg(msg: Msg) -> None:
                handled.append(msg.metadata.sequence.stream)
                if len(handled) == 500:  # mid-replay: the server goes away and comes back on its store
                    server.stop()  # SIGTERM: a SIGKILL may lose the newest stored messages (sync_interval)
                    server.start()

            with start_wait(StartWait(service="detector", patience_s=90.0)):
                seen = await runtime._replay(
                    runtime.anomalies_stream,
                    [wildcard("anomaly", prefix=nats.prefix)],
                    deliver=DeliverPolicy.BY_START_TIME,
                    since=datetime.now(tz=UTC) - timedelta(hours=1),
                    on_msg=on_msg,
                )
        finally:
            await nc.close()
    finally:
        server.stop()
    assert handled == list(range(1, MESSAGES + 1))  # each once, in order, none skipped
    assert seen == MESSAGES
