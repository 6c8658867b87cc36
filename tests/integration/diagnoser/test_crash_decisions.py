"""The crash bucket decides the episode, through the real diagnoser on a real nats-server.

A node reboots unexpectedly (the detector's `unexpected_reboot` anomaly) and its agent sends the crash
report of the previous boot (real kernel bytes: Debian 6.1 crashes from tests/data/kernel, a fatal
machine check from the knowledge-base corpus). What the user sees on DIAGNOSES:

- a hardware class → the machine is taken out: cordon, drain, retire, replace; the episode stays
  open when the machine is back, until our retirement is in the audit trail;
- a kernel bucket already seen on another node → reboot, and the bucket's fleet record grows;
- a new kernel bucket → reboot, and exactly one `new_crash_bucket` notice for the kernel team, also
  after the diagnoser was restarted and the bucket crashed again elsewhere.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import prometheus_client
import pytest
from nats.aio.client import Client

from nodeheal.diagnoser.handlers import DiagnoserRuntime
from nodeheal.diagnoser.settings import DiagnoserSettings
from nodeheal.runtime.connect import connect
from nodeheal.runtime.jetstream import publish_model
from nodeheal.runtime.settings import NatsSettings
from nodeheal.schemas.audit import RemediationRecord
from nodeheal.schemas.diagnosis import Diagnosis
from nodeheal.schemas.finding import FleetFinding
from nodeheal.schemas.subjects import audit_subject, crash_subject, diagnosis_subject, finding_subject
from tests.integration.deploy.natsauth_loader import RoleServer, mint_role, role_nats, violations
from tests.integration.diagnoser.crashes import (
    DATA,
    BucketRecords,
    bucket_records,
    pstore_lines,
    pstore_report,
    put_inventory,
)
from tests.integration.diagnoser.test_diagnoser_service import actions, read_stream, send, wait_for_diagnosis
from tests.unit.diagnoser.scenarios import CLUSTER, anomaly

pytestmark = pytest.mark.nats

MODELS = {"n1": "ecs.ebmg7.32xlarge", "n2": "ecs.ebmc7.32xlarge", "n3": "ecs.ebmg7.32xlarge"}


def now() -> datetime:
    return datetime.now(tz=UTC)


def corpus_lines(sample_id: str) -> list[str]:
    for text in (DATA / "kb" / "corpus.jsonl").read_text().splitlines():
        row = json.loads(text)
        if row["id"] == sample_id:
            return [str(x) for x in row["lines"]]
    raise KeyError(sample_id)


async def crashed(
    nc: Client, settings: NatsSettings, node: str, boot: str, lines: list[str], *, header: str
) -> datetime:
    """What a crashed node sends on its first probe after the reboot: the detector's unexpected_reboot
    and the agent's crash report. Returns the anomaly's onset."""
    t = now()
    await send(nc, settings, anomaly(node, "unexpected_reboot", at=t))
    report = pstore_report(node, boot, lines, header=header, at=t)
    subject = crash_subject(CLUSTER, node, prefix=settings.prefix)
    await publish_model(nc.jetstream(), subject, report, msg_id=f"cr-{node}-{boot}")
    return t


async def runtime_for(deployed: RoleServer) -> tuple[DiagnoserRuntime, prometheus_client.CollectorRegistry]:
    """One diagnoser process: under its role's credential, on a connection of its own."""
    registry = prometheus_client.CollectorRegistry()
    config = DiagnoserSettings(nats=deployed.role, cluster=CLUSTER, tick_s=0.1, fetch_timeout_s=0.3)
    return DiagnoserRuntime(settings=config, nc=await deployed.role_nc("diagnoser"), registry=registry), registry


@pytest.fixture
def nc(deployed: RoleServer) -> Client:
    """The admin's connection: the test stands in for the detector, the agents and the remediator."""
    return deployed.nc


@pytest.fixture
async def settings(deployed: RoleServer) -> NatsSettings:
    await put_inventory(deployed.nc, deployed.settings, MODELS)
    return deployed.settings


