"""A diagnosis or fleet finding whose publish fails is said once DIAGNOSES takes messages again — not lost.

The diagnoser process runs with the production per-role credentials on a real nats-server. While it runs,
the DIAGNOSES stream goes away (as a stream does while it has no leader: every publish to it fails), and
verdicts come due both ways the service gives them: at once for an input message (a dead kubelet, a rack
going dark at once) and from the tick for a held one (a lone dark node after its hold), and the tick's
correlation raises the dark rack as a fleet finding. Each publish fails. When the stream is back, the user
must find every diagnosis and the finding in it, each once. Before the fix, verdicts and findings were
remembered as said before their publish was acknowledged: the redelivered input found the verdict
"unchanged", the tick had dropped its hold, the finding was "raised already" — none was ever said."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

import pytest

from nodeheal.runtime.provision import apply_topology
from nodeheal.schemas.subjects import dlq_subject
from tests.integration.diagnoser.test_diagnoser_kill import (
    Broker,
    Diagnoser,
    broker,  # noqa: F401 - the fixture
    by_node,
    diagnoses,
    findings,
    put_inventory,
    send,
    until,
)
from tests.integration.diagnoser.test_diagnoser_service import read_stream
from tests.unit.diagnoser.scenarios import anomaly

pytestmark = [pytest.mark.nats, pytest.mark.slow]


async def test_verdicts_whose_publish_failed_are_said_when_the_stream_is_back(broker: Broker) -> None:  # noqa: F811
    dark_rack = ["c0", "c1", "c2"]
    await put_inventory(broker, {"ra": ["kub", "a1", "a2"], "rb": ["solo", "b1", "b2"], "rc": [*dark_rack, "c3"]})
    # two deliveries at most: before the fix, the stream's absence was not a transient failure and the dead
    # kubelet's anomaly was dead-lettered on its second delivery
    proc = Diagnoser(broker, "diagnoser", MAX_DELIVER="2", NAK_DELAY_S="0.5")
    try:
        await proc.ready()
        await broker.nc.jetstream().delete_stream("DIAGNOSES")
        now = datetime.now(tz=UTC)
        await send(broker, anomaly("kub", "service_down", subject="kubelet", at=now))
        await send(broker, anomaly("solo", "node_down", at=now))  # held NODE_DOWN_HOLD_S (1 s), then the tick
        for node in dark_rack:  # a rack partition at once, and its down_spike finding from the tick's correlation
            await send(broker, anomaly(node, "node_down", at=now))
        # both verdicts come due while nothing can store them: the input is nak'ed, the tick's publish fails
        # ... for three deliveries of the input (one more than MAX_DELIVER), or until it is dead-lettered
        deadline = asyncio.get_running_loop().time() + 30
        while True:
            text = proc.log.read_text()
            failures = text.count("nak with delay") + text.count("dead-lettered input")
            if failures >= 3:
                break
            assert asyncio.get_running_loop().time() < deadline, text[-3000:]
            await asyncio.sleep(0.2)
        assert "tick failed" in text  # the held verdict came due in a tick whose publish failed
        await asyncio.sleep(1.0)  # correlation runs every 0.3 s: the rack's finding was raised and not stored
        await apply_topology(broker.nc.jetstream(), broker.settings.topology())

        def every(seen: list[object]) -> bool:
            return {"kub", "solo", *dark_rack} <= {d.node for d in seen}  # type: ignore[attr-defined]

        seen = await until(broker, every, timeout_s=30)
        await asyncio.sleep(2.0)  # a repeat would come within a tick or a redelivery
        seen = await diagnoses(broker)
        nodes = by_node(seen)
        assert [d.cause for d in nodes["kub"]] == ["kubelet_down"]
        assert [d.cause for d in nodes["solo"]] == ["node_crash"]
        assert {n: [d.cause for d in nodes[n]] for n in dark_rack} == {n: ["rack_partition"] for n in dark_rack}
        # the fleet finding the correlation raised while nothing could store it
        raised = [(f.kind, f.dimension, f.value) for f in await findings(broker) if not f.cleared]
        assert raised.count(("down_spike", "rack", "rc")) == 1, raised
        assert proc.proc.poll() is None, "the diagnoser died instead of waiting the outage out"
        assert proc.metric("nodeheal_messages_dead_lettered_total") == 0
        assert await read_stream(broker.nc, "DLQ", dlq_subject("diagnoser", prefix=broker.settings.prefix)) == []
    finally:
        proc.stop()
