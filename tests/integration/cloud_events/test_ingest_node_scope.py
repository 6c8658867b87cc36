"""A node-local ingest (the DaemonSet pod the docs prescribe for AWS IMDS, Azure and GCE: one per node) takes on its
own node's events only. Before, it started like the central ingest: it read the whole CLOUD stream (30 days, every
node's events), kept every event the fleet had published under an instance id, and every `UNMAPPED_RECHECK_S`
looked each one up again and re-published it to its node: at 50,000 nodes, 50,000 full reads of CLOUD per
rollout and 50,000 copies of each remap. The fleet's history and the unmapped sweep are the central ingest's.

Each ingest runs as deployed, on a per-role server of the test's own: the node-local one with its node's own
credential (`ingest-node`) and inbox (`INBOX_PER_NODE`), the central one under the `ingest` role; the admin's
connection stands in for the central ingest's earlier publishes and the inventory watcher. No permission violation."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer

from nodeheal.cloud_events.ingest.app import RUNTIME, build_app
from nodeheal.cloud_events.ingest.settings import IngestSettings, MetadataPollerSettings
from nodeheal.cloud_events.ingest.sink import CloudEventSink, InventoryResolver
from nodeheal.cloud_events.normalize import NormalizeContext, TransitionLedger
from nodeheal.cloud_events.normalize import alibaba as alibaba_norm
from nodeheal.runtime.settings import NatsSettings
from nodeheal.schemas import NodeInventory
from nodeheal.schemas.inventory import instance_key
from nodeheal.sim.aws_imds import AwsImdsEmulator, AwsMaintenanceEvents
from nodeheal.sim.clock import ManualClock
from tests.integration.deploy.natsauth_loader import RoleServer, role_server, violations

pytestmark = pytest.mark.nats

DATA = Path(__file__).resolve().parents[2] / "data" / "cloud-events"
UNKNOWN = "i-bp1ecr********5go2go"  # the CMS sample's instance: not in the inventory when it is pushed
OWN = "i-0node7"


def _settings(nats: NatsSettings, **overrides: Any) -> IngestSettings:
    values: dict[str, Any] = {
        "nats": nats,
        "cluster": "prod-1",
        "auth_token": "t0ken-for-tests",
        "inventory_cache_ttl_s": 0,
        "unmapped_recheck_s": 60,
    }
    return IngestSettings(**(values | overrides))


async def test_a_node_local_ingest_seeds_its_own_node_and_leaves_the_fleets_unmapped_events_alone(
    tmp_path: Path,
) -> None:
    async with role_server(tmp_path, "ingest-node", node=("prod-1", "node-7")) as deployed:
        await _node_local_ingest(deployed)
    assert violations(deployed.dir) == []


async def _node_local_ingest(deployed: RoleServer) -> None:
    js, topology_ready = deployed.nc.jetstream(), deployed.settings
    kv = await js.key_value(f"{topology_ready.bucket_prefix}-inventory")
    await kv.put(instance_key(OWN), NodeInventory(cluster="prod-1", node="node-7", instance_id=OWN).to_json())
    central = CloudEventSink(
        js=js,
        prefix=topology_ready.prefix,
        cluster="prod-1",
        service="cloud-events-ingest",
        inventory=InventoryResolver(kv, ttl_s=0),
        ledger=TransitionLedger(),
    )
    ctx = NormalizeContext(observed_at=datetime.now(tz=UTC), cluster="prod-1")
    payload = json.loads((DATA / "alibaba-cms-systemmaintenance-reboot-scheduled-1.json").read_text())
    # the central ingest publishes a CMS notice for an instance the inventory does not know yet…
    (unmapped,) = await central.submit(alibaba_norm.normalize_cms(payload, ctx))
    assert not unmapped.node_mapped
    # …and one for node-7's own instance
    own = dict(payload)
    own["content"] = {**payload["content"], "eventId": "e-own-node7", "instanceId": OWN}
    (mapped,) = await central.submit(alibaba_norm.normalize_cms(own, ctx))
    assert (mapped.node, mapped.node_mapped) == ("node-7", True)

    aws = AwsMaintenanceEvents(instance_id=OWN, clock=ManualClock())
    async with AwsImdsEmulator(aws) as imds:
        settings = _settings(
            deployed.role,
            aws=MetadataPollerSettings(enabled=True, endpoint=imds.url, node="node-7"),
            inbox_per_node=True,
        )
        assert settings.node_scoped()  # auto: a metadata poller on, Alibaba's off
        app = build_app(settings, start_pollers=False)
        async with TestClient(TestServer(app)):
            runtime = app[RUNTIME]
            sink = runtime.sink
            assert sink is not None
            # its ledger holds node-7's event, not the fleet's
            assert runtime.seeded == 1 and len(sink.ledger) == 1
            assert sink.ledger.open_events("alibaba") == ["e-own-node7"]
            assert not sink.pending_unmapped
            assert "unmapped-recheck" not in {t.get_name() for t in runtime.tasks}

            # the inventory learns the unknown instance (node-3's): the node-7 pod has nothing to send it
            await kv.put(
                instance_key(UNKNOWN), NodeInventory(cluster="prod-1", node="node-3", instance_id=UNKNOWN).to_json()
            )
            assert await sink.remap_pending() == 0
    stream = f"{topology_ready.stream_prefix}CLOUD"
    subjects = [
        (await js.get_msg(stream, seq)).subject for seq in range(1, (await js.stream_info(stream)).state.last_seq + 1)
    ]
    assert not [s for s in subjects if s.endswith(".node-3")]


async def test_the_central_ingest_still_seeds_the_fleet_and_sweeps(tmp_path: Path) -> None:
    """The fleet scope (no metadata poller, or `SCOPE=fleet`) is the central ingest as before: the whole CLOUD
    stream is seeded and the events published unmapped are kept for the sweep."""
    async with role_server(tmp_path, "ingest") as deployed:
        await _central_ingest(deployed)
    assert violations(deployed.dir) == []


async def _central_ingest(deployed: RoleServer) -> None:
    js, topology_ready = deployed.nc.jetstream(), deployed.settings
    kv = await js.key_value(f"{topology_ready.bucket_prefix}-inventory")
    central = CloudEventSink(
        js=js,
        prefix=topology_ready.prefix,
        cluster="prod-1",
        service="cloud-events-ingest",
        inventory=InventoryResolver(kv, ttl_s=0),
        ledger=TransitionLedger(),
    )
    ctx = NormalizeContext(observed_at=datetime.now(tz=UTC), cluster="prod-1")
    payload = json.loads((DATA / "alibaba-cms-systemmaintenance-reboot-scheduled-1.json").read_text())
    await central.submit(alibaba_norm.normalize_cms(payload, ctx))
    settings = _settings(deployed.role)
    assert not settings.node_scoped()
    app = build_app(settings, start_pollers=False)
    async with TestClient(TestServer(app)):
        runtime = app[RUNTIME]
        assert runtime.sink is not None
        assert len(runtime.sink.ledger) == 1 and len(runtime.sink.pending_unmapped) == 1
        assert "unmapped-recheck" in {t.get_name() for t in runtime.tasks}
        await kv.put(
            instance_key(UNKNOWN), NodeInventory(cluster="prod-1", node="node-3", instance_id=UNKNOWN).to_json()
        )
        assert await runtime.sink.remap_pending() == 1