@pytest.fixture
async def service(deployed: RoleServer, settings: NatsSettings) -> AsyncIterator[DiagnoserRuntime]:
    runtime, _ = await runtime_for(deployed)
    await runtime.start()
    yield runtime
    await runtime.stop()


async def bucket_record(nc: Client, settings: NatsSettings, cls: str, *, count: int) -> dict[str, Any]:
    def found(records: BucketRecords) -> list[dict[str, Any]]:
        return [r for r in records.values() if r.get("cls") == cls and r.get("count", 0) >= count]

    records = await bucket_records(
        nc, settings, lambda records: bool(found(records)), what=f"no {cls} bucket with {count} crashes"
    )
    return found(records)[0]


async def notices(nc: Client, settings: NatsSettings) -> list[FleetFinding]:
    stream = f"{settings.stream_prefix}DIAGNOSES"
    found = [
        FleetFinding.model_validate_json(b)
        for b in await read_stream(nc, stream, finding_subject(prefix=settings.prefix))
    ]
    return [f for f in found if f.kind == "new_crash_bucket"]


def crash_evidence(d: Diagnosis) -> Any:
    return next(e for e in d.evidence if e.kind == "crash_report")


async def test_a_fatal_machine_check_takes_the_machine_out(
    deployed: RoleServer, nc: Client, settings: NatsSettings
) -> None:
    running: list[DiagnoserRuntime] = []
    try:
        await _fatal_machine_check(running, deployed, nc, settings)
    finally:
        for service in running:
            await service.stop()
    assert violations(deployed.dir) == []


async def _fatal_machine_check(
    running: list[DiagnoserRuntime], deployed: RoleServer, nc: Client, settings: NatsSettings
) -> None:
    service, _ = await runtime_for(deployed)
    running.append(service)
    await service.start()
    mce = [f"<0>[  84.97717{i}] {line}" for i, line in enumerate(corpus_lines("kb-151"))]
    onset = await crashed(nc, settings, "n1", "boot-mce", mce, header="Panic#1 Part1")

    d = await wait_for_diagnosis(nc, settings, "n1", lambda d: d.category == "hardware")
    assert d.cause == "mce_fatal_panic"
    assert actions(d) == ["cordon", "drain", "retire", "replace", "escalate"]
    assert "reboot" not in actions(d)
    assert crash_evidence(d).value == "hardware"
    # the machine's fault is not the kernel team's: no notice
    await asyncio.sleep(0.5)
    assert await notices(nc, settings) == []

    # the machine is back and its reboot anomaly clears: the episode stays open (it is not fixed) ...
    await send(nc, settings, anomaly("n1", "unexpected_reboot", at=now(), status="resolved", onset=onset))
    await asyncio.sleep(1.5)
    stream = f"{settings.stream_prefix}DIAGNOSES"
    said = [
        Diagnosis.model_validate_json(b)
        for b in await read_stream(nc, stream, diagnosis_subject(CLUSTER, "n1", prefix=settings.prefix))
    ]
    assert said and not any(x.resolved for x in said)
    # ... also for a new diagnoser process, which neither ends it nor opens another one ...
    await running.pop().stop()
    service, _ = await runtime_for(deployed)
    running.append(service)
    await service.start()
    await asyncio.sleep(1.5)
    again = [
        Diagnosis.model_validate_json(b)
        for b in await read_stream(nc, stream, diagnosis_subject(CLUSTER, "n1", prefix=settings.prefix))
    ]
    assert [x.id for x in again] == [x.id for x in said]
    # ... until the remediator retired it
    retired = RemediationRecord(
        cluster=CLUSTER,
        node="n1",
        action_id="act-retire-n1",
        action="retire",
        phase="succeeded",
        reason="machine rotation",
        actor="remediator-0",
        diagnosis_id=d.id,
        episode_id=d.episode,
    )
    # audit records are the remediator's to write (the admin's credential is denied them): as the remediator
    mint_role(deployed.dir, "remediator")
    remediator = await connect(role_nats(deployed.dir, deployed.url, "remediator"), name="remediator")
    try:
        await publish_model(
            remediator.jetstream(), audit_subject(CLUSTER, "n1", prefix=settings.prefix), retired, msg_id=retired.id
        )
    finally:
        await remediator.close()
    done = await wait_for_diagnosis(nc, settings, "n1", lambda x: x.resolved)
    assert done.anomaly_ids == d.anomaly_ids


