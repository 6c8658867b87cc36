"""What the ingest's readiness means: the pod can take a pushed event (NATS connected, ledger seeded). A poller's
failed round is not part of it: it is said on `/status`, in a metric and a log line. Before, one round the Alibaba
API throttled (`Throttling.User`) made `/readyz` 503 until a later round succeeded; every replica polls the same
account, so all of them left the Service at once and CloudMonitor's webhook (3 tries, 5 s apart) was dropped.

The ingest runs as deployed, under the `ingest` role on a per-role server of the test's own (no permission violation);
the admin's connection stands in for the inventory watcher and reads CLOUD."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import prometheus_client
import pytest
from aiohttp.test_utils import TestClient, TestServer
from nats.js.client import JetStreamContext

from nodeheal.cloud_events.ingest.app import RUNTIME, build_app
from nodeheal.cloud_events.ingest.settings import AlibabaPollerSettings, IngestSettings
from nodeheal.runtime.settings import NatsSettings
from nodeheal.schemas import CloudSystemEvent, NodeInventory
from nodeheal.schemas.inventory import instance_key
from nodeheal.schemas.subjects import cloud_subject
from nodeheal.sim.clock import ManualClock
from nodeheal.sim.ecs_api import EcsEmulator, EcsWorld
from tests.integration.deploy.natsauth_loader import RoleServer, admin_stands_in, deployed_as

pytestmark = pytest.mark.nats

deployed = deployed_as("ingest")
nc, topology_ready = admin_stands_in()

DATA = Path(__file__).resolve().parents[2] / "data" / "cloud-events"
TOKEN = "t0ken-for-tests"
REBOOT = (DATA / "alibaba-cms-systemmaintenance-reboot-scheduled-1.json").read_bytes()
INSTANCE = "i-bp1ecr********5go2go"


async def test_a_throttled_poll_round_leaves_the_pod_ready_and_its_webhook_open(
    js: JetStreamContext, topology_ready: NatsSettings, deployed: RoleServer
) -> None:
    kv = await js.key_value(f"{topology_ready.bucket_prefix}-inventory")
    await kv.put(instance_key(INSTANCE), NodeInventory(cluster="prod-1", node="node-3", instance_id=INSTANCE).to_json())
    world = EcsWorld(clock=ManualClock())
    world.add_instance("i-node1", region_id="cn-hangzhou")
    world.history_page_refusals[1] = 50  # the API's flow control refuses page 1 past the round's retries
    async with EcsEmulator(world) as emu:
        alibaba = AlibabaPollerSettings(
            enabled=True,
            endpoint=emu.endpoint,
            protocol="http",
            region_ids=["cn-hangzhou"],
            access_key_id="sim-access-key-id",
            access_key_secret="sim-access-key-secret",
            throttle_retries=1,
            throttle_backoff_s=0.01,
        )
        values: dict[str, Any] = {
            "nats": deployed.role,
            "cluster": "prod-1",
            "auth_token": TOKEN,
            "inventory_cache_ttl_s": 0,
            "alibaba": alibaba,
        }
        app = build_app(IngestSettings(**values), start_pollers=False)
        async with TestClient(TestServer(app)) as client:
            (poller,) = app[RUNTIME].pollers
            await poller.round()  # a round as the poller's loop runs it
            assert poller.last_error is not None and "Throttling.User" in poller.last_error

            ready = await client.get("/readyz")
            assert (ready.status, await ready.text()) == (200, "ready")
            status = await (await client.get("/status")).json()
            assert status["ready"] is True
            (said,) = status["pollers"]
            assert said["poller"] == "alibaba" and said["failing"] is True and said["last_ok_at"] is None
            assert "Throttling.User" in said["last_error"]
            failing = prometheus_client.REGISTRY.get_sample_value(
                "nodeheal_ingest_poller_failing", {"poller": "alibaba"}
            )
            assert failing == 1

            # the push side is open: CloudMonitor's webhook is accepted and lands on CLOUD
            pushed = await client.post(
                "/v1/events/alibaba-cms",
                data=REBOOT,
                headers={"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"},
            )
            assert pushed.status == 200, await pushed.text()
            subject = cloud_subject("prod-1", "node-3", prefix=topology_ready.prefix)
            stored = CloudSystemEvent.model_validate_json(
                (await js.get_last_msg(f"{topology_ready.stream_prefix}CLOUD", subject)).data
            )
            assert (stored.provider_event_id, stored.phase, stored.node) == (
                "e-bp11trd********pqum2",
                "scheduled",
                "node-3",
            )
