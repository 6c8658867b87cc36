"""Issue 13 item 5: host events are obeyed, not undone — on a real nats-server through the real remediator,
with the cloud emulators' events normalized by the real cloud-events normalizers and realistic notices
scaled down (an Alibaba SystemMaintenance.Reboot 24 h ahead with a 15 min drain lead → 12 s with 6 s;
an Azure Reboot with its 15 min minimum notice → 12 s). Side effects are counted at the emulators.

As deployed (the `deployed` fixture): the server runs deploy/nats/natsauth.py's per-role authorization and the
remediator connects under its role's credential and inbox; the test writes the cloud events, probes, inventory
and diagnoses as `admin` (standing in for cloud-events, the agents and the diagnoser: no node command is sent
here) and checks the server logged no permission violation."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import aiohttp
import pytest
from nats.aio.client import Client
from nats.js.errors import NotFoundError

from nodeheal.cloud_events.normalize.alibaba import normalize_api
from nodeheal.cloud_events.normalize.aws import normalize_eventbridge, normalize_imds
from nodeheal.cloud_events.normalize.azure import AzureDocumentTracker
from nodeheal.cloud_events.normalize.common import NormalizeContext
from nodeheal.cloud_events.normalize.gce import GceMaintenanceTracker
from nodeheal.remediator.actions.cloud import AlibabaEcs
from nodeheal.remediator.control import write_approval
from nodeheal.remediator.ledger import Ledger
from nodeheal.remediator.settings import CloudSettings
from nodeheal.runtime.settings import NatsSettings
from nodeheal.schemas.cloud import CloudSystemEvent
from nodeheal.schemas.subjects import cloud_subject
from nodeheal.sim.aws_imds import AwsImdsEmulator, AwsMaintenanceEvents
from nodeheal.sim.azure_imds import AzureImdsEmulator, AzureScheduledEvents
from nodeheal.sim.clock import SystemClock
from nodeheal.sim.ecs_api import EcsEmulator, EcsWorld, render_event
from nodeheal.sim.ecs_world import SystemEvent
from nodeheal.sim.gce_metadata import GceMetadata
from nodeheal.sim.kube import KubeWorld
from tests.integration.remediator.harness import (
    CLUSTER,
    Deployed,
    Probes,
    add_inventory,
    audit_records,
    diagnosis,
    make_settings,
    mirrored,
    publish_diagnosis,
    running,
    start_service,
    wait_for,
    wait_for_record,
)

pytestmark = pytest.mark.nats

NOTICE_S = 12.0
LEAD_S = 6.0


def _alibaba_shown(ecs_world: EcsWorld, event: SystemEvent, node: str) -> Callable[[], list[CloudSystemEvent]]:
    """What the Alibaba API poller sees of `event` now, normalized by the real normalizer."""

    def shown() -> list[CloudSystemEvent]:
        body = {"InstanceSystemEventSet": {"InstanceSystemEventType": [render_event(ecs_world, event)]}}
        return normalize_api(body, NormalizeContext(observed_at=datetime.now(tz=UTC), cluster=CLUSTER, node=node))

    return shown


async def _imds_document(url: str) -> object:
    """The IMDS scheduled-events document, read as the metadata poller reads it (IMDSv2 token first)."""
    async with aiohttp.ClientSession() as http:
        put = await http.put(f"{url}/latest/api/token", headers={"X-aws-ec2-metadata-token-ttl-seconds": "60"})
        got = await http.get(
            f"{url}/latest/meta-data/events/maintenance/scheduled",
            headers={"X-aws-ec2-metadata-token": await put.text()},
        )
        return await got.json(content_type=None)


async def test_alibaba_scheduled_reboot_is_drained_within_the_lead_accepted_with_reboot_and_uncordoned_after(
    deployed: Deployed,
) -> None:
    nc, admin = deployed.nc, deployed.admin
    ecs_world = EcsWorld(clock=SystemClock(), reboot_duration=timedelta(seconds=1))
    instance = ecs_world.add_instance("i-m1", region_id="cn-hangzhou")
    async with KubeWorld() as world, EcsEmulator(ecs_world) as ecs:
        world.add_node("m1", zone="z1")
        world.add_pod("web-1", node="m1")
        await add_inventory(nc, admin, "m1", zone="z1", cloud="alibaba", instance_id="i-m1")
        not_before = datetime.now(tz=UTC) + timedelta(seconds=NOTICE_S)
        event = ecs_world.publish_event("i-m1", "SystemMaintenance.Reboot", not_before=not_before)

        shown = _alibaba_shown(ecs_world, event, "m1")

        settings = make_settings(
            deployed.remediator,
            kube_url=world.url,
            ecs_endpoint=ecs.endpoint,
            cloud_drain_lead_s=LEAD_S,
            cloud_accept_margin_s=1.0,
        ).model_copy(update={"maintenance_interval_s": 0.3})
        service = await start_service(settings)
        try:
            async with (
                mirrored(nc, admin, shown),
                Probes(nc, admin, "m1", boot_id=lambda: f"boot-{instance.boot_count}"),
            ):
                uncordon = await wait_for_record(nc, admin, node="m1", action="uncordon", phase="succeeded", timeout=40)
                assert uncordon.episode_id == f"cloud:alibaba:{event.event_id}"
        finally:
            await service.stop()
        records = [r for r in await audit_records(nc, admin) if r.node == "m1"]
        cordon = next(r for r in records if r.action == "cordon" and r.phase == "started")
        assert cordon.time >= not_before - timedelta(seconds=LEAD_S + 1)  # not drained for the whole notice
        assert [c.action for c in ecs.calls if c.action in ("RebootInstance", "RedeployInstance")] == [
            "RebootInstance"
        ]  # the API matching the event, once; never RedeployInstance for a reboot
        assert event.status == "Avoided"
        verified = next(r for r in records if r.phase == "verified")
        assert verified.boot_id == f"boot-{instance.boot_count}" and verified.boot_id != "boot-0"
        uncordon = next(r for r in records if r.action == "uncordon" and r.phase == "succeeded")
        assert uncordon.time > verified.time
        assert not world.is_cordoned("m1")
        assert ("default", "web-1") in {(ns, name) for ns, name, _ in world.evictions.calls}  # drained first
    assert deployed.violations() == []


@pytest.mark.parametrize("code", ["RebootAndIsolateErrorDisk", "RebootAndReInitErrorDisk"])
async def test_an_alibaba_reboot_for_a_bad_disk_is_drained_for_and_accepted_early_only_with_approval_if_it_wipes(
    deployed: Deployed, code: str
) -> None:
    """Found by a review: `SystemMaintenance.RebootAndIsolateErrorDisk` / `RebootAndReInitErrorDisk` were
    `disk_repair`, which the maintenance loop does not act on: the platform restarted the instance with its pods
    on it. Now they are `reboot`: drained within the lead and accepted early (AcceptInquiredSystemEvent) — the
    re-init, which wipes a local disk, only once a person approved it, as a redeploy."""
    nc, admin = deployed.nc, deployed.admin
    ecs_world = EcsWorld(clock=SystemClock(), reboot_duration=timedelta(seconds=1))
    instance = ecs_world.add_instance("i-d1", region_id="cn-hangzhou")
    wipes = code == "RebootAndReInitErrorDisk"
    async with KubeWorld() as world, EcsEmulator(ecs_world) as ecs:
        world.add_node("d1", zone="z1")
        world.add_pod("db-1", node="d1")
        await add_inventory(nc, admin, "d1", zone="z1", cloud="alibaba", instance_id="i-d1")
        # drained from 6 s on, as the others; the long lead leaves the drain and the approval room before the
        # accept margin on a loaded machine (an Inquiring event never runs by itself at the emulator)
        not_before = datetime.now(tz=UTC) + timedelta(seconds=2 * NOTICE_S)
        event = ecs_world.publish_event("i-d1", f"SystemMaintenance.{code}", status="Inquiring", not_before=not_before)
        settings = make_settings(
            deployed.remediator,
            kube_url=world.url,
            ecs_endpoint=ecs.endpoint,
            cloud_drain_lead_s=2 * NOTICE_S - LEAD_S,
            cloud_accept_margin_s=1.0,
        ).model_copy(update={"maintenance_interval_s": 0.3})
        service = await start_service(settings)
        try:
            async with (
                mirrored(nc, admin, _alibaba_shown(ecs_world, event, "d1")),
                Probes(nc, admin, "d1", boot_id=lambda: f"boot-{instance.boot_count}"),
            ):
                if wipes:
                    waiting = await wait_for_record(
                        nc,
                        admin,
                        node="d1",
                        action="accept_cloud_event",
                        phase="awaiting_approval",
                        timeout=40,
                    )
                    assert "wipes local data" in waiting.reason
                    # drained, and nothing asked of the platform without the approval
                    assert ("default", "db-1") in {(ns, name) for ns, name, _ in world.evictions.calls}
                    assert [c.action for c in ecs.calls if c.action != "DescribeInstanceHistoryEvents"] == []
                    assert event.status == "Inquiring" and instance.boot_count == 0
                    control = await nc.jetstream().key_value(f"{admin.bucket_prefix}-control")
                    await write_approval(control, action_id=waiting.action_id, by="bob")
                uncordon = await wait_for_record(nc, admin, node="d1", action="uncordon", phase="succeeded", timeout=40)
                assert uncordon.episode_id == f"cloud:alibaba:{event.event_id}"
        finally:
            await service.stop()
        records = [r for r in await audit_records(nc, admin) if r.node == "d1"]
        # the platform was asked once, with the call that runs this event, after the drain
        assert [c.action for c in ecs.calls] == ["AcceptInquiredSystemEvent"]
        assert ecs.calls[0].params["EventId"] == event.event_id
        assert event.status == "Executed" and instance.boot_count == 1
        drained = next(r for r in records if r.action == "drain" and r.phase == "succeeded")
        accepted = next(r for r in records if r.action == "accept_cloud_event" and r.phase == "intent")
        assert drained.time <= accepted.time
        assert any(c.name == "approval" and "bob" in c.detail for c in accepted.checks) is wipes
        assert ("default", "db-1") in {(ns, name) for ns, name, _ in world.evictions.calls}
        assert not world.is_cordoned("d1")
    assert deployed.violations() == []


async def test_azure_reboot_is_started_early_with_start_requests_after_the_drain(deployed: Deployed) -> None:
    nc, admin = deployed.nc, deployed.admin
    events = AzureScheduledEvents(clock=SystemClock())
    async with KubeWorld() as world, AzureImdsEmulator(events) as imds:
        world.add_node("vm1", zone="z1")
        await add_inventory(nc, admin, "vm1", zone="z1", cloud="azure", instance_id="vm1")
        scheduled = events.schedule(
            "Reboot", resources=["vm1"], not_before=datetime.now(tz=UTC) + timedelta(seconds=NOTICE_S), duration_s=1
        )
        tracker = AzureDocumentTracker()
        boots = {"n": 1}

        def shown() -> list[CloudSystemEvent]:
            ctx = NormalizeContext(observed_at=datetime.now(tz=UTC), cluster=CLUSTER, node="vm1")
            out = tracker.feed(events.document(vm_name="vm1"), ctx)
            if any(e.phase == "in_progress" for e in out):
                boots["n"] += 1  # the VM reboots when the event starts
            return out

        settings = make_settings(
            deployed.remediator, kube_url=world.url, cloud_drain_lead_s=LEAD_S, cloud_accept_margin_s=1.0
        ).model_copy(
            update={
                "maintenance_interval_s": 0.3,
                "cloud": CloudSettings(provider="auto", azure_imds_url=imds.url),
            }
        )
        service = await start_service(settings)
        try:
            async with (
                mirrored(nc, admin, shown),
                Probes(nc, admin, "vm1", boot_id=lambda: f"boot-{boots['n']}"),
            ):
                await wait_for_record(nc, admin, node="vm1", action="uncordon", phase="succeeded", timeout=40)
        finally:
            await service.stop()
        started = [c for c in events.changes if c.kind == "started"]
        assert [c.initiator for c in started] == ["start_request"]  # accepted early, once, by StartRequests
        assert started[0].event_id == scheduled.event_id
        records = [r for r in await audit_records(nc, admin) if r.node == "vm1"]
        accept = [r for r in records if r.action == "accept_cloud_event" and r.phase == "started"]
        drained = next(r for r in records if r.action == "drain" and r.phase == "succeeded")
        assert len(accept) == 1 and accept[0].time >= drained.time
        assert not world.is_cordoned("vm1")
    assert deployed.violations() == []


async def test_an_azure_event_runs_at_its_not_before_when_no_relay_to_the_nodes_imds_is_configured(
    deployed: Deployed,
) -> None:
    """As deployed: IMDS answers only on the node's own VM and no relay to it exists (`CLOUD__AZURE_IMDS_URL`
    empty, the default). The node is cordoned and drained within the lead; no early acceptance is tried or
    recorded (before, a `started` accept went to 169.254.169.254: the remediator's own VM, or nothing); the
    platform starts the event at its NotBefore; the node is verified and uncordoned."""
    nc, admin = deployed.nc, deployed.admin
    events = AzureScheduledEvents(clock=SystemClock())
    async with KubeWorld() as world, AzureImdsEmulator(events) as imds:
        world.add_node("vm2", zone="z1")
        await add_inventory(nc, admin, "vm2", zone="z1", cloud="azure", instance_id="vm2")
        scheduled = events.schedule(
            "Reboot", resources=["vm2"], not_before=datetime.now(tz=UTC) + timedelta(seconds=NOTICE_S), duration_s=1
        )
        tracker = AzureDocumentTracker()
        boots = {"n": 1}

        def shown() -> list[CloudSystemEvent]:
            # the node's own poller reads the node's IMDS (the emulator); the remediator is never told of it
            ctx = NormalizeContext(observed_at=datetime.now(tz=UTC), cluster=CLUSTER, node="vm2")
            out = tracker.feed(events.document(vm_name="vm2"), ctx)
            if any(e.phase == "in_progress" for e in out):
                boots["n"] += 1
            return out

        settings = make_settings(
            deployed.remediator, kube_url=world.url, cloud_drain_lead_s=LEAD_S, cloud_accept_margin_s=1.0
        ).model_copy(update={"maintenance_interval_s": 0.3, "cloud": CloudSettings(provider="auto")})
        assert imds.url and not settings.cloud.azure_imds_url
        service = await start_service(settings)
        try:
            async with (
                mirrored(nc, admin, shown),
                Probes(nc, admin, "vm2", boot_id=lambda: f"boot-{boots['n']}"),
            ):
                await wait_for_record(nc, admin, node="vm2", action="uncordon", phase="succeeded", timeout=40)
        finally:
            await service.stop()
        started = [c for c in events.changes if c.kind == "started"]
        assert [(c.event_id, c.initiator) for c in started] == [(scheduled.event_id, "platform")]
        records = [r for r in await audit_records(nc, admin) if r.node == "vm2"]
        assert any(r.action == "drain" and r.phase == "succeeded" for r in records)
        assert [r for r in records if r.action == "accept_cloud_event"] == []
        assert not world.is_cordoned("vm2")
    assert deployed.violations() == []


async def test_a_diagnosis_after_the_host_reboot_ran_verifies_instead_of_rebooting_again(deployed: Deployed) -> None:
    nc, admin = deployed.nc, deployed.admin
    ecs_world = EcsWorld(clock=SystemClock(), reboot_duration=timedelta(seconds=1))
    ecs_world.add_instance("i-m2", region_id="cn-hangzhou")
    async with KubeWorld() as world, EcsEmulator(ecs_world) as ecs:
        world.add_node("m2", zone="z1")
        await add_inventory(nc, admin, "m2", zone="z1", cloud="alibaba", instance_id="i-m2")
        event = ecs_world.publish_event(
            "i-m2", "SystemMaintenance.Reboot", not_before=datetime.now(tz=UTC) + timedelta(seconds=1)
        )

        shown = _alibaba_shown(ecs_world, event, "m2")

        async def executed() -> bool:
            return event.status == "Executed"

        await wait_for(executed, what="the host reboot ran (the emulator's platform did it)")
        service = await start_service(make_settings(deployed.remediator, kube_url=world.url, ecs_endpoint=ecs.endpoint))
        try:
            async with mirrored(nc, admin, shown), Probes(nc, admin, "m2", boot_id="boot-after"):
                await asyncio.sleep(0.5)  # the mirror published the completed event
                # the diagnoser's ladder for a completed host event: give the node time, then our own reboot
                d = diagnosis("m2", [("wait_for_cloud_event", event.event_id), "reboot"])
                await publish_diagnosis(nc, admin, d)
                await wait_for_record(nc, admin, node="m2", action="wait_for_cloud_event", phase="verified")
        finally:
            await service.stop()
        assert [c.action for c in ecs.calls if c.action in ("RebootInstance", "RedeployInstance")] == []
    assert deployed.violations() == []


async def test_aws_and_gce_host_events_are_waited_for_never_accepted_with_another_call(deployed: Deployed) -> None:
    """No SDK of the lock file can run an AWS or GCE host event early (EC2's own calls need boto3, GCE's
    performMaintenance the Compute client): the node is drained within the lead, the event runs by itself,
    then the node is verified and uncordoned. Even an AWS instance-reboot whose notice offers
    RebootInstances is not "accepted" — not with that call, and never with another cloud's: the remediator
    is pointed at the ECS emulator, where any reboot or redeploy would be counted."""
    nc, admin = deployed.nc, deployed.admin
    aws = AwsMaintenanceEvents(instance_id="i-0aws", clock=SystemClock())
    gce = GceMetadata(instance_name="gke-1", instance_id="4242")
    gce_tracker = GceMaintenanceTracker()
    boots = {"aws1": 1, "gce1": 1}
    ecs_world = EcsWorld(clock=SystemClock(), reboot_duration=timedelta(seconds=1))
    async with KubeWorld() as world, AwsImdsEmulator(aws) as imds, EcsEmulator(ecs_world) as ecs:
        for node, cloud, instance in (("aws1", "aws", "i-0aws"), ("gce1", "gcp", "4242")):
            world.add_node(node, zone="z1")
            world.add_pod(f"web-{node}", node=node)
            await add_inventory(nc, admin, node, zone="z1", cloud=cloud, instance_id=instance)
        not_before = datetime.now(tz=UTC) + timedelta(seconds=NOTICE_S)
        event = aws.add("instance-reboot", not_before=not_before, description="scheduled reboot")

        aws_shown: list[CloudSystemEvent] = []
        gce_shown: list[CloudSystemEvent] = []

        def shown() -> list[CloudSystemEvent]:
            return [*aws_shown, *gce_shown]

        async def poll_imds(stop: asyncio.Event) -> None:  # what the cloud-events metadata poller reads
            while not stop.is_set():
                ctx = NormalizeContext(
                    observed_at=datetime.now(tz=UTC), cluster=CLUSTER, node="aws1", instance_id="i-0aws"
                )
                aws_shown[:] = normalize_imds(await _imds_document(imds.url), ctx)
                await asyncio.sleep(0.2)

        def gce_feed() -> None:
            ctx = NormalizeContext(observed_at=datetime.now(tz=UTC), cluster=CLUSTER, node="gce1", instance_id="4242")
            gce_shown.extend(gce_tracker.feed(gce.values["instance/maintenance-event"], ctx))

        settings = make_settings(
            deployed.remediator, kube_url=world.url, ecs_endpoint=ecs.endpoint, cloud_drain_lead_s=LEAD_S
        ).model_copy(update={"maintenance_interval_s": 0.3})
        assert settings.policy.accept_cloud_events_early  # allowed, and still not done: there is no right call
        service = await start_service(settings)

        async def body() -> None:
            gce.set_maintenance_event("TERMINATE_ON_HOST_MAINTENANCE")  # GCE: about 60 s notice, running now
            gce_feed()
            await wait_for_record(nc, admin, node="gce1", action="drain", phase="succeeded", timeout=30)
            boots["gce1"] += 1
            gce.set_maintenance_event("NONE")
            gce_feed()
            await wait_for_record(nc, admin, node="aws1", action="drain", phase="succeeded", timeout=30)
            await asyncio.sleep(max(0.0, (not_before - datetime.now(tz=UTC)).total_seconds()))
            boots["aws1"] += 1  # the platform ran the reboot at its time
            aws.complete(event.event_id)
            for node in ("aws1", "gce1"):
                await wait_for_record(nc, admin, node=node, action="uncordon", phase="succeeded", timeout=30)

        try:
            async with (
                running(poll_imds),
                mirrored(nc, admin, shown),
                Probes(nc, admin, "aws1", boot_id=lambda: f"boot-{boots['aws1']}"),
                Probes(nc, admin, "gce1", boot_id=lambda: f"boot-{boots['gce1']}"),
            ):
                await body()
        finally:
            await service.stop()
        # and were the ECS provider ever handed the AWS event, it would refuse it without a call
        refused = await AlibabaEcs(settings.cloud).accept_event(event=next(e for e in aws_shown))
        assert not refused.ok and "not ECS's" in refused.detail
        records = [r for r in await audit_records(nc, admin) if r.node in ("aws1", "gce1")]
        assert [r for r in records if r.action in ("accept_cloud_event", "reboot", "redeploy")] == []
        assert ecs.calls == []  # no cloud call of any kind
        aws_cordon = next(r for r in records if r.node == "aws1" and r.action == "cordon" and r.phase == "started")
        assert aws_cordon.time >= not_before - timedelta(seconds=LEAD_S + 1)  # drained within the lead only
        for node in ("aws1", "gce1"):
            verified = next(r for r in records if r.node == node and r.phase == "verified")
            assert verified.boot_id == f"boot-{boots[node]}"  # after the event ran: a new boot
            assert not world.is_cordoned(node)
    assert deployed.violations() == []


async def test_a_replica_started_days_after_the_notice_still_drains_ahead_of_the_host_event(
    deployed: Deployed, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A host event is announced once, days ahead (AWS scheduled events come about two weeks ahead, Azure's
    degraded-hardware predictions up to 7 days), and CLOUD carries nothing more until its phase changes. A
    remediator replica started four days after the notice — a rolling update, a rescheduled pod — must still
    know the event and drain ahead of it, not meet it when the host is already rebooting. The replica's
    clock is moved four days on for the start of its CLOUD reader (the one place the age counts)."""
    nc, admin = deployed.nc, deployed.admin
    import nodeheal.runtime.consumer as consumer

    ecs_world = EcsWorld(clock=SystemClock(), reboot_duration=timedelta(seconds=1))
    instance = ecs_world.add_instance("i-m4", region_id="cn-hangzhou")
    async with KubeWorld() as world, EcsEmulator(ecs_world) as ecs:
        world.add_node("m4", zone="z1")
        world.add_pod("web-4", node="m4")
        await add_inventory(nc, admin, "m4", zone="z1", cloud="alibaba", instance_id="i-m4")
        not_before = datetime.now(tz=UTC) + timedelta(seconds=NOTICE_S)
        event = ecs_world.publish_event("i-m4", "SystemMaintenance.Reboot", not_before=not_before)

        shown = _alibaba_shown(ecs_world, event, "m4")

        class FourDaysOn(datetime):
            @classmethod
            def now(cls, tz: object = None) -> datetime:  # type: ignore[override]
                return datetime.now(tz=UTC) + timedelta(days=4)

        settings = make_settings(
            deployed.remediator,
            kube_url=world.url,
            ecs_endpoint=ecs.endpoint,
            cloud_drain_lead_s=LEAD_S,
            cloud_accept_margin_s=1.0,
        ).model_copy(update={"maintenance_interval_s": 0.3})
        async with mirrored(nc, admin, shown):
            await wait_for(lambda: _in_cloud(nc, admin, "m4"), timeout=10)  # announced, before the start
            monkeypatch.setattr(consumer, "datetime", FourDaysOn)
            service = await start_service(settings)
            try:
                async with Probes(nc, admin, "m4", boot_id=lambda: f"boot-{instance.boot_count}"):
                    await wait_for_record(nc, admin, node="m4", action="uncordon", phase="succeeded", timeout=40)
            finally:
                await service.stop()
        records = [r for r in await audit_records(nc, admin) if r.node == "m4"]
        drained = next(r for r in records if r.action == "drain" and r.phase == "succeeded")
        assert drained.episode_id == f"cloud:alibaba:{event.event_id}"
        assert drained.time < not_before  # ahead of the host event, not while it runs
        assert ("default", "web-4") in {(ns, name) for ns, name, _ in world.evictions.calls}
        assert [c.action for c in ecs.calls if c.action == "RebootInstance"] == ["RebootInstance"]
    assert deployed.violations() == []


async def _in_cloud(nc: Client, nats: NatsSettings, node: str) -> bool:
    try:
        await nc.jetstream().get_last_msg(
            f"{nats.stream_prefix}CLOUD", cloud_subject(CLUSTER, node, prefix=nats.prefix)
        )
    except NotFoundError:
        return False
    return True


async def test_one_ec2_scheduled_event_through_health_and_imds_is_one_maintenance(deployed: Deployed) -> None:
    """AWS reports one scheduled EC2 maintenance twice: the Health rule under `<eventArn>#<instance>`, the
    node's IMDS poller under `instance-event-…`. The remediator takes them for one host event (same node,
    action and start, another channel): one episode drains the node once, the event's completion on either
    channel verifies and uncordons it, and the other channel's late word changes nothing."""
    nc, admin = deployed.nc, deployed.admin
    aws = AwsMaintenanceEvents(instance_id="i-0twin", clock=SystemClock())
    boots = {"n": 1}
    async with KubeWorld() as world, AwsImdsEmulator(aws) as imds:
        world.add_node("aws2", zone="z1")
        world.add_pod("web-aws2", node="aws2")
        await add_inventory(nc, admin, "aws2", zone="z1", cloud="aws", instance_id="i-0twin")
        not_before = (datetime.now(tz=UTC) + timedelta(seconds=NOTICE_S)).replace(microsecond=0)
        event = aws.add("system-reboot", not_before=not_before, description="scheduled host reboot")

        def health(status: str) -> list[CloudSystemEvent]:  # what the EventBridge rule delivers
            body = {
                "version": "0",
                "id": f"health-{status}",
                "detail-type": "AWS Health Event",
                "source": "aws.health",
                "account": "123456789012",
                "time": datetime.now(tz=UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
                "region": "us-east-1",
                "resources": ["i-0twin"],
                "detail": {
                    "eventArn": "arn:aws:health:us-east-1::event/EC2/AWS_EC2_SYSTEM_REBOOT_MAINTENANCE_SCHEDULED/e1",
                    "service": "EC2",
                    "eventTypeCode": "AWS_EC2_SYSTEM_REBOOT_MAINTENANCE_SCHEDULED",
                    "eventTypeCategory": "scheduledChange",
                    "statusCode": status,
                    "startTime": not_before.strftime("%a, %d %b %Y %H:%M:%S GMT"),
                    "affectedEntities": [{"entityValue": "i-0twin"}],
                },
            }
            ctx = NormalizeContext(observed_at=datetime.now(tz=UTC), cluster=CLUSTER, node="aws2")
            return normalize_eventbridge(body, ctx)

        imds_shown: list[CloudSystemEvent] = []
        health_shown: list[CloudSystemEvent] = health("upcoming")
        assert {e.action for e in health_shown} == {"reboot"} and health_shown[0].not_before == not_before

        async def poll_imds(stop: asyncio.Event) -> None:
            while not stop.is_set():
                ctx = NormalizeContext(
                    observed_at=datetime.now(tz=UTC), cluster=CLUSTER, node="aws2", instance_id="i-0twin"
                )
                imds_shown[:] = normalize_imds(await _imds_document(imds.url), ctx)
                await asyncio.sleep(0.2)

        settings = make_settings(deployed.remediator, kube_url=world.url, cloud_drain_lead_s=LEAD_S).model_copy(
            update={"maintenance_interval_s": 0.3}
        )
        service = await start_service(settings)
        try:
            async with (
                running(poll_imds),
                mirrored(nc, admin, lambda: [*health_shown, *imds_shown]),
                Probes(nc, admin, "aws2", boot_id=lambda: f"boot-{boots['n']}"),
            ):
                await wait_for_record(nc, admin, node="aws2", action="drain", phase="succeeded", timeout=30)
                await asyncio.sleep(max(0.0, (not_before - datetime.now(tz=UTC)).total_seconds()))
                boots["n"] += 1  # the platform rebooted the host at its time
                aws.complete(event.event_id)  # IMDS says so first
                await wait_for_record(nc, admin, node="aws2", action="uncordon", phase="succeeded", timeout=30)
                health_shown.extend(health("closed"))  # Health's word comes later
                await asyncio.sleep(3.0)  # ten maintenance ticks: nothing more may happen
        finally:
            await service.stop()
        records = [r for r in await audit_records(nc, admin) if r.node == "aws2"]
        assert len({r.episode_id for r in records}) == 1, sorted({r.episode_id or "" for r in records})
        assert [r.phase for r in records if r.action == "drain"] == ["intent", "started", "succeeded"]
        assert [r.phase for r in records if r.action == "uncordon"] == ["intent", "started", "succeeded"]
        assert [effect for _, node, effect in world.effects if node == "aws2"] == [
            "cordon",
            "evict:default/web-aws2",
            "uncordon",
        ]
        assert not world.is_cordoned("aws2")
        ledger = Ledger(await nc.jetstream().key_value(f"{admin.bucket_prefix}-control"))
        assert await ledger.slot_of("aws2") is None
    assert deployed.violations() == []


async def test_a_replica_acts_only_once_its_view_holds_what_cloud_already_said(deployed: Deployed) -> None:
    """A host event announced and then canceled before a replica starts must not be drained for: the replica
    reads what CLOUD holds (here the notice, 3,000 other messages, then the cancellation) before its
    maintenance loop or its diagnosis consumer acts, not while they already run on half a view."""
    nc, admin = deployed.nc, deployed.admin
    async with KubeWorld() as world:
        world.add_node("m9", zone="z1")
        world.add_pod("web-9", node="m9")
        await add_inventory(nc, admin, "m9", zone="z1", cloud="alibaba", instance_id="i-m9")
        js = nc.jetstream()

        def event(node: str, phase: str, *, action: str = "reboot", event_id: str = "e-m9") -> CloudSystemEvent:
            return CloudSystemEvent(
                cluster=CLUSTER,
                node=node,
                cloud="alibaba",
                channel="api_history",
                provider_event_id=event_id,
                provider_event_type="SystemMaintenance.Reboot",
                action=action,  # type: ignore[arg-type]
                cause="planned_maintenance",
                phase=phase,  # type: ignore[arg-type]
                is_terminal=phase == "canceled",
                instance_id=f"i-{node}",
                observed_at=datetime.now(tz=UTC),
                not_before=datetime.now(tz=UTC) + timedelta(seconds=2),
            )

        async def send(ev: CloudSystemEvent) -> None:
            await js.publish(
                cloud_subject(ev.cluster, ev.node, prefix=admin.prefix),
                ev.to_json(),
                headers={"Nats-Msg-Id": ev.dedup_id},
            )

        await send(event("m9", "scheduled"))
        for i in range(3000):  # what else CLOUD holds: other nodes' state changes
            await send(event(f"x{i}", "in_progress", action="state_change", event_id=f"sc-{i}"))
        await send(event("m9", "canceled"))
        settings = make_settings(deployed.remediator, kube_url=world.url, cloud_drain_lead_s=LEAD_S).model_copy(
            update={"maintenance_interval_s": 0.05}
        )
        service = await start_service(settings)
        try:
            await asyncio.sleep(2.0)  # forty maintenance ticks
        finally:
            await service.stop()
        assert [effect for _, node, effect in world.effects if node == "m9"] == []  # never cordoned, never drained
        assert [r for r in await audit_records(nc, admin) if r.node == "m9"] == []
    assert deployed.violations() == []


async def test_the_cloud_view_validates_only_what_it_may_keep_and_skips_a_malformed_message_as_before(
    deployed: Deployed,
) -> None:
    """The replica's CLOUD view keeps host events only, but validated every message in full (9 of the 16 µs a
    message at start, docs/BENCHMARKS.md). It now looks at each message's head first (`FleetView.keeps_cloud`):
    a state change of an event it does not keep is passed over unvalidated (here one whose `observed_at` is not
    a time: before, validated and counted as skipped), while a message it may keep or cannot tell about is
    validated in full as before: bad JSON, an action no event has, a host event with a phase none has, and a
    later report of a kept event (whatever its action) that does not validate are each skipped and counted."""
    nc, admin = deployed.nc, deployed.admin
    js = nc.jetstream()
    now = datetime.now(tz=UTC)

    def event(node: str, event_id: str, *, action: str = "reboot", **update: object) -> CloudSystemEvent:
        ev = CloudSystemEvent(
            cluster=CLUSTER,
            node=node,
            cloud="alibaba",
            channel="api_history",
            provider_event_id=event_id,
            provider_event_type="SystemMaintenance.Reboot",
            action=action,  # type: ignore[arg-type]
            cause="planned_maintenance",
            phase="scheduled",
            instance_id=f"i-{node}",
            observed_at=now,
            not_before=now + timedelta(days=1),
        )
        return ev.model_copy(update=update)

    def broken(ev: CloudSystemEvent, **fields: object) -> bytes:
        body = json.loads(ev.to_json())
        body.update(fields)
        return json.dumps(body).encode()

    host = event("m1", "e-m1")
    later = event("m1", "e-m1", action="state_change", observed_at=now + timedelta(seconds=1))
    bodies = [
        host.to_json(),  # kept
        broken(event("x1", "sc-1", action="state_change"), observed_at="not a time"),  # passed over: not validated
        event("x2", "sc-2", action="state_change").to_json(),  # passed over
        b"{not json",  # skipped
        broken(event("x3", "sc-3"), action="explode"),  # skipped
        broken(event("m2", "e-m2"), phase="bogus"),  # a host event that does not validate: skipped
        broken(later, observed_at="not a time"),  # a report of a kept event that does not validate: skipped
        later.to_json(),  # a report of a kept event: validated and kept, as before
    ]
    for i, body in enumerate(bodies):
        await js.publish(cloud_subject(CLUSTER, f"n{i}", prefix=admin.prefix), body, headers={"Nats-Msg-Id": f"m-{i}"})
    service = await start_service(make_settings(deployed.remediator, kube_url=None))
    try:  # the view is whole once the start returned (ConsumerRuntime.start reads CLOUD first)
        assert service.consumers.skipped == 4
        assert {node: [(k[1], ev.action) for k, ev in evs.items()] for node, evs in service.view.cloud.items()} == {
            "m1": [("e-m1", "state_change")]
        }
    finally:
        await service.stop()
    assert deployed.violations() == []
