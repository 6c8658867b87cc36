"""`nodeheal replay` reads the prober's `ProberResults` batches as the prober probes they stand for: the recorded
window has each node's prober verdicts (with the evidence ids the detector's anomalies name), for the whole
fleet and for a window of one node."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest
from nats.js.client import JetStreamContext

from nodeheal.cli.replay import Scope, record_window
from nodeheal.cloud_events.prober.batch import ResultBatcher
from nodeheal.runtime.settings import NatsSettings
from nodeheal.schemas import NodeProbe
from nodeheal.schemas.prober import result_id

pytestmark = pytest.mark.nats

DOWN = [{"check": "tcp", "target": "10.0.0.1:10250", "ok": False, "error": "timeout after 2s"}]
UP = [{"check": "tcp", "target": "10.0.0.2:10250", "ok": True, "latency_ms": 0.5}]


async def test_a_recorded_batch_is_each_nodes_prober_probe(topology_ready: NatsSettings, js: JetStreamContext) -> None:
    s = topology_ready
    since = datetime.now(tz=UTC) - timedelta(seconds=5)
    batcher = ResultBatcher(cluster="c1", partitions=0, prefix=s.prefix, seq=3)
    for node, checks in (("node-a", DOWN), ("node-b", UP)):
        batcher.add(node, checks)
    [batch] = batcher.drain()
    await js.publish(batch.subject, batch.body, headers={"Nats-Msg-Id": batch.msg_id})
    batch_id = json.loads(batch.body)["id"]
    until = datetime.now(tz=UTC) + timedelta(seconds=5)

    whole = await record_window(js, settings=s, since=since, until=until, scope=Scope(label="all"), streams=("PROBES",))
    assert whole.skipped == []
    probes = {m.node: m for m in whole.messages if isinstance(m, NodeProbe)}
    assert set(probes) == {"node-a", "node-b"}
    a = probes["node-a"]
    assert (a.source, a.seq, a.id, a.cluster) == ("prober", 3, result_id(batch_id, 0), "c1")
    assert [(r.check, r.ok) for r in a.reachability] == [("tcp", False)]

    one = await record_window(
        js,
        settings=s,
        since=since,
        until=until,
        scope=Scope(label="node-b", nodes=frozenset({("c1", "node-b")}), cluster="c1"),
        streams=("PROBES",),
    )
    assert [(m.node, m.id) for m in one.messages] == [("node-b", result_id(batch_id, 1))]
