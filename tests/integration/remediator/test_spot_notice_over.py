"""A spot interruption notice gets no end from the cloud. A released machine leaves the inventory, but one whose
interruption behaviour is *stop* or *hibernate* (AWS `InstanceInterruptionBehavior=stop`, Alibaba
`SpotInterruptionBehavior=Stop`) comes back as the same instance and the same node: the notice must not keep it
drained for ever. It ends when the instance is reported running again after the notice, or `SPOT_NOTICE_OVER`
after its time. On a real nats-server with the deployed per-role authorization
(the remediator under its role's credential) through the real remediator service; CLOUD gets what the AWS EventBridge
normalizer makes of real-shaped bodies; the node's side effects are counted at the Kubernetes emulator."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from nats.aio.client import Client

from nodeheal.cloud_events.normalize import NormalizeContext
from nodeheal.cloud_events.normalize import aws as aws_norm
from nodeheal.remediator import planner
from nodeheal.remediator.views import SPOT_NOTICE_OVER, FleetView
from nodeheal.runtime.settings import NatsSettings
from nodeheal.schemas.cloud import CloudSystemEvent
from nodeheal.schemas.inventory import NodeInventory
from nodeheal.schemas.subjects import cloud_subject
from nodeheal.sim.kube import KubeWorld
from tests.integration.remediator.harness import (
    CLUSTER,
    Deployed,
    Probes,
    add_inventory,
    audit_records,
    make_settings,
    start_service,
    wait_for_record,
)

pytestmark = pytest.mark.nats

INSTANCE = "i-0b662ef9931388ba0"


def eventbridge(
    at: datetime, detail_type: str, detail: dict[str, str], n: int, instance: str = INSTANCE
) -> dict[str, object]:
    """An EventBridge event as AWS sends it (the envelope of the docs' examples)."""
    return {
        "version": "0",
        "id": f"1e5527d7-bb36-4607-3370-4164db56a4{n:02d}",
        "detail-type": detail_type,
        "source": "aws.ec2",
        "account": "123456789012",
        "time": at.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "region": "us-east-1",
        "resources": [f"arn:aws:ec2:us-east-1:123456789012:instance/{instance}"],
        "detail": detail,
    }


def spot_warning(at: datetime, instance: str = INSTANCE, n: int = 1) -> dict[str, object]:
    detail = {"instance-id": instance, "instance-action": "stop"}
    return eventbridge(at, "EC2 Spot Instance Interruption Warning", detail, n, instance)


def state_change(at: datetime, state: str, n: int) -> dict[str, object]:
    return eventbridge(at, "EC2 Instance State-change Notification", {"instance-id": INSTANCE, "state": state}, n)


def normalized(node: str, body: dict[str, object]) -> list[CloudSystemEvent]:
    ctx = NormalizeContext(observed_at=datetime.now(tz=UTC), cluster=CLUSTER, node=node)
    return [
        ev.model_copy(update={"node": node, "cluster": CLUSTER, "node_mapped": True})
        for ev in aws_norm.normalize_eventbridge(body, ctx)
    ]


async def publish(nc: Client, nats: NatsSettings, node: str, body: dict[str, object]) -> None:
    for ev in normalized(node, body):
        await nc.jetstream().publish(
            cloud_subject(ev.cluster, ev.node, prefix=nats.prefix), ev.to_json(), headers={"Nats-Msg-Id": ev.id}
        )


def view_of(node: str, bodies: list[dict[str, object]]) -> FleetView:
    view = FleetView()
    view.on_inventory(NodeInventory(cluster=CLUSTER, node=node, instance_id=INSTANCE, cloud="aws"))
    for body in bodies:
        for ev in normalized(node, body):
            if view.keeps_cloud(ev.to_json()):
                view.on_cloud(ev)
    return view


def test_a_running_state_change_after_the_notice_ends_it_and_one_before_does_not() -> None:
    node = "n-spot-view"
    t0 = datetime.now(tz=UTC) - timedelta(minutes=5)
    # the instance's launch reported before the notice: it ends nothing (the notice is due: drained for)
    early = view_of(node, [state_change(t0 - timedelta(minutes=1), "running", 2), spot_warning(t0)])
    pending = planner.host_events(early.cloud_events(node))
    assert [(e.action, e.cause) for e in pending] == [("terminate", "spot")]
    # stopped for the notice, started again: over, `completed` (the maintenance loop verifies a new boot)
    back = view_of(
        node,
        [
            spot_warning(t0),
            state_change(t0 + timedelta(minutes=2), "stopped", 3),
            state_change(t0 + timedelta(minutes=4), "running", 4),
        ],
    )
    assert planner.host_events(back.cloud_events(node)) == []
    ended = [e for e in back.cloud_events(node) if e.action == "terminate"]
    assert [(e.phase, e.is_terminal) for e in ended] == [("completed", True)]
    assert "running again" in (ended[0].description or "")


def test_a_notice_nothing_ended_is_over_its_time_later() -> None:
    node = "n-spot-late"
    recent = datetime.now(tz=UTC) - SPOT_NOTICE_OVER + timedelta(minutes=5)
    assert [e.cause for e in planner.host_events(view_of(node, [spot_warning(recent)]).cloud_events(node))] == ["spot"]
    old = datetime.now(tz=UTC) - SPOT_NOTICE_OVER - timedelta(minutes=5)
    view = view_of(node, [spot_warning(old)])
    assert planner.host_events(view.cloud_events(node)) == []
    assert [e.phase for e in view.cloud_events(node)] == ["completed"]


def test_reading_the_view_ends_nothing_and_the_maintenance_tick_ends_the_overdue_notice() -> None:
    """`cloud_events` shows an overdue notice as over without changing the view (before, the read ended it: a
    read with a side effect); the maintenance loop's tick ends it in the view (`end_overdue_spot_notices`)."""
    node = "n-spot-pure"
    view = view_of(node, [spot_warning(datetime.now(tz=UTC) - SPOT_NOTICE_OVER - timedelta(minutes=5))])
    assert [e.phase for e in view.cloud_events(node)] == ["completed"]
    assert [e.is_terminal for e in view.cloud[node].values()] == [False]  # the read kept the view as it was
    assert view.end_overdue_spot_notices(datetime.now(tz=UTC)) == 1
    assert [(e.phase, e.is_terminal) for e in view.cloud[node].values()] == [("completed", True)]
    assert view.end_overdue_spot_notices(datetime.now(tz=UTC)) == 0


async def test_a_spot_node_drained_for_its_notice_is_uncordoned_when_it_runs_again(deployed: Deployed) -> None:
    """The notice comes (stop in two minutes): the node is cordoned and drained. The instance is stopped and
    started again (EventBridge state changes), its agent reports a new boot: the node is verified and
    uncordoned, its budget slot given back. Before, the notice stayed open for ever and the node out."""
    nc, topology_ready = deployed.nc, deployed.admin
    node = "n-spot"
    boots = {"n": 1}
    async with KubeWorld() as world:
        world.add_node(node, zone="z1")
        world.add_pod("web-1", node=node)
        await add_inventory(nc, topology_ready, node, zone="z1", cloud="aws", instance_id=INSTANCE)
        settings = make_settings(deployed.remediator, kube_url=world.url, cloud_drain_lead_s=600).model_copy(
            update={"maintenance_interval_s": 0.2}
        )
        async with Probes(nc, topology_ready, node, boot_id=lambda: f"boot-{boots['n']}"):
            service = await start_service(settings)
            try:
                notice = datetime.now(tz=UTC).replace(microsecond=0)
                await publish(nc, topology_ready, node, spot_warning(notice))
                await wait_for_record(nc, topology_ready, node=node, action="drain", phase="succeeded", timeout=30)
                assert world.is_cordoned(node)
                boots["n"] += 1  # stopped and started again: a new boot
                await publish(nc, topology_ready, node, state_change(notice + timedelta(seconds=1), "stopped", 3))
                await publish(nc, topology_ready, node, state_change(notice + timedelta(seconds=2), "running", 4))
                await wait_for_record(nc, topology_ready, node=node, action="uncordon", phase="succeeded", timeout=30)
            finally:
                await service.stop()
        records = [r for r in await audit_records(nc, topology_ready) if r.node == node]
        assert [r.boot_id for r in records if r.phase == "verified"] == ["boot-2"]
        assert [r for r in records if r.action == "escalate"] == []
        assert [e for _, n, e in world.effects if n == node] == ["cordon", "evict:default/web-1", "uncordon"]
        assert not world.is_cordoned(node)
    assert deployed.violations() == []


async def test_a_returned_spot_node_is_not_drained_for_an_old_notice(deployed: Deployed) -> None:
    """A remediator that starts after the spot node came back (the notice two hours old, never ended by any
    report) leaves the healthy node alone: nothing cordoned, nothing evicted (before: cordoned and drained,
    and never uncordoned). A second node's fresh notice, published after the old one, is the mark that the
    maintenance loop has looked at both: once that node is drained, the old notice was seen."""
    nc, topology_ready = deployed.nc, deployed.admin
    node, marker = "n-spot-old", "n-spot-mark"
    async with KubeWorld() as world:
        for name, zone, instance in ((node, "z1", INSTANCE), (marker, "z2", "i-0c0ffee0000000001")):
            world.add_node(name, zone=zone)
            world.add_pod(f"web-{name}", node=name)
            await add_inventory(nc, topology_ready, name, zone=zone, cloud="aws", instance_id=instance)
        await publish(nc, topology_ready, node, spot_warning(datetime.now(tz=UTC) - timedelta(hours=2)))
        await publish(nc, topology_ready, marker, spot_warning(datetime.now(tz=UTC), "i-0c0ffee0000000001", 9))
        settings = make_settings(deployed.remediator, kube_url=world.url, cloud_drain_lead_s=600).model_copy(
            update={"maintenance_interval_s": 0.2}
        )
        async with Probes(nc, topology_ready, node, boot_id="boot-2"), Probes(nc, topology_ready, marker):
            service = await start_service(settings)
            try:
                await wait_for_record(nc, topology_ready, node=marker, action="drain", phase="succeeded", timeout=30)
            finally:
                await service.stop()
        assert [e for _, n, e in world.effects if n == node] == []
        assert not world.is_cordoned(node)
    assert deployed.violations() == []
