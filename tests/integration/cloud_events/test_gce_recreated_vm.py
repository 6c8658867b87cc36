"""A GCE VM recreated under its node's name (spot VMs with `automaticRestart=false` terminated for maintenance,
GKE auto-repair) gets a new numeric `instance/id`: the maintenance episode its predecessor left open on the node is
closed by the new VM's poller (docs/cloud-events.md, GCE), so the recreated, healthy node is not drained for it.
The pollers run against the GCE metadata emulator and publish to a real CLOUD stream; the end-to-end test runs the
real remediator service and counts side effects at the Kubernetes emulator.

As deployed, on a per-role server of the test's own: each poller publishes, and a new pod seeds its ledger from its
node's CLOUD subject only, under its node's own `ingest-node` credential (so the new VM's pod finds the old VM's
episode where the deployed one looks for it); the remediator runs under its role. The admin's connection stands in
for the agents' probes and the inventory and reads CLOUD. No permission violation."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from nats.aio.client import Client
from nats.js.client import JetStreamContext

from nodeheal.cloud_events.ingest.pollers import GceMaintenancePoller
from nodeheal.cloud_events.ingest.settings import GcePollerSettings
from nodeheal.cloud_events.ingest.sink import CloudEventSink, InventoryResolver, seed_ledger
from nodeheal.cloud_events.normalize import TransitionLedger
from nodeheal.remediator import planner
from nodeheal.remediator.views import FleetView
from nodeheal.runtime.settings import NatsSettings
from nodeheal.schemas import CloudSystemEvent
from nodeheal.schemas.inventory import NodeInventory
from nodeheal.schemas.subjects import cloud_subject
from nodeheal.sim.gce_metadata import GceMetadata, GceMetadataEmulator
from nodeheal.sim.kube import KubeWorld
from tests.integration.deploy.natsauth_loader import node_client, per_role_server
from tests.integration.remediator.harness import (
    CLUSTER,
    Deployed,
    Probes,
    add_inventory,
    make_settings,
    start_service,
    wait_for,
)

pytestmark = pytest.mark.nats

TERMINATE = "TERMINATE_ON_HOST_MAINTENANCE"


@pytest.fixture
async def deployed(tmp_path: Path) -> AsyncIterator[Deployed]:
    """A nats-server of the test's own with the deployed per-role authorization and the topology applied; after the
    test, no permission violation in its log."""
    directory = tmp_path / "nats"
    directory.mkdir()
    async with per_role_server(directory, "remediator") as (server, nc, admin):
        d = Deployed(directory, server.url, nc, admin)
        yield d
    assert d.violations() == []


@pytest.fixture
def nc(deployed: Deployed) -> Client:
    """The admin's connection: it stands in for the agents and the inventory, and reads CLOUD."""
    return deployed.nc


@pytest.fixture
def topology_ready(deployed: Deployed) -> NatsSettings:
    return deployed.admin


def _sink(js: JetStreamContext, nats: NatsSettings, cluster: str, ledger: TransitionLedger) -> CloudEventSink:
    return CloudEventSink(
        js=js,
        prefix=nats.prefix,
        cluster=cluster,
        service="cloud-events-ingest",
        inventory=InventoryResolver(None, ttl_s=0),
        ledger=ledger,
    )


async def _stored(js: JetStreamContext, nats: NatsSettings) -> list[CloudSystemEvent]:
    stream = f"{nats.stream_prefix}CLOUD"
    info = await js.stream_info(stream)
    return [
        CloudSystemEvent.model_validate_json((await js.get_msg(stream, seq)).data)
        for seq in range(info.state.first_seq, info.state.last_seq + 1)
    ]


