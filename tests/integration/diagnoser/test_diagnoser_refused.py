"""A diagnosis or fleet finding the server refuses for good is kept in the DLQ with the reason — not only logged.

The diagnoser process runs with the production per-role credentials on a real nats-server. The operator
tightens DIAGNOSES's `max_msg_size`: the server refuses a message over it, every time ("message size exceeds
maximum allowed"). Before, such a verdict was logged and dropped; the input that decided it was nak'ed, and
its redelivery found the verdict "said" and was acked: the log line was the only trace. Now the input that
decided a refused verdict is dead-lettered with the reason at once (and acked, not redelivered), and what is
refused with no input at hand — a held node's verdict from the tick, a fleet finding — is dead-lettered itself
(its JSON, the subject it was for, the reason). Everything else goes on being stored."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

import pytest

from nodeheal.schemas import Anomaly, Diagnosis
from nodeheal.schemas.dlq import DeadLetter
from nodeheal.schemas.finding import FleetFinding
from nodeheal.schemas.subjects import anomaly_subject, diagnosis_subject, dlq_subject, finding_subject
from tests.integration.diagnoser.test_diagnoser_kill import (
    Broker,
    Diagnoser,
    broker,  # noqa: F401 - the fixture
    by_node,
    diagnoses,
    put_inventory,
    send,
    until,
)
from tests.integration.diagnoser.test_diagnoser_service import read_stream
from tests.unit.diagnoser.scenarios import CLUSTER, OOPS_A, anomaly

pytestmark = [pytest.mark.nats, pytest.mark.slow]


async def _limit(b: Broker, max_msg_size: int) -> None:
    """The operator's change of DIAGNOSES (the admin user)."""
    js = b.nc.jetstream()
    config = (await js.stream_info("DIAGNOSES")).config
    config.max_msg_size = max_msg_size
    await js.update_stream(config)


async def _letters(b: Broker) -> list[DeadLetter]:
    raw = await read_stream(b.nc, "DLQ", dlq_subject("diagnoser", prefix=b.settings.prefix))
    return [DeadLetter.model_validate_json(b) for b in raw]


async def _until_letters(b: Broker, check: object, timeout_s: float = 20) -> list[DeadLetter]:
    deadline = asyncio.get_running_loop().time() + timeout_s
    while True:
        letters = await _letters(b)
        if check(letters):  # type: ignore[operator]
            return letters
        assert asyncio.get_running_loop().time() < deadline, [(d.subject, d.reason) for d in letters]
        await asyncio.sleep(0.3)


async def test_refused_verdicts_and_findings_are_dead_lettered_with_the_reason(broker: Broker) -> None:  # noqa: F811
    p = broker.settings.prefix
    dark_rack = ["c0", "c1", "c2"]
    await put_inventory(broker, {"ra": ["kub", "k", "a2"], "rb": ["solo", "b1", "b2"], "rc": [*dark_rack, "c3"]})
    proc = Diagnoser(broker, "diagnoser", NAK_DELAY_S="0.5")
    try:
        await proc.ready()
        # 1. a verdict too large for the stream (a kernel oops quoting its lines: ~4 KB) is refused, a small one
        #    after it is stored
        await _limit(broker, 3000)
        now = datetime.now(tz=UTC)
        oops = anomaly("k", "kernel_fault", at=now, lines=OOPS_A * 5)
        await send(broker, oops)
        await send(broker, anomaly("kub", "service_down", subject="kubelet", at=now))
        await until(broker, lambda seen: any(d.node == "kub" for d in seen), timeout_s=20)
        letters = await _until_letters(broker, lambda ls: len(ls) >= 1)
        await asyncio.sleep(1.5)  # a redelivery (0.5 s nak delay) would be in by now
        info = await broker.nc.jetstream().consumer_info("ANOMALIES", "diagnoser")
        assert (info.num_pending or 0) + (info.num_ack_pending or 0) == 0  # the refused input is settled
        letters = await _letters(broker)
        assert len(letters) == 1, [(d.subject, d.reason) for d in letters]  # kept once
        [letter] = letters
        assert letter.subject == anomaly_subject(CLUSTER, "k", prefix=p)
        assert Anomaly.model_validate_json(letter.raw) == oops  # the input, whole
        assert "kernel_oops_null_deref" in letter.reason
        assert "maximum" in letter.reason  # the server's own words: message size exceeds maximum allowed
        assert [d.node for d in await diagnoses(broker)] == ["kub"]

        # 2. every diagnosis and finding refused: a held dark node (its verdict decided by the tick, its anomaly
        #    acknowledged long before) and a rack dark at once (the partition decided on the inputs, its
        #    down_spike raised by the tick's correlation)
        await _limit(broker, 256)
        now = datetime.now(tz=UTC)
        await send(broker, anomaly("solo", "node_down", at=now))
        for node in dark_rack:
            await send(broker, anomaly(node, "node_down", at=now))

        def complete(ls: list[DeadLetter]) -> bool:
            subjects = {d.subject for d in ls}
            return (
                diagnosis_subject(CLUSTER, "solo", prefix=p) in subjects
                and finding_subject(prefix=p) in subjects
                and sum(d.subject == anomaly_subject(CLUSTER, n, prefix=p) for n in dark_rack for d in ls) >= 1
            )

        await _until_letters(broker, complete)
        await asyncio.sleep(2.0)  # a repeat would be in by now
        letters = await _letters(broker)
        dead_lettered = proc.metric("nodeheal_messages_dead_lettered_total")
        assert proc.proc.poll() is None
    finally:
        proc.stop()
    assert dead_lettered == float(len(letters))
    by_subject: dict[str | None, list[DeadLetter]] = {}
    for d in letters:
        by_subject.setdefault(d.subject, []).append(d)
    # the held node's verdict, itself
    [solo] = by_subject.pop(diagnosis_subject(CLUSTER, "solo", prefix=p))
    assert Diagnosis.model_validate_json(solo.raw).cause == "node_crash"
    assert "not stored" in solo.reason and "maximum" in solo.reason
    # the rack's findings, themselves, each once
    found = [FleetFinding.model_validate_json(d.raw) for d in by_subject.pop(finding_subject(prefix=p))]
    spikes = [(f.kind, f.dimension, f.value) for f in found]
    assert spikes.count(("down_spike", "rack", "rc")) == 1, spikes
    assert len(spikes) == len(set(spikes)), spikes
    # the rack's partition verdicts: with the input that decided them, naming all three
    rack_inputs = [d for n in dark_rack for d in by_subject.pop(anomaly_subject(CLUSTER, n, prefix=p), [])]
    reasons = " ".join(d.reason for d in rack_inputs)
    assert all(f"{CLUSTER}/{n} (rack_partition)" in reasons for n in dark_rack), reasons
    assert reasons.count("rack_partition") == 3  # each verdict in one letter
    assert len(by_subject) == 1  # and the oops of step 1, nothing else
    nodes = by_node(await diagnoses(broker))
    assert list(nodes) == ["kub"]  # nothing refused was stored after all
