"""The ECS emulator driven through the real Alibaba SDK (alibabacloud_ecs20140526) over HTTP."""

from __future__ import annotations

import asyncio
import json
import urllib.error
import urllib.request
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import pytest
from alibabacloud_ecs20140526 import models as ecs
from alibabacloud_ecs20140526.client import Client
from alibabacloud_tea_openapi.exceptions import ClientException

from nodeheal.sim.clock import ManualClock, SystemClock
from nodeheal.sim.ecs_api import EcsEmulator, EcsWorld, WorldChange

REGION = "cn-hangzhou"
START = datetime(2025, 3, 1, 8, 0, 0, tzinfo=UTC)


@pytest.fixture
def world() -> EcsWorld:
    w = EcsWorld(
        clock=ManualClock(START),
        reboot_duration=timedelta(seconds=60),
        redeploy_duration=timedelta(minutes=5),
    )
    w.add_instance("i-node1", region_id=REGION)
    w.add_instance("i-node2", region_id=REGION)
    w.add_instance("i-other-region", region_id="cn-beijing")
    return w


@pytest.fixture
async def emu(world: EcsWorld) -> AsyncIterator[EcsEmulator]:
    async with EcsEmulator(world) as emulator:
        yield emulator


@pytest.fixture
def client(emu: EcsEmulator) -> Client:
    return Client(emu.sdk_config(region_id=REGION))


def _clock(world: EcsWorld) -> ManualClock:
    assert isinstance(world.clock, ManualClock)
    return world.clock


async def _history(client: Client, **kwargs: object) -> ecs.DescribeInstanceHistoryEventsResponseBody:
    request = ecs.DescribeInstanceHistoryEventsRequest(region_id=REGION, **kwargs)
    response = await client.describe_instance_history_events_async(request)
    assert response.status_code == 200
    return response.body


def _statuses(body: ecs.DescribeInstanceHistoryEventsResponseBody) -> dict[str, str]:
    return {e.event_id: e.event_cycle_status.name for e in body.instance_system_event_set.instance_system_event_type}


OPEN = ["Inquiring", "Scheduled", "Executing"]


async def test_history_default_returns_only_finished_events_and_open_ones_need_the_status_filter(
    world: EcsWorld, emu: EcsEmulator, client: Client
) -> None:
    scheduled = world.publish_event("i-node1", "SystemMaintenance.Reboot", not_before=START + timedelta(hours=24))
    inquiring = world.publish_event(
        "i-node1", "SystemMaintenance.Redeploy", status="Inquiring", not_before=START + timedelta(hours=48)
    )
    done = world.publish_event("i-node2", "SystemMaintenance.Reboot", not_before=START + timedelta(minutes=1))
    world.advance(timedelta(minutes=5))  # `done` executed: reboot of i-node2 ran and finished

    default = await _history(client)
    assert _statuses(default) == {done.event_id: "Executed"}

    active = await _history(client, instance_event_cycle_status=OPEN)
    assert _statuses(active) == {scheduled.event_id: "Scheduled", inquiring.event_id: "Inquiring"}
    inquiring_row = next(
        e for e in active.instance_system_event_set.instance_system_event_type if e.event_id == inquiring.event_id
    )
    assert inquiring_row.extended_attribute.can_accept == "true"
    assert inquiring_row.instance_id == "i-node1"
    assert inquiring_row.event_type.name == "SystemMaintenance.Redeploy"
    assert inquiring_row.not_before == "2025-03-03T08:00:00Z"

    call = world.calls_to("DescribeInstanceHistoryEvents")[-1]
    assert call.params["RegionId"] == REGION
    assert [call.params[f"InstanceEventCycleStatus.{i}"] for i in (1, 2, 3)] == OPEN
    assert call.access_key_id == "sim-access-key-id"