async def _poll(
    deployed: Deployed,
    nats: NatsSettings,
    *,
    cluster: str,
    node: str,
    instance_id: str,
    value: str,
    clock: Callable[[], datetime],
    ledger: TransitionLedger,
    polls: int = 1,
) -> list[CloudSystemEvent]:
    """One pod of the node's GCE poller on the VM `instance_id` (the metadata server answers `value`), under the
    node's own `ingest-node` credential."""
    metadata = GceMetadata(instance_name=node, instance_id=instance_id)
    metadata.set_maintenance_event(value)
    out: list[CloudSystemEvent] = []
    async with (
        node_client(deployed.directory, deployed.url, "ingest-node", cluster, node) as client,
        GceMetadataEmulator(metadata) as gce,
    ):
        poller = GceMaintenancePoller(
            sink=_sink(client.jetstream(), nats, cluster, ledger),
            cluster=cluster,
            settings=GcePollerSettings(enabled=True, endpoint=gce.url, node=node),
            clock=clock,
        )
        try:
            for _ in range(polls):
                out += await poller.poll_once()
        finally:
            await poller.close()
    return out


async def _seeded(deployed: Deployed, nats: NatsSettings, cluster: str, node: str) -> TransitionLedger:
    """The ledger of a restarted pod (or of the new VM's pod) of the node, rebuilt as the node-local ingest rebuilds
    it: its node's CLOUD subject, under its node's credential."""
    ledger = TransitionLedger()
    async with node_client(deployed.directory, deployed.url, "ingest-node", cluster, node) as client:
        await seed_ledger(
            client.jetstream(),
            stream=f"{nats.stream_prefix}CLOUD",
            prefix=nats.prefix,
            ledger=ledger,
            lookback=timedelta(days=7),
            subjects=[cloud_subject(cluster, node, prefix=nats.prefix)],
        )
    return ledger


async def test_the_open_episode_of_a_recreated_vm_is_closed_by_the_new_vms_poller(
    js: JetStreamContext, topology_ready: NatsSettings, deployed: Deployed
) -> None:
    """VM 111 of node gke-a-1 is told TERMINATE_ON_HOST_MAINTENANCE and is gone; the instance group recreates it
    under the same name as VM 222 (maintenance-event NONE). Its poller closes 111's episode (`completed`, saying
    the VM was recreated); before, the episode stayed `in_progress` for good, a pending host event of the new VM.
    Another node's open episode is left alone, and the new VM's own later maintenance is its own episode."""
    now = [datetime(2026, 4, 10, 12, 0, 0, tzinfo=UTC)]
    old = await _poll(
        deployed, topology_ready, cluster="prod-1", node="gke-a-1", instance_id="111", value=TERMINATE,
        clock=lambda: now[0], ledger=TransitionLedger(),
    )  # fmt: skip
    other = await _poll(
        deployed, topology_ready, cluster="prod-1", node="gke-a-2", instance_id="555", value=TERMINATE,
        clock=lambda: now[0], ledger=TransitionLedger(),
    )  # fmt: skip
    assert [e.phase for e in old + other] == ["in_progress", "in_progress"]

    now[0] += timedelta(minutes=5)
    ledger = await _seeded(deployed, topology_ready, "prod-1", "gke-a-1")
    closed = await _poll(
        deployed, topology_ready, cluster="prod-1", node="gke-a-1", instance_id="222", value="NONE",
        clock=lambda: now[0], ledger=ledger, polls=3,
    )  # fmt: skip

    (end,) = closed  # said once: the polls after it have nothing to say
    assert (end.provider_event_id, end.phase, end.action) == (old[0].provider_event_id, "completed", "terminate")
    stored_end = [e for e in await _stored(js, topology_ready) if e.provider_event_id == end.provider_event_id][-1]
    assert (stored_end.phase, stored_end.node, stored_end.node_mapped) == ("completed", "gke-a-1", True)
    assert end.instance_id == "111"
    assert end.started_at == old[0].started_at
    assert end.finished_at == now[0]
    assert end.extended == {"closed_because": "vm_recreated", "new_instance_id": "222"}
    assert end.description is not None
    assert "recreated" in end.description
    assert ledger.open_events("gcp") == []  # the pod's ledger holds its own node's events only (as deployed)
    others = [e for e in await _stored(js, topology_ready) if e.provider_event_id == other[0].provider_event_id]
    assert [(e.phase, e.node) for e in others] == [("in_progress", "gke-a-2")]  # another node's: left alone

    # what the remediator's view makes of CLOUD for the node (its inventory names the VM by name)
    view = FleetView()
    view.on_inventory(
        NodeInventory(
            cluster="prod-1", node="gke-a-1", instance_id="gke-a-1", provider_id="gce://p/z/gke-a-1", cloud="gce"
        )
    )
    for ev in await _stored(js, topology_ready):
        view.on_cloud(ev)
    assert planner.host_events(view.cloud_events("gke-a-1")) == []

    # the new VM's own maintenance later: a new episode under its id, not the closed one
    now[0] += timedelta(hours=1)
    mine = await _poll(
        deployed, topology_ready, cluster="prod-1", node="gke-a-1", instance_id="222", value=TERMINATE,
        clock=lambda: now[0], ledger=await _seeded(deployed, topology_ready, "prod-1", "gke-a-1"),
    )  # fmt: skip
    assert [(e.phase, e.instance_id) for e in mine] == [("in_progress", "222")]
    assert mine[0].provider_event_id.startswith("222:")


