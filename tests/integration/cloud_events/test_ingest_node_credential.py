"""The node-local ingest (deploy/components/ingest-node-*: a DaemonSet pod on every node) runs with its node's own
NATS credential (`natsauth.py mint-ingest-node`), on a server with the deployed per-role authorization: it seeds
its ledger from its own node's CLOUD subject and publishes what its node's metadata server says, and it cannot
speak for another node — a forged host event for node-3 from node-7's credential is refused by the server, as is
reading node-3's events. Before, the only credential for it was the fleet-wide `ingest` one: a compromised node
could publish a Redeploy for any node, and the remediator would drain it."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from pathlib import Path

import nats
import nats.errors
import nats.js.errors
import pytest
from aiohttp.test_utils import TestClient, TestServer
from nats.js.api import ConsumerConfig

from nodeheal.cloud_events.ingest.app import RUNTIME, build_app
from nodeheal.cloud_events.ingest.settings import IngestSettings, MetadataPollerSettings
from nodeheal.runtime.jetstream import publish_model
from nodeheal.runtime.settings import NatsSettings
from nodeheal.schemas.cloud import CloudSystemEvent
from nodeheal.schemas.subjects import cloud_subject
from nodeheal.sim.aws_imds import AwsImdsEmulator, AwsMaintenanceEvents
from nodeheal.sim.clock import ManualClock
from tests.integration.deploy.natsauth_loader import load_natsauth, mint_node_user, per_role_server, violations

pytestmark = pytest.mark.nats

CLUSTER = "prod-1"
REFUSED = (TimeoutError, nats.errors.TimeoutError, nats.errors.NoRespondersError)
"""What a request the server refuses for permissions ends in at the client: no answer."""


def _event(node: str, event_id: str) -> CloudSystemEvent:
    now = datetime.now(tz=UTC)
    return CloudSystemEvent(
        cloud="aws",
        cluster=CLUSTER,
        node=node,
        instance_id=f"i-{node}",
        provider_event_id=event_id,
        provider_event_type="system-reboot",
        channel="imds",
        action="reboot",
        cause="planned_maintenance",
        phase="scheduled",
        not_before=now + timedelta(days=3),
        observed_at=now,
        time=now,
        node_mapped=True,
    )


async def _stored(js: nats.js.JetStreamContext, node: str) -> list[CloudSystemEvent]:
    sub = await js.pull_subscribe(
        cloud_subject(CLUSTER, node), stream="CLOUD", config=ConsumerConfig(inactive_threshold=10.0)
    )
    try:
        msgs = await sub.fetch(100, timeout=1.0)
    except TimeoutError:
        return []
    finally:
        await sub.unsubscribe()
    return [CloudSystemEvent.model_validate_json(m.data) for m in msgs]


async def test_a_node_local_ingest_speaks_for_its_own_node_only(tmp_path: Path) -> None:
    async with per_role_server(tmp_path) as (server, admin_nc, _admin):
        admin = admin_nc.jetstream()
        # what the central ingest stored earlier: one open event of node-7's, one of node-3's
        await publish_model(admin, cloud_subject(CLUSTER, "node-7"), _event("node-7", "e-own"), msg_id="e-own")
        await publish_model(admin, cloud_subject(CLUSTER, "node-3"), _event("node-3", "e-other"), msg_id="e-other")
        creds = mint_node_user(tmp_path, "ingest-node", CLUSTER, "node-7")
        as_node7 = NatsSettings(
            url=server.url, creds_file=str(creds), inbox_prefix=load_natsauth().inbox_prefix("ingest-node")
        )

        aws = AwsMaintenanceEvents(instance_id="i-node-7", clock=ManualClock(datetime.now(tz=UTC)))
        scheduled = aws.add("system-reboot", not_before=datetime.now(tz=UTC) + timedelta(days=2))
        async with AwsImdsEmulator(aws) as imds:
            settings = IngestSettings(
                nats=as_node7,
                cluster=CLUSTER,
                service_name="cloud-events-ingest-node",
                auth_token="unused",
                http_sources=[],
                inbox_per_node=True,
                scope="node",
                aws=MetadataPollerSettings(enabled=True, endpoint=imds.url, node="node-7", interval_s=0.2),
            )
            app = build_app(settings, start_pollers=True)
            async with TestClient(TestServer(app)):
                runtime = app[RUNTIME]
                assert runtime.sink is not None
                assert runtime.sink.ledger.open_events("aws") == ["e-own"]  # its node's, seeded under its credential
                for _ in range(100):
                    if any(e.provider_event_id == scheduled.event_id for e in await _stored(admin, "node-7")):
                        break
                    await asyncio.sleep(0.1)

        published = [e for e in await _stored(admin, "node-7") if e.provider_event_id == scheduled.event_id]
        assert [(e.node, e.phase, e.action) for e in published] == [("node-7", "scheduled", "reboot")]
        assert violations(tmp_path) == []

        # node-7's credential used to forge a host event for node-3, or to read node-3's: refused by the server
        rogue = await nats.connect(
            server.url, user_credentials=str(creds), inbox_prefix=f"_INBOX.ingest-node.{CLUSTER}.node-7"
        )
        try:
            js = rogue.jetstream(timeout=2.0)
            with pytest.raises(REFUSED):  # the server drops it: nothing acknowledges it
                await publish_model(js, cloud_subject(CLUSTER, "node-3"), _event("node-3", "forged"), msg_id="forged")
            with pytest.raises(REFUSED):  # refused the same way
                await js.add_consumer(
                    "CLOUD", config=ConsumerConfig(name="peek", filter_subject=cloud_subject(CLUSTER, "node-3"))
                )
        finally:
            await rogue.close()
        assert [e.provider_event_id for e in await _stored(admin, "node-3")] == ["e-other"]
        refused = violations(tmp_path)
        assert any(f"nodeheal.cloud.{CLUSTER}.node-3" in line for line in refused), refused