async def test_history_filters_by_instance_event_id_type_and_region(world: EcsWorld, client: Client) -> None:
    a = world.publish_event("i-node1", "SystemMaintenance.Reboot")
    b = world.publish_event("i-node2", "SystemMaintenance.Redeploy")
    world.publish_event("i-other-region", "SystemMaintenance.Reboot")

    by_instance = await _history(client, instance_id="i-node2", instance_event_cycle_status=OPEN)
    assert set(_statuses(by_instance)) == {b.event_id}
    by_id = await _history(client, event_id=[a.event_id], instance_event_cycle_status=["Scheduled"])
    assert set(_statuses(by_id)) == {a.event_id}
    by_type = await _history(client, event_type="SystemMaintenance.Redeploy", instance_event_cycle_status=OPEN)
    assert set(_statuses(by_type)) == {b.event_id}
    # cn-beijing's event never shows in cn-hangzhou
    everything = await _history(client, instance_event_cycle_status=OPEN)
    assert set(_statuses(everything)) == {a.event_id, b.event_id}


async def test_history_paging_by_page_number_and_by_next_token(world: EcsWorld, client: Client) -> None:
    ids = set()
    for _ in range(23):
        ids.add(
            world.publish_event("i-node1", "SystemMaintenance.Reboot", not_before=START + timedelta(hours=1)).event_id
        )
        _clock(world).advance(timedelta(seconds=1))  # distinct publish times

    seen: list[str] = []
    for page in (1, 2, 3):
        body = await _history(client, instance_event_cycle_status=["Scheduled"], page_size=10, page_number=page)
        assert body.total_count == 23
        assert body.page_number == page
        seen += list(_statuses(body))
    assert len(seen) == 23 and set(seen) == ids

    token_seen: list[str] = []
    token: str | None = None
    pages = 0
    while True:
        body = await _history(client, instance_event_cycle_status=["Scheduled"], max_results=10, next_token=token)
        token_seen += list(_statuses(body))
        pages += 1
        if not body.next_token:
            break
        token = body.next_token
    assert pages == 3 and token_seen == seen

    with pytest.raises(ClientException) as too_big:
        await _history(client, page_size=101)
    assert too_big.value.status_code == 400 and "PageSize" in too_big.value.code
    with pytest.raises(ClientException) as bad_token:
        await _history(client, next_token="not-a-token", max_results=5)
    assert bad_token.value.code == "InvalidParameter.NextToken"


async def test_full_status_shows_only_scheduled_events(world: EcsWorld, client: Client) -> None:
    scheduled = world.publish_event("i-node1", "SystemMaintenance.Reboot", not_before=START + timedelta(hours=24))
    world.publish_event("i-node1", "SystemMaintenance.Redeploy", status="Inquiring")
    world.inject_failure("i-node2", "SystemFailure.Reboot")  # Executing

    response = await client.describe_instances_full_status_async(
        ecs.DescribeInstancesFullStatusRequest(region_id=REGION, instance_id=["i-node1", "i-node2"])
    )
    rows = {r.instance_id: r for r in response.body.instance_full_status_set.instance_full_status_type}
    assert set(rows) == {"i-node1", "i-node2"}
    node1 = rows["i-node1"]
    assert [e.event_id for e in node1.scheduled_system_event_set.scheduled_system_event_type] == [scheduled.event_id]
    assert node1.scheduled_system_event_set.scheduled_system_event_type[0].event_cycle_status.name == "Scheduled"
    assert node1.status.name == "Running" and node1.health_status.name == "Warning"
    node2 = rows["i-node2"]
    assert node2.scheduled_system_event_set.scheduled_system_event_type == []  # the Executing failure is invisible
    assert node2.status.name == "Stopping" and node2.health_status.name == "Maintaining"