async def test_a_restarted_poller_of_the_same_vm_still_continues_its_episode(
    js: JetStreamContext, topology_ready: NatsSettings, deployed: Deployed
) -> None:
    """The close is for another VM's episodes only: a pod of the same VM restarted during the maintenance takes
    its episode over and closes it when the value returns to NONE."""
    now = [datetime(2026, 4, 10, 12, 0, 0, tzinfo=UTC)]
    first = await _poll(
        deployed, topology_ready, cluster="prod-1", node="gke-a-3", instance_id="777", value=TERMINATE,
        clock=lambda: now[0], ledger=TransitionLedger(),
    )  # fmt: skip
    now[0] += timedelta(seconds=30)
    assert await _poll(
        deployed, topology_ready, cluster="prod-1", node="gke-a-3", instance_id="777", value=TERMINATE,
        clock=lambda: now[0], ledger=await _seeded(deployed, topology_ready, "prod-1", "gke-a-3"),
    ) == []  # fmt: skip
    now[0] += timedelta(seconds=30)
    end = await _poll(
        deployed, topology_ready, cluster="prod-1", node="gke-a-3", instance_id="777", value="NONE",
        clock=lambda: now[0], ledger=await _seeded(deployed, topology_ready, "prod-1", "gke-a-3"),
    )  # fmt: skip
    assert [(e.provider_event_id, e.phase, e.extended) for e in end] == [(first[0].provider_event_id, "completed", {})]


