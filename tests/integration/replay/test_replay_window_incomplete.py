"""A replay window that starts before the oldest message a stream still holds (its retention or byte cap removed
the older ones) says so: on stderr, naming the stream and its first stored time, and under `window.incomplete`
in the JSON. Before, the report was silently short of the window's start."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime, timedelta

import pytest
from click.testing import CliRunner
from nats.js.client import JetStreamContext

from nodeheal.cli.replay import replay
from nodeheal.runtime.jetstream import publish_model
from nodeheal.runtime.settings import NatsSettings
from tests.support.cli import nats_args
from tests.unit.replay.factories import probe, subject_of

pytestmark = pytest.mark.nats


def _args(s: NatsSettings, since: datetime) -> list[str]:
    until = datetime.now(tz=UTC) + timedelta(seconds=1)
    return [
        *nats_args(s),
        *("--since", since.isoformat(), "--until", until.isoformat()),
        *("--node", "node-a", "--json"),
    ]


async def test_a_window_older_than_what_the_stream_keeps_is_said_incomplete(
    topology_ready: NatsSettings, js: JetStreamContext
) -> None:
    s = topology_ready
    since = datetime.now(tz=UTC) - timedelta(seconds=1)
    for t in range(0, 100, 5):
        m = probe("node-a", t, ok=True, seq=t)
        await publish_model(js, subject_of(m, s.prefix), m, msg_id=m.id)
    stream = s.topology().stream(f"{s.stream_prefix}PROBES").name

    whole = await asyncio.to_thread(CliRunner().invoke, replay, _args(s, since), catch_exceptions=False)
    assert whole.exit_code == 0, whole.output
    assert json.loads(whole.stdout)["window"]["incomplete"] == []
    assert "incomplete" not in whole.stderr

    await js.purge_stream(stream, keep=5)  # what max_age / max_bytes do to the oldest probes
    info = await js.stream_info(stream)
    first = (await js.get_msg(stream, seq=info.state.first_seq)).time
    assert first is not None
    cut = await asyncio.to_thread(CliRunner().invoke, replay, _args(s, since), catch_exceptions=False)

    assert cut.exit_code == 0, cut.output
    (gap,) = json.loads(cut.stdout)["window"]["incomplete"]
    assert gap["stream"] == stream
    assert datetime.fromisoformat(gap["first_stored"]) == first.astimezone(UTC)
    assert f"{stream} holds nothing before" in cut.stderr and "is incomplete there" in cut.stderr