async def test_reboot_before_not_before_avoids_the_maintenance_reboot(
    world: EcsWorld, emu: EcsEmulator, client: Client
) -> None:
    changes: list[WorldChange] = []
    world.on_change(changes.append)
    event = world.publish_event("i-node1", "SystemMaintenance.Reboot", not_before=START + timedelta(hours=24))
    original_host = world.instances["i-node1"].host_id

    response = await client.reboot_instance_async(ecs.RebootInstanceRequest(instance_id="i-node1", force_stop=False))
    assert response.body.request_id
    call = await emu.wait_for_call("RebootInstance")
    assert call.params == {"InstanceId": "i-node1", "ForceStop": "False"}  # the Python SDK sends str(bool)
    assert world.instances["i-node1"].status == "Stopping"
    assert [c.kind for c in changes if c.instance_id == "i-node1"][-1] == "instance_down"

    # a second reboot while the first runs is refused the way ECS refuses it
    with pytest.raises(ClientException) as busy:
        await client.reboot_instance_async(ecs.RebootInstanceRequest(instance_id="i-node1"))
    assert (busy.value.code, busy.value.status_code) == ("IncorrectInstanceStatus", 403)

    world.advance(timedelta(seconds=60))
    assert world.instances["i-node1"].status == "Running"
    assert world.instances["i-node1"].host_id == original_host
    body = await _history(client, event_id=[event.event_id])
    row = body.instance_system_event_set.instance_system_event_type[0]
    assert row.event_cycle_status.name == "Avoided"
    assert row.event_finish_time == "2025-03-01T08:01:00Z"
    assert row.extended_attribute.response_result == "true"
    up = [c for c in changes if c.kind == "instance_up"]
    assert len(up) == 1 and up[0].initiator == "api" and up[0].reason == "reboot" and not up[0].local_disks_wiped


async def test_not_before_passes_and_the_platform_reboots(world: EcsWorld, client: Client) -> None:
    changes: list[WorldChange] = []
    world.on_change(changes.append)
    event = world.publish_event("i-node1", "SystemMaintenance.Reboot", not_before=START + timedelta(minutes=10))
    world.advance(timedelta(minutes=10, seconds=1))
    executing = await _history(client, instance_event_cycle_status=["Executing"])
    assert _statuses(executing) == {event.event_id: "Executing"}
    down = [c for c in changes if c.kind == "instance_down"]
    assert len(down) == 1 and down[0].initiator == "platform" and down[0].at == START + timedelta(minutes=10)

    # too late: RebootInstance cannot avoid it any more (and the instance is busy anyway)
    with pytest.raises(ClientException) as late:
        await client.reboot_instance_async(ecs.RebootInstanceRequest(instance_id="i-node1"))
    assert late.value.code == "IncorrectInstanceStatus"

    world.advance(timedelta(minutes=2))
    done = await _history(client, event_id=[event.event_id])
    assert _statuses(done) == {event.event_id: "Executed"}
    assert world.instances["i-node1"].boot_count == 1


async def test_inquiring_accept_executes_the_default_action(world: EcsWorld, emu: EcsEmulator, client: Client) -> None:
    event = world.publish_event("i-node1", "SystemMaintenance.Redeploy", status="Inquiring")
    host_before = world.instances["i-node1"].host_id
    world.advance(timedelta(days=7))  # Inquiring has no time limit: nothing happens by itself
    assert world.events[event.event_id].status == "Inquiring"

    await client.accept_inquired_system_event_async(
        ecs.AcceptInquiredSystemEventRequest(region_id=REGION, event_id=event.event_id)
    )
    call = await emu.wait_for_call("AcceptInquiredSystemEvent")
    assert call.params == {"RegionId": REGION, "EventId": event.event_id}
    executing = await _history(client, instance_event_cycle_status=["Executing"])
    assert _statuses(executing) == {event.event_id: "Executing"}

    with pytest.raises(ClientException) as again:
        await client.accept_inquired_system_event_async(
            ecs.AcceptInquiredSystemEventRequest(region_id=REGION, event_id=event.event_id)
        )
    assert (again.value.code, again.value.status_code) == ("InvalidEventId.NoInquiringEventFound", 403)

    world.advance(timedelta(minutes=5))
    assert world.events[event.event_id].status == "Executed"
    instance = world.instances["i-node1"]
    assert instance.host_id != host_before and instance.local_disk_generation == 1


