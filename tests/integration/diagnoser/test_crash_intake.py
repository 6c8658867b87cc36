"""The diagnoser's CRASHES consumer on a real nats-server with the deployed per-role authorization, the diagnoser
under its role's credential: crash reports made of real kernel bytes (tests/data/kernel) are classified and
counted once per boot in the bucket's fleet record; a malformed report goes to the DLQ with the reason and its
raw bytes and the consumer keeps going; no permission violation is logged."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from nats.aio.client import Client

from nodeheal.diagnoser.handlers import DiagnoserRuntime
from nodeheal.diagnoser.settings import DiagnoserSettings
from nodeheal.runtime.jetstream import publish_model
from nodeheal.runtime.settings import NatsSettings
from nodeheal.schemas.crash import CrashReport
from nodeheal.schemas.dlq import DeadLetter
from nodeheal.schemas.subjects import crash_subject, dlq_subject
from tests.integration.deploy.natsauth_loader import RoleServer, admin_stands_in, violations
from tests.integration.diagnoser.crashes import bucket_records, pstore_lines, pstore_report, put_inventory
from tests.unit.diagnoser.scenarios import CLUSTER

pytestmark = pytest.mark.nats

nc, topology_ready = admin_stands_in()  # the test stands in for the agents, as admin

MODELS = {"n1": "ecs.ebmg7.32xlarge", "n2": "ecs.ebmc7.32xlarge"}


def report(node: str, boot: str, case: str) -> CrashReport:
    lines = pstore_lines(case)
    return pstore_report(node, boot, lines[1:], header=lines[0])


@pytest.fixture
async def service(deployed: RoleServer) -> AsyncIterator[DiagnoserRuntime]:
    await put_inventory(deployed.nc, deployed.settings, MODELS)
    runtime = DiagnoserRuntime(
        settings=DiagnoserSettings(nats=deployed.role, cluster=CLUSTER, fetch_timeout_s=0.3),
        nc=await deployed.role_nc("diagnoser"),
    )
    await runtime.start()
    yield runtime
    await runtime.stop()
    assert violations(deployed.dir) == []


async def test_crash_reports_are_bucketed_once_per_boot_and_bad_ones_dead_lettered(
    service: DiagnoserRuntime, topology_ready: NatsSettings, nc: Client
) -> None:
    js = nc.jetstream()
    prefix = topology_ready.prefix
    garbage = b'{"schema": "nodeheal.crash/v1", "node": "n1"}'
    await js.publish(crash_subject(CLUSTER, "n1", prefix=prefix), garbage)
    sent = [
        report("n1", "boot-1", "softlockup"),
        report("n2", "boot-7", "softlockup"),
        report("n3", "boot-3", "hung"),
    ]
    for item in sent:
        subject = crash_subject(item.cluster, item.node, prefix=prefix)
        await publish_model(js, subject, item, msg_id=f"m-{item.boot_id}")
    # the same boot's report again under another message id (e.g. after the duplicate window): counted once
    again = report("n1", "boot-1", "softlockup")
    await publish_model(js, crash_subject(CLUSTER, "n1", prefix=prefix), again, msg_id="m-boot-1-late")

    records = await bucket_records(
        nc,
        topology_ready,
        lambda records: sum(r.get("count", 0) for r in records.values()) >= 3,
        what="fewer than 3 crashes counted",
    )
    by_cls = {r["cls"]: r for r in records.values()}
    assert set(by_cls) == {"soft_lockup", "hung_task"}
    assert (by_cls["soft_lockup"]["count"], by_cls["soft_lockup"]["node_count"]) == (2, 2)
    assert by_cls["soft_lockup"]["rip_func"] == "nodeheal_spin_forever"
    assert by_cls["hung_task"]["count"] == 1
    assert by_cls["soft_lockup"]["kernels"] == ["6.1.0-57-cloud-amd64"]
    assert sorted(by_cls["soft_lockup"]["machine_models"]) == sorted(MODELS.values())  # from the inventory

    dlq_stream = topology_ready.topology().stream(f"{topology_ready.stream_prefix}DLQ").name
    msg = await js.get_last_msg(dlq_stream, dlq_subject("diagnoser", prefix=prefix))
    letter = DeadLetter.model_validate_json(msg.data or b"")
    assert "not a valid CrashReport" in letter.reason
    assert letter.raw == garbage