async def test_a_known_bucket_reboots_and_its_fleet_record_grows(
    service: DiagnoserRuntime, deployed: RoleServer, nc: Client, settings: NatsSettings
) -> None:
    lines = pstore_lines("softlockup")
    await crashed(nc, settings, "n1", "boot-a", lines[1:], header=lines[0])
    first = await wait_for_diagnosis(nc, settings, "n1", lambda d: d.cause == "soft_lockup")
    assert crash_evidence(first).value == "new_bucket"
    assert "reboot" in actions(first) and "retire" not in actions(first)

    await crashed(nc, settings, "n2", "boot-b", lines[1:], header=lines[0])
    second = await wait_for_diagnosis(nc, settings, "n2", lambda d: d.cause == "soft_lockup")
    evidence = crash_evidence(second)
    assert evidence.value == "known_bucket"
    assert (evidence.details["count"], evidence.details["node_count"]) == (2, 2)
    assert actions(second) == ["cordon", "drain", "reboot", "redeploy", "escalate"]
    assert second.category == "kernel"
    assert second.crash_signature is not None and first.crash_signature is not None
    assert second.crash_signature.bucket == first.crash_signature.bucket

    record = await bucket_record(nc, settings, "soft_lockup", count=2)
    assert (record["count"], record["node_count"]) == (2, 2)
    assert sorted(record["machine_models"]) == sorted({MODELS["n1"], MODELS["n2"]})
    assert violations(deployed.dir) == []


async def test_a_new_bucket_is_told_to_the_kernel_team_once_across_a_restart(
    deployed: RoleServer, settings: NatsSettings, nc: Client
) -> None:
    lines = pstore_lines("hung")
    runtime, registry = await runtime_for(deployed)
    await runtime.start()
    try:
        await crashed(nc, settings, "n1", "boot-1", lines[1:], header=lines[0])
        d = await wait_for_diagnosis(nc, settings, "n1", lambda d: d.cause == "hung_task")
        assert crash_evidence(d).value == "new_bucket" and "reboot" in actions(d)
        for _ in range(50):
            if await notices(nc, settings):
                break
            await asyncio.sleep(0.1)
    finally:
        await runtime.stop()
    told = await notices(nc, settings)
    assert len(told) == 1
    notice = told[0]
    assert d.crash_signature is not None and notice.signature_bucket == d.crash_signature.bucket
    assert (notice.group_events, notice.group_nodes) == (1, 1)
    assert notice.kernels == ("6.1.0-57-cloud-amd64",) and notice.machine_models == (MODELS["n1"],)
    assert notice.first_seen is not None and notice.last_seen is not None

    # a new process: the bucket crashes again on two other nodes; the kernel team is not told again
    again, registry = await runtime_for(deployed)
    await again.start()
    try:
        await crashed(nc, settings, "n2", "boot-2", lines[1:], header=lines[0])
        await crashed(nc, settings, "n3", "boot-3", lines[1:], header=lines[0])
        for node in ("n2", "n3"):
            later = await wait_for_diagnosis(nc, settings, node, lambda d: d.cause == "hung_task")
            assert crash_evidence(later).value == "known_bucket"
        record = await bucket_record(nc, settings, "hung_task", count=3)
        assert record["noticed_at"] and record["notice_id"] == notice.id
    finally:
        await again.stop()
    # nothing was even sent (the stream's duplicate window would have hidden a second send)
    sent = registry.get_sample_value("nodeheal_diagnoser_findings_total", {"kind": "new_crash_bucket"})
    assert not sent
    assert len(await notices(nc, settings)) == 1
    assert violations(deployed.dir) == []