async def test_e2e_the_recreated_gce_node_is_not_drained_for_the_old_vms_episode(
    js: JetStreamContext, nc: Client, topology_ready: NatsSettings, deployed: Deployed
) -> None:
    """The pollers as above publish CLOUD, then the real remediator service runs with the recreated VM healthy
    (probes, a new boot id). A second node whose VM is under maintenance right now (published after the recreated
    node's messages) is the control: once it is cordoned and drained, the maintenance loop has acted on a view that
    holds everything the recreated node got (both in one zone: before, the recreated node was cordoned and drained
    first, ['cordon', 'evict:default/web-1'], never given back, and its slot kept the control waiting)."""
    node, control = "gke-b-1", "gke-b-9"
    t0 = datetime.now(tz=UTC) - timedelta(minutes=30)
    await _poll(
        deployed, topology_ready, cluster=CLUSTER, node=node, instance_id="111", value=TERMINATE,
        clock=lambda: t0, ledger=TransitionLedger(),
    )  # fmt: skip
    closed = await _poll(
        deployed, topology_ready, cluster=CLUSTER, node=node, instance_id="222", value="NONE",
        clock=lambda: t0 + timedelta(minutes=10), ledger=await _seeded(deployed, topology_ready, CLUSTER, node),
    )  # fmt: skip
    assert [e.phase for e in closed] == ["completed"]
    await _poll(
        deployed, topology_ready, cluster=CLUSTER, node=control, instance_id="333", value=TERMINATE,
        clock=lambda: datetime.now(tz=UTC), ledger=await _seeded(deployed, topology_ready, CLUSTER, control),
    )  # fmt: skip

    async with KubeWorld() as world:
        for name, pod in ((node, "web-1"), (control, "web-9")):
            world.add_node(name, zone="z1")
            world.add_pod(pod, node=name)
            await add_inventory(
                nc, topology_ready, name, zone="z1", cloud="gce", instance_id=name, provider_id=f"gce://p/z1/{name}"
            )
        settings = make_settings(deployed.remediator, kube_url=world.url, cloud_drain_lead_s=600).model_copy(
            update={"maintenance_interval_s": 0.2}
        )
        async with Probes(nc, topology_ready, node, boot_id="boot-new-vm"), Probes(nc, topology_ready, control):
            service = await start_service(settings)
            try:

                async def acted() -> bool:
                    mine = [e for _, n, e in world.effects if n == node]
                    drained = [e for _, n, e in world.effects if n == control] == ["cordon", "evict:default/web-9"]
                    return bool(mine) or drained

                await wait_for(
                    acted, what="the control node drained for its maintenance (or the recreated one touched)"
                )
            finally:
                await service.stop()
        assert [e for _, n, e in world.effects if n == node] == []


async def test_e2e_a_node_drained_for_its_vms_terminate_is_uncordoned_once_the_recreated_vm_runs(
    js: JetStreamContext, nc: Client, topology_ready: NatsSettings, deployed: Deployed
) -> None:
    """The common order: the remediator drains the node for the old VM's TERMINATE_ON_HOST_MAINTENANCE, the
    instance group recreates the VM (new numeric id, new boot), and the new VM's poller closes the old episode:
    the remediator verifies the node (a new boot) and uncordons it. Before, the episode never ended and the
    node stayed cordoned for good."""
    node = "gke-c-1"
    boot = ["boot-old-vm"]
    async with KubeWorld() as world:
        world.add_node(node, zone="z1")
        world.add_pod("web-1", node=node)
        await add_inventory(
            nc, topology_ready, node, zone="z1", cloud="gce", instance_id=node, provider_id=f"gce://p/z1/{node}"
        )
        settings = make_settings(deployed.remediator, kube_url=world.url, cloud_drain_lead_s=600).model_copy(
            update={"maintenance_interval_s": 0.2}
        )
        async with Probes(nc, topology_ready, node, boot_id=lambda: boot[0]):
            service = await start_service(settings)
            try:
                await _poll(
                    deployed, topology_ready, cluster=CLUSTER, node=node, instance_id="111", value=TERMINATE,
                    clock=lambda: datetime.now(tz=UTC), ledger=TransitionLedger(),
                )  # fmt: skip

                async def drained() -> bool:
                    return [e for _, n, e in world.effects if n == node] == ["cordon", "evict:default/web-1"]

                await wait_for(drained, what="the node drained for the old VM's terminate")
                boot[0] = "boot-new-vm"  # the VM is terminated and recreated under the node's name
                closed = await _poll(
                    deployed, topology_ready, cluster=CLUSTER, node=node, instance_id="222", value="NONE",
                    clock=lambda: datetime.now(tz=UTC), ledger=await _seeded(deployed, topology_ready, CLUSTER, node),
                )  # fmt: skip
                assert [e.phase for e in closed] == ["completed"]

                async def uncordoned() -> bool:
                    return "uncordon" in [e for _, n, e in world.effects if n == node]

                await wait_for(uncordoned, what="the recreated node uncordoned", timeout=30)
            finally:
                await service.stop()
        assert [e for _, n, e in world.effects if n == node] == ["cordon", "evict:default/web-1", "uncordon"]
        assert not world.is_cordoned(node)