async def test_accept_errors_unknown_event_and_missing_parameters(client: Client) -> None:
    with pytest.raises(ClientException) as unknown:
        await client.accept_inquired_system_event_async(
            ecs.AcceptInquiredSystemEventRequest(region_id=REGION, event_id="e-doesnotexist")
        )
    assert (unknown.value.code, unknown.value.status_code) == ("InvalidEventId.NotFound", 404)
    assert unknown.value.request_id
    with pytest.raises(ClientException) as no_region:
        await client.accept_inquired_system_event_async(ecs.AcceptInquiredSystemEventRequest(event_id="e-x"))
    assert (no_region.value.code, no_region.value.status_code) == ("MissingRegionId", 400)
    with pytest.raises(ClientException) as no_event:
        await client.accept_inquired_system_event_async(ecs.AcceptInquiredSystemEventRequest(region_id=REGION))
    assert no_event.value.code == "MissingEventId"


async def test_redeploy_moves_the_instance_wipes_local_disks_and_answers_the_event(
    world: EcsWorld, emu: EcsEmulator, client: Client
) -> None:
    changes: list[WorldChange] = []
    world.on_change(changes.append)
    event = world.publish_event("i-node2", "SystemMaintenance.Redeploy", not_before=START + timedelta(hours=30))
    host_before = world.instances["i-node2"].host_id

    response = await client.redeploy_instance_async(ecs.RedeployInstanceRequest(instance_id="i-node2", force_stop=True))
    assert response.body.task_id and response.body.task_id.startswith("t-")
    assert (await emu.wait_for_call("RedeployInstance")).params == {"InstanceId": "i-node2", "ForceStop": "True"}

    world.advance(timedelta(minutes=4))
    assert world.instances["i-node2"].status == "Starting"
    world.advance(timedelta(minutes=1))
    instance = world.instances["i-node2"]
    assert instance.status == "Running" and instance.host_id != host_before and instance.local_disk_generation == 1
    assert world.events[event.event_id].status == "Avoided"
    up = next(c for c in changes if c.kind == "instance_up")
    assert up.reason == "redeploy" and up.local_disks_wiped and up.host_id == instance.host_id


async def test_unknown_instance_and_dry_run(client: Client) -> None:
    with pytest.raises(ClientException) as unknown:
        await client.reboot_instance_async(ecs.RebootInstanceRequest(instance_id="i-nope"))
    assert (unknown.value.code, unknown.value.status_code) == ("InvalidInstanceId.NotFound", 404)
    with pytest.raises(ClientException) as unknown_redeploy:
        await client.redeploy_instance_async(ecs.RedeployInstanceRequest(instance_id="i-nope"))
    assert unknown_redeploy.value.code == "InvalidInstanceId.NotFound"
    with pytest.raises(ClientException) as dry:
        await client.reboot_instance_async(ecs.RebootInstanceRequest(instance_id="i-node1", dry_run=True))
    assert dry.value.code == "DryRunOperation"
    with pytest.raises(ClientException) as missing:
        await client.reboot_instance_async(ecs.RebootInstanceRequest())
    assert (missing.value.code, missing.value.status_code) == ("MissingInstanceId", 400)


async def test_failure_event_starts_executing_and_reboots_at_once(world: EcsWorld, client: Client) -> None:
    event = world.inject_failure("i-node1", "SystemFailure.Reboot")
    assert world.instances["i-node1"].status == "Stopping"
    body = await _history(client, instance_event_cycle_status=OPEN)
    row = body.instance_system_event_set.instance_system_event_type[0]
    assert (row.event_id, row.event_cycle_status.name, row.event_type.code) == (event.event_id, "Executing", 65)
    world.advance(timedelta(seconds=60))
    assert world.events[event.event_id].status == "Executed"
    assert world.instances["i-node1"].status == "Running"


