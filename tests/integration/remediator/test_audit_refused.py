"""An audit record AUDIT refuses for good is kept in the DLQ with the reason — the diagnosis that caused it, once —
and nothing is done twice for it.

The remediator runs as its own process (`python -m nodeheal.remediator`) with the remediator role's production
credentials (deploy/nats/natsauth.py) on a nats-server with that authorization; the Kubernetes and ECS emulators
are its side effects. The operator (the admin user) lowers AUDIT's `max_msg_size`: the server refuses a record
over it, every time ("message size exceeds maximum allowed"). n1's ladder is cordon, then reboot; the reboot's
reason is long (the intent record quotes it), the cordon's is short. The cordon is done and recorded; the
reboot's intent is refused, so the reboot is not done. Before, the refusal was a "retry": the diagnosis was nak'ed
and redelivered again and again (until `max_deliver`), never kept with the reason. Now it is dead-lettered at
once with the record's action id, node, phase and the server's error, and acked. Counted at the emulators: n1
cordoned once, never rebooted; n2's small diagnosis after it has its records stored (its reboot is blocked by
the pool's budget, which n1's cordon holds: rebooted as often as AUDIT says it started, at most once)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from nodeheal.schemas.diagnosis import Diagnosis, RecommendedAction
from nodeheal.schemas.dlq import DeadLetter
from nodeheal.schemas.subjects import diagnosis_subject, dlq_subject
from nodeheal.sim.ecs_api import EcsEmulator
from nodeheal.sim.kube import KubeWorld
from tests.integration.deploy.natsauth_loader import per_role_server, violations
from tests.integration.diagnoser.test_diagnoser_service import read_stream
from tests.integration.remediator.harness import (
    CLUSTER,
    add_inventory,
    audit_records,
    diagnosis,
    publish_diagnosis,
    wait_for,
)
from tests.integration.remediator.test_storm_escalation_restart import _remediator

pytestmark = [pytest.mark.nats, pytest.mark.slow]

BOUND_S = 60.0
"""Upper bound of each wait; only a bound, never a timing assertion."""

LONG = "the reboot is needed because " + "the kubelet stopped answering and its lines say so; " * 60


def _reboots(ecs: EcsEmulator, instance: str) -> int:
    return sum(
        1
        for c in ecs.calls
        if c.action in ("RebootInstance", "RedeployInstance") and c.params.get("InstanceId") == instance
    )


async def test_a_refused_intent_dead_letters_its_diagnosis_once_and_nothing_is_done_twice(
    tmp_path: Path, world: KubeWorld, ecs: EcsEmulator
) -> None:
    async with per_role_server(tmp_path, "remediator") as (_server, nc, admin):
        js = nc.jetstream()
        for node in ("n1", "n2", "n3", "n4", "n5", "n6"):
            await add_inventory(nc, admin, node, zone="z1", node_pool="p", cloud="alibaba", instance_id=f"i-{node}")
        audit = f"{admin.stream_prefix}AUDIT"
        config = (await js.stream_info(audit)).config
        config.max_msg_size = 2048  # the operator's change: a record over 2 KiB is refused, every time
        await js.update_stream(config)
        base = diagnosis("n1", ["cordon", "reboot"], episode="ep-n1")
        big = base.model_copy(
            update={
                "recommended": (
                    RecommendedAction(action="cordon", reason="kubelet down"),
                    RecommendedAction(action="reboot", reason=LONG),
                )
            }
        )
        big = Diagnosis.model_validate_json(big.to_json())
        proc, log = _remediator(admin, tmp_path, world, ecs, name="replica-1")
        dlq_stream, dlq = f"{admin.stream_prefix}DLQ", dlq_subject("remediator", prefix=admin.prefix)
        try:
            await publish_diagnosis(nc, admin, big)

            async def kept() -> bool:
                assert proc.poll() is None, log.read_text()[-3000:]
                return bool(await read_stream(nc, dlq_stream, dlq))

            await wait_for(kept, timeout=BOUND_S, what="n1's diagnosis in the DLQ")
            await asyncio.sleep(3.0)  # redeliveries (0.5 s retry delay) would be in by now
            letters = [DeadLetter.model_validate_json(b) for b in await read_stream(nc, dlq_stream, dlq)]
            info = await js.consumer_info(f"{admin.stream_prefix}DIAGNOSES", "remediator")

            # later, a small record is stored: n2's (its reboot is held by the budget n1's cordon holds)
            await publish_diagnosis(nc, admin, diagnosis("n2", ["reboot"], episode="ep-n2", reason="kubelet down"))

            async def n2_recorded() -> bool:
                return any(r.node == "n2" and r.action == "reboot" for r in await audit_records(nc, admin))

            await wait_for(n2_recorded, timeout=BOUND_S, what="n2's record in AUDIT")
            await asyncio.sleep(1.0)
            records = await audit_records(nc, admin)
            assert proc.poll() is None, log.read_text()[-3000:]
        finally:
            if proc.poll() is None:
                proc.terminate()
                await asyncio.to_thread(proc.wait, 15)
        assert violations(tmp_path) == []
    # the diagnosis that caused the refused record: kept once, whole, with the reason
    assert len(letters) == 1, [(d.subject, d.reason) for d in letters]
    [letter] = letters
    assert letter.subject == diagnosis_subject(CLUSTER, "n1", prefix=admin.prefix)
    assert Diagnosis.model_validate_json(letter.raw) == big
    assert "intent" in letter.reason and "reboot" in letter.reason and f"{CLUSTER}/n1" in letter.reason
    assert "maximum" in letter.reason  # the server's own words: message size exceeds maximum allowed
    assert [r.phase for r in records if r.node == "n1" and r.action == "cordon"][:3] == [
        "intent",
        "started",
        "succeeded",
    ]
    # n1's diagnosis settled (acked, not redelivered)
    assert (info.num_pending or 0) + (info.num_ack_pending or 0) == 0, info
    # nothing done twice, nothing done that was not recorded first (counted at the emulators)
    assert [e[2] for e in world.effects if e[1] == "n1"] == ["cordon"], world.effects
    assert _reboots(ecs, "i-n1") == 0
    assert not [r for r in records if r.node == "n1" and r.action == "reboot"]
    n2 = [r for r in records if r.node == "n2" and r.action == "reboot"]
    assert n2 and _reboots(ecs, "i-n2") == sum(r.phase == "started" for r in n2) <= 1, n2
