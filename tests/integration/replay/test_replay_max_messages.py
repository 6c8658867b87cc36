"""A replay keeps every decoded message of its window in memory (about 5 KB each): a window too large for the
machine stops with an error that says how to narrow it, before memory runs out, instead of a process killed
for memory an hour into the read. `--max-messages 0` lifts the limit."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime, timedelta

import pytest
from click.testing import CliRunner, Result
from nats.js.client import JetStreamContext

from nodeheal.cli.replay import replay
from nodeheal.runtime.jetstream import publish_model
from nodeheal.runtime.settings import NatsSettings
from tests.support.cli import nats_args
from tests.unit.replay.factories import probe, subject_of

pytestmark = pytest.mark.nats


def _args(s: NatsSettings, since: datetime, *extra: str) -> list[str]:
    until = datetime.now(tz=UTC) + timedelta(seconds=1)
    return [
        *nats_args(s),
        *("--since", since.isoformat(), "--until", until.isoformat()),
        *("--all", "--json"),
        *extra,
    ]


async def test_a_window_larger_than_max_messages_stops_with_what_to_do(
    topology_ready: NatsSettings, js: JetStreamContext
) -> None:
    s = topology_ready
    since = datetime.now(tz=UTC) - timedelta(seconds=1)
    for node in ("node-a", "node-b", "node-c"):
        for t in range(0, 50, 5):
            m = probe(node, t, ok=True, seq=t)
            await publish_model(js, subject_of(m, s.prefix), m, msg_id=m.id)

    def invoke(*extra: str) -> Result:
        return CliRunner().invoke(replay, _args(s, since, *extra), catch_exceptions=False)

    refused = await asyncio.to_thread(invoke, "--max-messages", "12")
    assert refused.exit_code == 1, refused.output
    said = " ".join(refused.stderr.split())
    assert "more than 12 messages" in said and "--node NODE" in said and "--max-messages" in said, said
    assert refused.stdout == ""

    for extra in (("--max-messages", "30"), ("--max-messages", "0"), ()):
        whole = await asyncio.to_thread(invoke, *extra)
        assert whole.exit_code == 0, whole.output
        report = json.loads(whole.stdout)
        assert report["window"]["scope"] == "all nodes"