async def test_simulated_events_change_status_only(world: EcsWorld, emu: EcsEmulator, client: Client) -> None:
    not_before = START + timedelta(hours=1)
    response = await client.create_simulated_system_events_async(
        ecs.CreateSimulatedSystemEventsRequest(
            region_id=REGION,
            event_type="SystemMaintenance.Reboot",
            instance_id=["i-node1", "i-node2"],
            not_before=not_before.strftime("%Y-%m-%dT%H:%M:%SZ"),
        )
    )
    event_ids = response.body.event_id_set.event_id
    assert len(event_ids) == 2
    call = await emu.wait_for_call("CreateSimulatedSystemEvents")
    assert call.params["InstanceId.1"] == "i-node1" and call.params["InstanceId.2"] == "i-node2"
    body = await _history(client, event_id=event_ids, instance_event_cycle_status=["Scheduled"])
    assert {r.reason for r in body.instance_system_event_set.instance_system_event_type} == {"A simulated event."}

    await client.cancel_simulated_system_events_async(
        ecs.CancelSimulatedSystemEventsRequest(region_id=REGION, event_id=[event_ids[1]])
    )
    world.advance(timedelta(hours=1))
    assert world.events[event_ids[0]].status == "Executed"
    assert world.events[event_ids[1]].status == "Canceled"
    assert world.instances["i-node1"].boot_count == 0  # a drill never reboots anything

    with pytest.raises(ClientException) as bad_type:
        await client.create_simulated_system_events_async(
            ecs.CreateSimulatedSystemEventsRequest(
                region_id=REGION,
                event_type="Nonsense.Event",
                instance_id=["i-node1"],
                not_before="2025-03-02T00:00:00Z",
            )
        )
    assert bad_type.value.code == "InvalidParameter.EventType"


def _raw_post(url: str, *, query: str, headers: dict[str, str]) -> tuple[int, dict[str, str]]:
    request = urllib.request.Request(f"{url}?{query}", method="POST", headers=headers, data=b"")
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


async def test_requests_without_credentials_or_signature_are_rejected(emu: EcsEmulator) -> None:
    headers = {"x-acs-action": "DescribeInstanceHistoryEvents", "x-acs-version": "2014-05-26"}
    status, body = await asyncio.to_thread(_raw_post, emu.url, query="RegionId=cn-hangzhou", headers=headers)
    assert (status, body["Code"]) == (400, "MissingAccessKeyId")
    assert body["RequestId"] and body["HostId"] and body["Message"]

    unsigned = {**headers, "Authorization": "ACS3-HMAC-SHA256 Credential=AK,SignedHeaders=host"}
    status, body = await asyncio.to_thread(_raw_post, emu.url, query="RegionId=cn-hangzhou", headers=unsigned)
    assert (status, body["Code"]) == (400, "IncompleteSignature")

    # the older V2 RPC form: everything in the query string
    v2 = "Action=DescribeInstancesFullStatus&Version=2014-05-26&AccessKeyId=AK&Signature=x&RegionId=cn-hangzhou"
    status, body = await asyncio.to_thread(_raw_post, emu.url, query=v2, headers={})
    assert status == 200 and body["TotalCount"] == 2

    status, body = await asyncio.to_thread(
        _raw_post, emu.url, query="Action=CreateInstance&Version=2014-05-26&AccessKeyId=AK&Signature=x", headers={}
    )
    assert (status, body["Code"]) == (404, "InvalidAction.NotFound")


async def test_unknown_access_key_is_rejected_when_keys_are_configured(world: EcsWorld) -> None:
    async with EcsEmulator(world, access_key_ids={"good-key"}) as emulator:
        bad = Client(emulator.sdk_config(region_id=REGION, access_key_id="bad-key"))
        with pytest.raises(ClientException) as rejected:
            await bad.describe_instances_full_status_async(ecs.DescribeInstancesFullStatusRequest(region_id=REGION))
        assert (rejected.value.code, rejected.value.status_code) == ("InvalidAccessKeyId.NotFound", 404)
        good = Client(emulator.sdk_config(region_id=REGION, access_key_id="good-key"))
        response = await good.describe_instances_full_status_async(
            ecs.DescribeInstancesFullStatusRequest(region_id=REGION)
        )
        assert response.body.total_count == 2


