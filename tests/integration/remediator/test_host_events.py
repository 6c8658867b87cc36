"""Issue 13 item 5: host events are obeyed, not undone — on a real nats-server through the real remediator,
with the cloud emulators' events normalized by the real cloud-events normalizers and realistic notices
scaled down (an Alibaba SystemMaintenance.Reboot 24 h ahead with a 15 min drain lead → 12 s with 6 s;
an Azure Reboot with its 15 min minimum notice → 12 s). Side effects are counted at the emulators."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta

import pytest
from nats.aio.client import Client

from nodeheal.cloud_events.normalize.alibaba import normalize_api
from nodeheal.cloud_events.normalize.azure import AzureDocumentTracker
from nodeheal.cloud_events.normalize.common import NormalizeContext
from nodeheal.remediator.settings import CloudSettings
from nodeheal.runtime.jetstream import publish_model
from nodeheal.runtime.settings import NatsSettings
from nodeheal.schemas.cloud import CloudSystemEvent
from nodeheal.schemas.subjects import cloud_subject
from nodeheal.sim.azure_imds import AzureImdsEmulator, AzureScheduledEvents
from nodeheal.sim.clock import SystemClock
from nodeheal.sim.ecs_api import EcsEmulator, EcsWorld, render_event
from nodeheal.sim.kube import KubeWorld
from tests.integration.remediator.harness import (
    CLUSTER,
    Probes,
    add_inventory,
    audit_records,
    diagnosis,
    make_settings,
    publish_diagnosis,
    start_service,
    wait_for,
    wait_for_record,
)

pytestmark = pytest.mark.nats

NOTICE_S = 12.0
LEAD_S = 6.0


async def _mirror(
    nc: Client, nats: NatsSettings, source: Callable[[], list[CloudSystemEvent]], stop: asyncio.Event
) -> None:
    """What the cloud-events poller does: normalize what the cloud shows, publish each transition once."""
    seen: set[str] = set()
    while not stop.is_set():
        for ev in source():
            if ev.dedup_id not in seen:
                seen.add(ev.dedup_id)
                await publish_model(
                    nc.jetstream(), cloud_subject(ev.cluster, ev.node, prefix=nats.prefix), ev, msg_id=ev.dedup_id
                )
        await asyncio.sleep(0.2)


@contextlib.asynccontextmanager
async def _mirrored(
    nc: Client, nats: NatsSettings, source: Callable[[], list[CloudSystemEvent]]
) -> AsyncIterator[None]:
    stop = asyncio.Event()
    task = asyncio.create_task(_mirror(nc, nats, source, stop))
    try:
        yield
    finally:
        stop.set()
        await task


async def test_alibaba_scheduled_reboot_is_drained_within_the_lead_accepted_with_reboot_and_uncordoned_after(
    topology_ready: NatsSettings, nc: Client
) -> None:
    ecs_world = EcsWorld(clock=SystemClock(), reboot_duration=timedelta(seconds=1))
    instance = ecs_world.add_instance("i-m1", region_id="cn-hangzhou")
    async with KubeWorld() as world, EcsEmulator(ecs_world) as ecs:
        world.add_node("m1", zone="z1")
        world.add_pod("web-1", node="m1")
        await add_inventory(nc, topology_ready, "m1", zone="z1", cloud="alibaba", instance_id="i-m1")
        not_before = datetime.now(tz=UTC) + timedelta(seconds=NOTICE_S)
        event = ecs_world.publish_event("i-m1", "SystemMaintenance.Reboot", not_before=not_before)

        def shown() -> list[CloudSystemEvent]:
            body = {"InstanceSystemEventSet": {"InstanceSystemEventType": [render_event(ecs_world, event)]}}
            ctx = NormalizeContext(observed_at=datetime.now(tz=UTC), cluster=CLUSTER, node="m1")
            return normalize_api(body, ctx)

        settings = make_settings(
            topology_ready,
            kube_url=world.url,
            ecs_endpoint=ecs.endpoint,
            cloud_drain_lead_s=LEAD_S,
            cloud_accept_margin_s=1.0,
        ).model_copy(update={"maintenance_interval_s": 0.3})
        service = await start_service(settings)
        try:
            async with (
                _mirrored(nc, topology_ready, shown),
                Probes(nc, topology_ready, "m1", boot_id=lambda: f"boot-{instance.boot_count}"),
            ):
                uncordon = await wait_for_record(
                    nc, topology_ready, node="m1", action="uncordon", phase="succeeded", timeout=40
                )
                assert uncordon.episode_id == f"cloud:alibaba:{event.event_id}"
        finally:
            await service.stop()
        records = [r for r in await audit_records(nc, topology_ready) if r.node == "m1"]
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


async def test_azure_reboot_is_started_early_with_start_requests_after_the_drain(
    topology_ready: NatsSettings, nc: Client
) -> None:
    events = AzureScheduledEvents(clock=SystemClock())
    async with KubeWorld() as world, AzureImdsEmulator(events) as imds:
        world.add_node("vm1", zone="z1")
        await add_inventory(nc, topology_ready, "vm1", zone="z1", cloud="azure", instance_id="vm1")
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
            topology_ready, kube_url=world.url, cloud_drain_lead_s=LEAD_S, cloud_accept_margin_s=1.0
        ).model_copy(
            update={
                "maintenance_interval_s": 0.3,
                "cloud": CloudSettings(provider="auto", azure_imds_url=imds.url),
            }
        )
        service = await start_service(settings)
        try:
            async with (
                _mirrored(nc, topology_ready, shown),
                Probes(nc, topology_ready, "vm1", boot_id=lambda: f"boot-{boots['n']}"),
            ):
                await wait_for_record(nc, topology_ready, node="vm1", action="uncordon", phase="succeeded", timeout=40)
        finally:
            await service.stop()
        started = [c for c in events.changes if c.kind == "started"]
        assert [c.initiator for c in started] == ["start_request"]  # accepted early, once, by StartRequests
        assert started[0].event_id == scheduled.event_id
        records = [r for r in await audit_records(nc, topology_ready) if r.node == "vm1"]
        accept = [r for r in records if r.action == "accept_cloud_event" and r.phase == "started"]
        drained = next(r for r in records if r.action == "drain" and r.phase == "succeeded")
        assert len(accept) == 1 and accept[0].time >= drained.time
        assert not world.is_cordoned("vm1")


async def test_a_diagnosis_after_the_host_reboot_ran_verifies_instead_of_rebooting_again(
    topology_ready: NatsSettings, nc: Client
) -> None:
    ecs_world = EcsWorld(clock=SystemClock(), reboot_duration=timedelta(seconds=1))
    ecs_world.add_instance("i-m2", region_id="cn-hangzhou")
    async with KubeWorld() as world, EcsEmulator(ecs_world) as ecs:
        world.add_node("m2", zone="z1")
        await add_inventory(nc, topology_ready, "m2", zone="z1", cloud="alibaba", instance_id="i-m2")
        event = ecs_world.publish_event(
            "i-m2", "SystemMaintenance.Reboot", not_before=datetime.now(tz=UTC) + timedelta(seconds=1)
        )

        def shown() -> list[CloudSystemEvent]:
            body = {"InstanceSystemEventSet": {"InstanceSystemEventType": [render_event(ecs_world, event)]}}
            ctx = NormalizeContext(observed_at=datetime.now(tz=UTC), cluster=CLUSTER, node="m2")
            return normalize_api(body, ctx)

        async def executed() -> bool:
            return event.status == "Executed"

        await wait_for(executed, what="the host reboot ran (the emulator's platform did it)")
        service = await start_service(make_settings(topology_ready, kube_url=world.url, ecs_endpoint=ecs.endpoint))
        try:
            async with _mirrored(nc, topology_ready, shown), Probes(nc, topology_ready, "m2", boot_id="boot-after"):
                await asyncio.sleep(0.5)  # the mirror published the completed event
                # the diagnoser's ladder for a completed host event: give the node time, then our own reboot
                d = diagnosis("m2", [("wait_for_cloud_event", event.event_id), "reboot"])
                await publish_diagnosis(nc, topology_ready, d)
                await wait_for_record(nc, topology_ready, node="m2", action="wait_for_cloud_event", phase="verified")
        finally:
            await service.stop()
        assert [c.action for c in ecs.calls if c.action in ("RebootInstance", "RedeployInstance")] == []
