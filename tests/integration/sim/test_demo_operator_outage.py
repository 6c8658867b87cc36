"""The demo's operator (`--approve-replacements`) keeps following AUDIT through a server that does not answer.

A 50,000-node demo on two cores loads its nats-server so that a JetStream API request can miss nats-py's 5 s;
the operator's read of AUDIT then failed, its task ended, and no replacement of the run was approved. Here the
server is gone for a while (SIGKILL, the same port and store back later), which is what such a request sees:
no answer. The replace waiting for approval that comes after it is approved once.
"""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

from nodeheal.remediator.control import approval_key
from nodeheal.runtime.connect import connect
from nodeheal.runtime.provision import apply_topology
from nodeheal.schemas import RemediationRecord
from nodeheal.schemas.subjects import audit_subject
from nodeheal.sim.embedded import EmbeddedNats
from nodeheal.sim.rotation import DemoOperator
from tests.support.broker import unique_settings

CLUSTER = "c1"


async def test_operator_approves_after_the_server_came_back(tmp_path: Path) -> None:
    server = EmbeddedNats(store_dir=str(tmp_path / "store")).start()
    try:
        settings = unique_settings(server.url)
        nc = await connect(settings, name="pytest-operator", max_reconnect_attempts=-1)
        try:
            js = nc.jetstream()
            await apply_topology(js, settings.topology())
            control = await js.key_value(f"{settings.bucket_prefix}-control")
            server.kill()  # gone before the operator's first request: it cannot be answered
            operator = DemoOperator(
                js=js,
                control=control,
                stream=f"{settings.stream_prefix}AUDIT",
                subject=f"{settings.prefix}.audit.{CLUSTER}.*",
                since=datetime.now(tz=UTC) - timedelta(minutes=1),
            )
            task = asyncio.create_task(operator.run())
            deadline = asyncio.get_running_loop().time() + 30
            while operator.interruptions == 0:
                assert not task.done(), f"the operator stopped: {task.exception()!r}"
                assert asyncio.get_running_loop().time() < deadline, "the operator's read never failed"
                await asyncio.sleep(0.2)
            server.start()  # same port, same store
            record = RemediationRecord(
                cluster=CLUSTER,
                node="n7",
                action_id="act-replace-n7",
                action="replace",
                phase="awaiting_approval",
                reason="replace needs an operator: nodeheal approve act-replace-n7",
                actor="remediator-0",
            )
            await js.publish(audit_subject(CLUSTER, "n7", prefix=settings.prefix), record.to_json(), timeout=30)
            while not operator.approvals:
                assert not task.done(), f"the operator stopped: {task.exception()!r}"
                assert asyncio.get_running_loop().time() < deadline + 60, "the replace was never approved"
                await asyncio.sleep(0.2)
            await asyncio.sleep(1.0)  # a second approval would be written by now
            entry = await control.get(approval_key("act-replace-n7"))
            task.cancel()
        finally:
            await nc.close()
    finally:
        server.stop()
    assert [a["action_id"] for a in operator.approvals] == ["act-replace-n7"]
    assert entry.value is not None and json.loads(entry.value)["by"] == "demo-operator"
    assert entry.revision is not None
    assert operator.summary()["interruptions"] >= 1
