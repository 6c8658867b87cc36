"""A storm's escalation whose AUDIT record could not be stored is recorded exactly once — also when the remediator
is SIGKILLed between the storm key's create and the record, and started again.

The remediator runs as its own process (`python -m nodeheal.remediator`) with the remediator role's production
credentials (deploy/nats/natsauth.py) on a nats-server with that authorization; the Kubernetes and ECS emulators
are its side effects. The AUDIT stream is removed (as a stream is while it has no leader: every publish fails)
and half of a zone falls ill at once: a storm. The storm's key in nodeheal-control says "escalated" from its
create on; the person is told by the AUDIT record. Counted at the AUDIT stream: each storm's escalation once.
Counted at the emulators: no node cordoned, drained or rebooted (the storm guard held them all).

(a) the stream comes back while the same process runs: it sends the kept record.
(b) the process SIGKILLs itself right after the key's create (`between_storm_key_and_record`); the stream comes
back; a second process starts: the key says "escalated, not recorded", so it records it. Before, the record was
kept in the first process's memory only: the key said "escalated already" to the second process, and the
person was never told."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import nats
import pytest
from nats.aio.client import Client

from nodeheal.remediator.control import StormEntry, StormEscalation, storm_key
from nodeheal.runtime.jetstream import kv_keys, publish_model
from nodeheal.runtime.provision import apply_topology
from nodeheal.runtime.settings import NatsSettings
from nodeheal.schemas.audit import RemediationRecord
from nodeheal.schemas.subjects import audit_subject
from nodeheal.sim.ecs_api import EcsEmulator
from nodeheal.sim.kube import KubeWorld
from tests.integration.deploy.natsauth_loader import load_natsauth, per_role_server, violations
from tests.integration.remediator.harness import (
    CLUSTER,
    add_inventory,
    audit_records,
    diagnosis,
    publish_diagnosis,
    remediator_env,
    wait_for,
)

pytestmark = [pytest.mark.nats, pytest.mark.slow]

BOUND_S = 120.0
"""Upper bound of each wait (a process start, a record); only a bound, never a timing assertion."""

NODES = [f"n{i}" for i in range(1, 7)]
SICK = NODES[:4]


def _remediator(
    nats: NatsSettings, tmp_path: Path, world: KubeWorld, ecs: EcsEmulator, *, name: str, kill_at: str | None = None
) -> tuple[subprocess.Popen[bytes], Path]:
    env = remediator_env(
        nats,
        NATS__CREDS_FILE=str(tmp_path / "remediator.creds"),
        NATS__INBOX_PREFIX=load_natsauth().inbox_prefix("remediator"),
        INSTANCE=name,
        LOG_FORMAT="json",
        ACK_WAIT_S="3",
        RETRY_DELAY_S="0.5",
        MAINTENANCE_INTERVAL_S="0.5",
        POLICY__STORM_THRESHOLD_PCT="30",
        POLICY__STORM_MIN_UNHEALTHY="3",
        KUBE__API_URL=world.url,
        CLOUD__PROVIDER="alibaba",
        CLOUD__ALIBABA_ENDPOINT=ecs.endpoint,
        CLOUD__ALIBABA_PROTOCOL="http",
        CLOUD__ALIBABA_ACCESS_KEY_ID="sim-access-key-id",
        CLOUD__ALIBABA_ACCESS_KEY_SECRET="sim-secret",
        NATS__PUBLISH_TIMEOUT_S="5",
    )
    if kill_at:
        env["NODEHEAL_TEST_KILL_AT"] = kill_at
    log = tmp_path / f"{name}.log"
    proc = subprocess.Popen(
        [sys.executable, "-m", "nodeheal.remediator"], env=env, stdout=log.open("wb"), stderr=subprocess.STDOUT
    )
    return proc, log


async def _storm_keys(nc: Client, nats: NatsSettings) -> dict[str, dict[str, object]]:
    kv = await nc.jetstream().key_value(f"{nats.bucket_prefix}-control")
    out: dict[str, dict[str, object]] = {}
    for key in await kv_keys(kv, pattern="storm.>"):
        entry = await kv.get(key)
        out[key] = json.loads(entry.value or b"{}")
    return out


async def _escalations(nc: Client, nats: NatsSettings) -> list[str]:
    return [
        r.target or ""
        for r in await audit_records(nc, nats)
        if r.action == "escalate" and (r.target or "").startswith("storm:")
    ]


@pytest.mark.parametrize(
    ("killed", "restarted"),
    [(False, 0), (True, 1), (True, 2)],
    ids=["stream-back", "sigkill-and-restart", "sigkill-and-two-replicas-start"],
)
async def test_a_storm_escalation_is_recorded_once_after_audit_failed(
    tmp_path: Path, world: KubeWorld, ecs: EcsEmulator, killed: bool, restarted: int
) -> None:
    """`restarted`: how many replicas start after the kill (two at once: both find the key unrecorded, one
    takes it over by compare-and-set and records it)."""
    async with per_role_server(tmp_path, "remediator") as (_server, nc, admin):
        js = nc.jetstream()
        for node in NODES:
            await add_inventory(nc, admin, node, zone="z1", node_pool="p", cloud="alibaba", instance_id=f"i-{node}")
        procs: list[subprocess.Popen[bytes]] = []
        try:
            first, first_log = _remediator(
                admin,
                tmp_path,
                world,
                ecs,
                name="replica-1",
                kill_at="between_storm_key_and_record" if killed else None,
            )
            procs.append(first)

            await nc.jetstream().delete_stream(f"{admin.stream_prefix}AUDIT")
            for node in SICK:  # four of the zone's six nodes fall ill at once: a storm
                await publish_diagnosis(nc, admin, diagnosis(node, ["cordon", "drain", "reboot"]))

            async def storm_key_written() -> bool:
                return bool(await _storm_keys(nc, admin))

            await wait_for(storm_key_written, timeout=BOUND_S, what="a storm's key")
            if killed:
                code = await asyncio.to_thread(first.wait, BOUND_S)
                assert code == -9, first_log.read_text()[-3000:]  # it died at the hook point
            else:
                await asyncio.sleep(2.0)  # the ladders and the maintenance tick try AUDIT every 0.5 s meanwhile
                assert first.poll() is None, first_log.read_text()[-3000:]
            keys = await _storm_keys(nc, admin)
            # escalated, none recorded (ladders run side by side: more than one storm's key may be created)
            assert keys and all(v.get("recorded") is not True for v in keys.values()), keys
            unrecorded = {f"storm:{v['kind']}:{v['value']}" for v in keys.values()}
            await apply_topology(js, admin.topology())
            if killed:
                # the dead holder's leases age out at once (as after their TTL): the restarted replicas' ladders
                # reach the storm guard again (the test's half-second retries would use up their deliveries first)
                await js.purge_stream(f"KV_{admin.bucket_prefix}-leases")
            for i in range(restarted):
                procs.append(_remediator(admin, tmp_path, world, ecs, name=f"replica-{i + 2}")[0])

            async def told() -> bool:
                return unrecorded <= set(await _escalations(nc, admin))

            await wait_for(told, timeout=BOUND_S, what=f"the escalations of {sorted(unrecorded)} in AUDIT")

            async def all_recorded() -> bool:
                keys = await _storm_keys(nc, admin)
                return bool(keys) and all(v.get("recorded") is True for v in keys.values())

            await wait_for(all_recorded, timeout=BOUND_S, what="every storm key marked recorded")
            await asyncio.sleep(3.0)  # a repeat would come with the next retries and maintenance ticks
            escalations = await _escalations(nc, admin)
            keys = await _storm_keys(nc, admin)
        finally:
            for proc in procs:
                if proc.poll() is None:
                    proc.terminate()
                    await asyncio.to_thread(proc.wait, 15)
        assert violations(tmp_path) == []
    # each storm in force (the zone, the pool, the cluster: those whose key was there at the kill and those the
    # restarted replica found) told once, and its key says so
    assert sorted(escalations) == sorted(set(escalations)), escalations
    assert {f"storm:{v['kind']}:{v['value']}" for v in keys.values()} == set(escalations), (keys, escalations)
    # the storm guard held every capacity step: nothing cordoned, drained or rebooted
    assert [c for c in ecs.calls if c.action in ("RebootInstance", "RedeployInstance")] == []
    assert [e for e in world.effects if e[1] in SICK] == [], world.effects


async def test_an_escalation_stored_but_not_marked_is_not_recorded_again(
    tmp_path: Path, world: KubeWorld, ecs: EcsEmulator
) -> None:
    """The recorder died after AUDIT stored the record and before it marked the key (or AUDIT stored it and the
    acknowledgement was lost): the key still says "not recorded". The replica that starts looks in AUDIT before
    it sends: the escalation stays in AUDIT once — also past AUDIT's duplicate window, which the record stored
    here stands for by carrying a Nats-Msg-Id the server does not match with the replica's."""
    async with per_role_server(tmp_path, "remediator") as (_server, nc, admin):
        for node in NODES:
            await add_inventory(nc, admin, node, zone="z1", node_pool="p", cloud="alibaba", instance_id=f"i-{node}")
        escalation = StormEscalation(
            action_id="act-storm-zone-z1-stored",
            reason="storm in zone z1: 4 of 6 nodes unhealthy; disruptive actions stopped there until it recovers",
            cluster=CLUSTER,
            node="n1",
            diagnosis_id="diag-n1",
            by="replica-dead",
            at=datetime.now(tz=UTC).isoformat(),
        )
        entry = StormEntry(kind="zone", value="z1", revision=0, unhealthy=4, size=6)
        control = await nc.jetstream().key_value(f"{admin.bucket_prefix}-control")
        await control.create(storm_key("zone", "z1"), entry.value_with(escalation, recorded=False))
        remediator = await nats.connect(
            admin.url,
            user_credentials=str(tmp_path / "remediator.creds"),
            inbox_prefix=load_natsauth().inbox_prefix("remediator").encode(),
        )
        try:  # what the dead replica stored: the record, under the remediator's own role
            record = RemediationRecord(
                cluster=CLUSTER,
                node="n1",
                action_id=escalation.action_id,
                action="escalate",
                target="storm:zone:z1",
                phase="succeeded",
                reason=escalation.reason,
                actor="replica-dead",
                diagnosis_id="diag-n1",
            )
            subject = audit_subject(CLUSTER, "n1", prefix=admin.prefix)
            await publish_model(remediator.jetstream(), subject, record, msg_id=f"{record.id}:outside-the-window")
        finally:
            await remediator.close()
        proc, log = _remediator(admin, tmp_path, world, ecs, name="replica-2")
        try:

            async def marked() -> bool:
                assert proc.poll() is None, log.read_text()[-3000:]
                return (await _storm_keys(nc, admin))[storm_key("zone", "z1")].get("recorded") is True

            await wait_for(marked, timeout=BOUND_S, what="the storm key marked recorded")
            await asyncio.sleep(2.0)  # a second send would come with the next maintenance ticks
            sent = [r for r in await audit_records(nc, admin) if r.action_id == escalation.action_id]
        finally:
            if proc.poll() is None:
                proc.terminate()
                await asyncio.to_thread(proc.wait, 15)
        assert violations(tmp_path) == []
    assert [r.actor for r in sent] == ["replica-dead"]