async def test_wall_clock_world_finishes_reboots_without_api_traffic() -> None:
    world = EcsWorld(clock=SystemClock(), reboot_duration=timedelta(milliseconds=300))
    world.add_instance("i-live", region_id=REGION)
    came_up = asyncio.Event()
    world.on_change(lambda c: came_up.set() if c.kind == "instance_up" else None)
    async with EcsEmulator(world, tick_interval_s=0.05) as emulator:
        client = Client(emulator.sdk_config(region_id=REGION))
        await client.reboot_instance_async(ecs.RebootInstanceRequest(instance_id="i-live"))
        await asyncio.wait_for(came_up.wait(), timeout=10)
    assert world.instances["i-live"].status == "Running"


async def test_full_status_pages_through_a_large_region() -> None:
    big = EcsWorld(clock=ManualClock(START))
    for n in range(250):
        big.add_instance(f"i-fleet{n:04d}", region_id=REGION)
    big.publish_event("i-fleet0123", "SystemMaintenance.Redeploy", not_before=START + timedelta(hours=24))
    async with EcsEmulator(big) as emulator:
        fleet_client = Client(emulator.sdk_config(region_id=REGION))
        seen: list[str] = []
        for page in (1, 2, 3):
            response = await fleet_client.describe_instances_full_status_async(
                ecs.DescribeInstancesFullStatusRequest(region_id=REGION, page_size=100, page_number=page)
            )
            assert response.body.total_count == 250
            seen += [r.instance_id for r in response.body.instance_full_status_set.instance_full_status_type]
        assert seen == sorted(f"i-fleet{n:04d}" for n in range(250))
        only_events = await fleet_client.describe_instances_full_status_async(
            ecs.DescribeInstancesFullStatusRequest(region_id=REGION, event_type="SystemMaintenance.Redeploy")
        )
        rows = only_events.body.instance_full_status_set.instance_full_status_type
        assert [r.instance_id for r in rows] == ["i-fleet0123"]


async def test_release_and_recreate_from_a_launch_template_through_the_sdk(world: EcsWorld, client: Client) -> None:
    template = world.add_launch_template("lt-pool", node_pool="pool-a", region_id="cn-hangzhou", versions=(1, 3))
    running = next(iter(world.instances))
    with pytest.raises(ClientException) as refused:  # a Running instance is released only with Force
        await client.delete_instance_async(ecs.DeleteInstanceRequest(instance_id=running))
    assert refused.value.code == "IncorrectInstanceStatus"
    await client.delete_instance_async(ecs.DeleteInstanceRequest(instance_id=running, force=True))
    assert running not in world.instances and [r.instance_id for r in world.releases] == [running]
    with pytest.raises(ClientException) as gone:
        await client.delete_instance_async(ecs.DeleteInstanceRequest(instance_id=running, force=True))
    assert gone.value.code == "InvalidInstanceId.NotFound"

    request = ecs.RunInstancesRequest(
        region_id="cn-hangzhou", launch_template_id=template.template_id, launch_template_version=3, amount=1,
        client_token="act-1",
    )  # fmt: skip
    first = await client.run_instances_async(request)
    again = await client.run_instances_async(request)  # the same ClientToken: nothing new
    (new,) = first.body.instance_id_sets.instance_id_set
    assert again.body.instance_id_sets.instance_id_set == [new]
    assert world.instances[new].status == "Running" and len(world.created) == 1 and world.created[0].version == 3
    with pytest.raises(ClientException) as no_version:
        await client.run_instances_async(
            ecs.RunInstancesRequest(region_id="cn-hangzhou", launch_template_id="lt-pool", launch_template_version=2)
        )
    assert no_version.value.code == "InvalidLaunchTemplateVersion.NotFound"
