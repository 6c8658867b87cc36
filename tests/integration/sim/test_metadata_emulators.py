"""Azure IMDS, AWS IMDSv2 and GCE metadata emulators driven over HTTP with aiohttp, as a node agent would."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import aiohttp
import pytest

from nodeheal.sim.aws_imds import AwsImdsEmulator, AwsMaintenanceEvents
from nodeheal.sim.azure_imds import AzureChange, AzureImdsEmulator, AzureScheduledEvents
from nodeheal.sim.clock import ManualClock
from nodeheal.sim.gce_metadata import GceMetadata, GceMetadataEmulator

START = datetime(2025, 3, 1, 8, 0, 0, tzinfo=UTC)
SAMPLES = Path(__file__).resolve().parents[2] / "data" / "cloud-events"
META = {"Metadata": "true"}


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=20)) as session:
        yield session


# ------------------------------------------------------------------------------------------------ Azure


@pytest.fixture
def azure() -> AzureScheduledEvents:
    return AzureScheduledEvents(clock=ManualClock(START))


async def _doc(http: aiohttp.ClientSession, imds: AzureImdsEmulator) -> dict[str, object]:
    async with http.get(imds.scheduled_events_url, headers=META) as response:
        assert response.status == 200
        return dict(await response.json())


async def test_azure_document_has_the_real_shape(http: aiohttp.ClientSession, azure: AzureScheduledEvents) -> None:
    async with AzureImdsEmulator(azure) as imds:
        empty = await _doc(http, imds)
        assert empty == {"DocumentIncarnation": 1, "Events": []}

        azure.schedule("Freeze", resources=["WestNO_0", "WestNO_1"], duration_s=5)
        doc = await _doc(http, imds)
        assert doc["DocumentIncarnation"] == 2
        (event,) = doc["Events"]  # type: ignore[misc]
        sample = json.loads((SAMPLES / "azure-imds-freeze-scheduled-1.json").read_text())["Events"][0]
        assert set(event) == set(sample)
        assert event["NotBefore"] == "Sat, 01 Mar 2025 08:15:00 GMT"  # RFC 1123, 15 min minimum notice for Freeze
        assert (event["EventStatus"], event["EventType"], event["ResourceType"]) == (
            "Scheduled",
            "Freeze",
            "VirtualMachine",
        )
        assert event["Resources"] == ["WestNO_0", "WestNO_1"] and event["DurationInSeconds"] == 5

        async with http.get(f"{imds.url}/metadata/scheduledevents?api-version=2017-11-01", headers=META) as old:
            (old_event,) = (await old.json())["Events"]
        assert "EventSource" not in old_event and "DurationInSeconds" not in old_event


async def test_azure_rejects_requests_without_the_metadata_header_or_api_version(
    http: aiohttp.ClientSession, azure: AzureScheduledEvents
) -> None:
    async with AzureImdsEmulator(azure) as imds:
        async with http.get(imds.scheduled_events_url) as no_header:
            assert no_header.status == 400
            assert "metadata header" in (await no_header.json())["error"]
        async with http.get(f"{imds.url}/metadata/scheduledevents", headers=META) as no_version:
            assert no_version.status == 400
        async with http.get(f"{imds.url}/metadata/scheduledevents?api-version=1999-01-01", headers=META) as bad:
            assert bad.status == 400
        async with http.get(imds.scheduled_events_url, headers={**META, "X-Forwarded-For": "10.0.0.1"}) as proxied:
            assert proxied.status == 400


async def test_azure_start_requests_starts_the_event_which_then_disappears(
    http: aiohttp.ClientSession, azure: AzureScheduledEvents
) -> None:
    changes: list[AzureChange] = []
    azure.on_change(changes.append)
    event = azure.schedule("Reboot", resources=["vmss_3"], duration_s=120)
    async with AzureImdsEmulator(azure, vm_name="vmss_3") as imds:
        body = {"StartRequests": [{"EventId": event.event_id}]}
        async with http.post(imds.scheduled_events_url, headers=META, json=body) as started:
            assert started.status == 200
        call = await imds.wait_for_call(lambda c: c.method == "POST")
        assert json.loads(call.body) == body and call.headers["Metadata"] == "true"

        doc = await _doc(http, imds)
        (row,) = doc["Events"]  # type: ignore[misc]
        assert (row["EventStatus"], row["NotBefore"]) == ("Started", "")
        assert [c.kind for c in changes] == ["scheduled", "started"] and changes[-1].initiator == "start_request"

        incarnation = doc["DocumentIncarnation"]
        azure.advance(timedelta(seconds=120))
        after = await _doc(http, imds)
        assert after["Events"] == [] and after["DocumentIncarnation"] == incarnation + 1  # type: ignore[operator]
        assert changes[-1].kind == "completed" and changes[-1].resources == ("vmss_3",)

        async with http.post(imds.scheduled_events_url, headers=META, data="{not json") as malformed:
            assert malformed.status == 400
        async with http.post(
            imds.scheduled_events_url, headers=META, json={"StartRequests": [{"EventId": "no-such-event"}]}
        ) as unknown:
            assert unknown.status == 400


async def test_azure_not_before_starts_it_and_cancel_makes_it_disappear(
    http: aiohttp.ClientSession, azure: AzureScheduledEvents
) -> None:
    planned = azure.schedule("Redeploy", resources=["vm-a"])
    doomed = azure.schedule("Reboot", resources=["vm-b"], audience=["vm-a"])  # broadcast to the availability set
    async with AzureImdsEmulator(azure, vm_name="vm-a") as imds:
        seen = {e["EventId"] for e in (await _doc(http, imds))["Events"]}  # type: ignore[attr-defined]
        assert seen == {planned.event_id, doomed.event_id}  # vm-a sees vm-b's event: check Resources
        azure.cancel(doomed.event_id)
        azure.advance(timedelta(minutes=10))
        (row,) = (await _doc(http, imds))["Events"]  # type: ignore[misc]
        assert (row["EventId"], row["EventStatus"]) == (planned.event_id, "Started")
    async with AzureImdsEmulator(azure, vm_name="vm-c") as other:
        assert (await _doc(http, other))["Events"] == []


# ------------------------------------------------------------------------------------------------ AWS


async def test_aws_imdsv2_token_then_scheduled_events(http: aiohttp.ClientSession) -> None:
    events = AwsMaintenanceEvents(instance_id="i-0abc", clock=ManualClock(START))
    reboot = events.add(
        "system-reboot",
        not_before=datetime(2019, 1, 21, 9, 0, 43, tzinfo=UTC),
        not_after=datetime(2019, 1, 21, 9, 17, 23, tzinfo=UTC),
        event_id="instance-event-0d59937288b749b32",
    )
    async with AwsImdsEmulator(events) as imds:
        scheduled_url = f"{imds.url}/latest/meta-data/events/maintenance/scheduled"
        async with http.get(scheduled_url) as no_token:
            assert no_token.status == 401
        async with http.put(f"{imds.url}/latest/api/token") as no_ttl:
            assert no_ttl.status == 400
        async with http.put(
            f"{imds.url}/latest/api/token", headers={"X-aws-ec2-metadata-token-ttl-seconds": "60"}
        ) as token_response:
            assert token_response.status == 200
            token = await token_response.text()
        headers = {"X-aws-ec2-metadata-token": token}
        async with http.get(scheduled_url, headers=headers) as scheduled:
            assert scheduled.status == 200
            body = await scheduled.json(content_type=None)
        sample = json.loads((SAMPLES / "aws-imds-scheduled-system-reboot-1.json").read_text())
        assert body == sample  # byte-for-byte the documented sample, from the same inputs

        events.complete(reboot.event_id)
        async with http.get(f"{imds.url}/latest/meta-data/events/maintenance/history", headers=headers) as history:
            (closed,) = await history.json(content_type=None)
        assert closed["State"] == "completed" and closed["Description"] == "[Completed] scheduled reboot"

        events.clock.advance(timedelta(seconds=61))  # type: ignore[attr-defined]
        async with http.get(scheduled_url, headers=headers) as expired:
            assert expired.status == 401


# ------------------------------------------------------------------------------------------------ GCE


async def test_gce_maintenance_event_value_header_and_hanging_get(http: aiohttp.ClientSession) -> None:
    metadata = GceMetadata()
    async with GceMetadataEmulator(metadata) as gce:
        flavor = {"Metadata-Flavor": "Google"}
        async with http.get(gce.maintenance_event_url) as no_flavor:
            assert no_flavor.status == 403
        async with http.get(gce.maintenance_event_url, headers=flavor) as first:
            assert (first.status, await first.text()) == (200, "NONE")
            assert first.headers["Metadata-Flavor"] == "Google"
            none_etag = first.headers["ETag"]

        async def hang() -> str:
            url = f"{gce.maintenance_event_url}?wait_for_change=true&last_etag={none_etag}&timeout_sec=30"
            async with http.get(url, headers=flavor) as response:
                return await response.text()

        waiter = asyncio.create_task(hang())
        await asyncio.wait_for(metadata.hanging_get_seen.wait(), 10)  # the server now holds the request open
        assert not waiter.done() and metadata.hanging_gets == 1
        metadata.set_maintenance_event("MIGRATE_ON_HOST_MAINTENANCE")
        assert await asyncio.wait_for(waiter, 10) == "MIGRATE_ON_HOST_MAINTENANCE"
        assert (SAMPLES / "gce-maintenance-event-migrate-1.txt").read_text().strip() == "MIGRATE_ON_HOST_MAINTENANCE"

        # a stale etag returns at once with the current value; a timeout returns the unchanged value
        async with http.get(
            f"{gce.maintenance_event_url}?wait_for_change=true&last_etag={none_etag}", headers=flavor
        ) as r:
            assert await r.text() == "MIGRATE_ON_HOST_MAINTENANCE"
        async with http.get(f"{gce.maintenance_event_url}?wait_for_change=true&timeout_sec=0.2", headers=flavor) as r:
            assert (r.status, await r.text()) == (200, "MIGRATE_ON_HOST_MAINTENANCE")
        async with http.get(f"{gce.url}/computeMetadata/v1/instance/no-such-key", headers=flavor) as missing:
            assert missing.status == 404
