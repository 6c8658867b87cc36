"""SIGKILLed while verdicts and a fleet finding are decided but not stored: the restart says each once.

The diagnoser keeps a verdict or finding whose DIAGNOSES publish failed in memory (`_unsent`,
`_unsent_findings`) and sends it again at the next input or tick. This is what happens when the process
dies inside that window: the process runs with the production per-role credentials on a real nats-server,
DIAGNOSES is removed while it runs, a held dark node comes due (its anomaly acknowledged long before),
a kubelet dies (its anomaly nak'ed: not acknowledged at the kill), a rack goes dark at once (a partition
and its `down_spike` finding); `NODEHEAL_TEST_KILL_AT=unsent_kept` SIGKILLs it when a publish fails with
verdicts and the finding all in memory only (`NODEHEAL_TEST_KILL_UNSENT_MIN=5`: all five verdicts). The stream
is restored and a new process started: the user must find each diagnosis and the finding in DIAGNOSES exactly
once, nothing dead-lettered."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime

import pytest

from nodeheal.diagnoser.durable import KILL_UNSENT_MIN_ENV
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


def _unsent_counts(text: str) -> list[int]:
    """The `unsent` of every "diagnoses not stored" line of a process's JSON log."""
    out = []
    for line in text.splitlines():
        if "diagnoses not stored" in line:
            try:
                out.append(int(json.loads(line)["unsent"]))
            except (ValueError, KeyError):
                continue
    return out


async def _logged(proc: Diagnoser, check: object, what: str, timeout_s: float = 30) -> str:
    deadline = asyncio.get_running_loop().time() + timeout_s
    while True:
        text = proc.log.read_text()
        if check(text):  # type: ignore[operator]
            return text
        assert proc.proc.poll() is None, f"died before {what}: {text[-3000:]}"
        assert asyncio.get_running_loop().time() < deadline, f"never {what}: {text[-3000:]}"
        await asyncio.sleep(0.1)


async def test_killed_with_verdicts_and_a_finding_unsent_then_restarted(broker: Broker) -> None:  # noqa: F811
    dark_rack = ["c0", "c1", "c2"]
    await put_inventory(broker, {"ra": ["kub", "a1", "a2"], "rb": ["solo", "b1", "b2"], "rc": [*dark_rack, "c3"]})
    # the kill waits for all five verdicts: a tick may raise the rack's finding before the last of its inputs
    first = Diagnoser(broker, "first", kill_at="unsent_kept", hooks={KILL_UNSENT_MIN_ENV: "5"}, NAK_DELAY_S="0.5")
    try:
        await first.ready()
        await broker.nc.jetstream().delete_stream("DIAGNOSES")
        # 1. a lone dark node: held NODE_DOWN_HOLD_S (1 s), its anomaly acknowledged, then its verdict comes due
        #    in a tick whose publish fails (no finding yet: the kill point waits for one)
        await send(broker, anomaly("solo", "node_down", at=datetime.now(tz=UTC)))
        await _logged(first, lambda text: any(n >= 1 for n in _unsent_counts(text)), "kept the held verdict")
        # 2. a dead kubelet (its verdict decided on its input, which is nak'ed) and a rack dark at once (a partition
        #    decided on the inputs, then the tick's correlation raises the rack's down_spike: its publish fails too)
        now = datetime.now(tz=UTC)
        await send(broker, anomaly("kub", "service_down", subject="kubelet", at=now))
        for node in dark_rack:
            await send(broker, anomaly(node, "node_down", at=now))
        await first.killed()
    finally:
        first.stop()
    text = first.log.read_text()
    assert max(_unsent_counts(text)) == 5, text[-3000:]  # every verdict was kept unsent at the kill
    info = await broker.nc.jetstream().consumer_info("ANOMALIES", "diagnoser")
    # the held node's anomaly was acknowledged: its verdict is in no input still to come
    assert (info.num_pending or 0) + (info.num_ack_pending or 0) < 5

    await apply_topology(broker.nc.jetstream(), broker.settings.topology())
    second = Diagnoser(broker, "second")
    try:
        await second.ready()
        await until(broker, lambda seen: {"kub", "solo", *dark_rack} <= {d.node for d in seen}, timeout_s=30)

        async def raised() -> list[tuple[str, str, str]]:
            return [(f.kind, f.dimension, f.value) for f in await findings(broker) if not f.cleared]

        deadline = asyncio.get_running_loop().time() + 15
        while ("down_spike", "rack", "rc") not in await raised():
            assert asyncio.get_running_loop().time() < deadline, await raised()
            await asyncio.sleep(0.3)
        await asyncio.sleep(2.0)  # a repeat would come within a tick or a redelivery
        seen = await diagnoses(broker)
        stored_findings = await raised()
        dead_lettered = second.metric("nodeheal_messages_dead_lettered_total")
    finally:
        second.stop()
    nodes = by_node(seen)
    assert [d.cause for d in nodes["kub"]] == ["kubelet_down"]
    assert [d.cause for d in nodes["solo"]] == ["node_crash"]
    assert {n: [d.cause for d in nodes[n]] for n in dark_rack} == {n: ["rack_partition"] for n in dark_rack}
    assert len(seen) == 5
    assert stored_findings.count(("down_spike", "rack", "rc")) == 1, stored_findings
    assert len(stored_findings) == len(set(stored_findings)), stored_findings  # no finding said twice
    assert dead_lettered == 0
    assert await read_stream(broker.nc, "DLQ", dlq_subject("diagnoser", prefix=broker.settings.prefix)) == []
