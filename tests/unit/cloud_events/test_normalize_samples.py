"""Every file in tests/data/cloud-events/ normalizes as the providers' documentation says (docs/cloud-events.md).

Expected values are written out per file (not computed by the code under test)."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from nodeheal.cloud_events.normalize import NormalizeContext, PayloadError, normalize_stream

DATA = Path(__file__).resolve().parents[2] / "data" / "cloud-events"
OBSERVED = datetime(2026, 1, 1, 0, 0, 0, tzinfo=UTC)


def t(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


# file → (source, [expected events: id, action, cause, phase, instance, {time field: value}])
EXPECTED: dict[str, tuple[str, list[tuple[str, str, str, str, str, dict[str, datetime | None]]]]] = {
    "alibaba-api-describeinstancehistoryevents-1.json": (
        "alibaba-api",
        [
            (
                "e-uf64yvznlao4jl2c****",
                "reboot",
                "planned_maintenance",
                "completed",
                "i-uf678mass4zvr9n1****",
                {
                    "published_at": t("2017-11-30T06:32:31Z"),
                    "not_before": t("2017-12-01T06:32:31Z"),
                    "finished_at": t("2017-12-01T06:35:31Z"),
                },
            ),
            (
                "e-uf61cbvp0w8x2xfx****",
                "stop",
                "billing",
                "avoided",
                "i-uf678mass4zvr9n1****",
                {
                    "published_at": t("2017-11-29T06:32:31Z"),
                    "not_before": t("2017-12-06T00:00:00Z"),
                    "finished_at": t("2017-12-05T12:35:31Z"),
                },
            ),
        ],
    ),
    "alibaba-api-describeinstancemaintenanceattributes-1.json": ("alibaba-api", []),
    "alibaba-api-describeinstancesfullstatus-1.json": (
        "alibaba-api",
        [
            (
                "e-bp1hygp5b04o56l0****",
                "reboot",
                "host_failure",
                "scheduled",
                "i-bp19cx17f2yx****",
                {
                    "published_at": t("2020-04-24T07:09:37Z"),
                    "not_before": t("2020-04-24T10:32:31Z"),
                    "finished_at": None,
                },
            )
        ],
    ),
    "alibaba-cms-describesystemeventattribute-1.json": (
        "alibaba-cms",
        [
            (
                "cms:Agent_Status_Stopped:i-25k35****:1552199984000",
                "unknown",
                "unknown",
                "unknown",
                "i-25k35****",
                {"published_at": t("2019-03-10T06:39:44Z")},
            )
        ],
    ),
    "alibaba-cms-disk-stalled-executing-1.json": (
        "alibaba-cms",
        [
            (
                "e-t4navn7********6x5no",
                "disk_repair",
                "host_failure",
                "in_progress",
                "i-bp1ecr********5go2go",
                {"started_at": t("2019-04-10T01:01:01Z"), "finished_at": None},
            )
        ],
    ),
    "alibaba-cms-instance-statechange-1.json": (
        "alibaba-cms",
        [
            (
                "statechange:i-bp1ecr********5go2go:Running:20190409T121826.922+0800",
                "state_change",
                "unknown",
                "completed",
                "i-bp1ecr********5go2go",
                {"published_at": t("2019-04-09T04:18:26.922Z")},
            )
        ],
    ),
    "alibaba-cms-preemptibleinstanceinterruption-1.json": (
        "alibaba-cms",
        [
            (
                "preempt:i-bp1ecr********5go2go:20190409T121826.922+0800",
                "terminate",
                "spot",
                "scheduled",
                "i-bp1ecr********5go2go",
                {"published_at": t("2019-04-09T04:18:26.922Z"), "not_before": t("2019-04-09T04:23:26.922Z")},
            )
        ],
    ),
    "alibaba-cms-systemfailure-reboot-executing-1-reconstructed.json": (
        "alibaba-cms",
        [
            (
                "e-bp11trd********pqum2",
                "reboot",
                "host_failure",
                "in_progress",
                "i-bp1ecr********5go2go",
                {
                    "published_at": t("2019-04-10T08:01:01Z"),
                    "started_at": t("2019-04-10T08:01:01Z"),
                    "not_before": None,
                },
            )
        ],
    ),
    "alibaba-cms-systemmaintenance-reboot-scheduled-1.json": (
        "alibaba-cms",
        [
            (
                "e-bp11trd********pqum2",
                "reboot",
                "planned_maintenance",
                "scheduled",
                "i-bp1ecr********5go2go",
                {"published_at": t("2019-04-09T04:18:26Z"), "not_before": t("2019-04-12T01:01:01Z")},
            )
        ],
    ),
    "alibaba-cms-systemmaintenance-redeploy-scheduled-1-reconstructed.json": (
        "alibaba-cms",
        [
            (
                "e-bp11trd********pqum2",
                "redeploy",
                "planned_maintenance",
                "scheduled",
                "i-bp1ecr********5go2go",
                {"published_at": t("2019-04-09T04:18:26Z"), "not_before": t("2019-04-12T01:01:01Z")},
            )
        ],
    ),
    "alibaba-eventbridge-envelope-1.json": ("alibaba-eventbridge", []),
    "alibaba-eventbridge-systemmaintenance-reboot-scheduled-1-reconstructed.json": (
        "alibaba-eventbridge",
        [
            (
                "e-bp11trd********pqum2",
                "reboot",
                "planned_maintenance",
                "scheduled",
                "i-bp1ecr********5go2go",
                {"published_at": t("2019-04-09T04:18:26Z"), "not_before": t("2019-04-12T01:01:01Z")},
            )
        ],
    ),
    "aws-describe-instance-status-instance-stop-1.json": (
        "aws-api",
        [
            (
                # observed 2026, NotBefore 2015: active and past NotBefore → in_progress (§6.2)
                "instance-event-0e439355b779n26",
                "stop",
                "planned_maintenance",
                "in_progress",
                "i-test",
                {"not_before": t("2015-05-23T00:00:00Z")},
            )
        ],
    ),
    "aws-eventbridge-ec2-state-change-1.json": (
        "aws-eventbridge",
        [
            (
                "7bf73129-1428-4cd3-a780-95db273d1602",
                "state_change",
                "unknown",
                "in_progress",
                "i-abcd1111",
                {"published_at": t("2015-11-11T21:29:54Z")},
            )
        ],
    ),
    "aws-eventbridge-health-scheduledchange-1.json": (
        "aws-eventbridge",
        [
            (
                "arn:aws:health:region::event/id#i-12345678",
                "network_power_maintenance",
                "planned_maintenance",
                "scheduled",
                "i-12345678",
                {"published_at": t("2016-06-05T06:27:57Z"), "not_before": t("2016-06-05T15:10:09Z")},
            )
        ],
    ),
    "aws-imds-scheduled-system-reboot-1.json": (
        "aws-imds",
        [
            (
                "instance-event-0d59937288b749b32",
                "reboot",
                "planned_maintenance",
                "in_progress",
                "i-test",
                {"not_before": t("2019-01-21T09:00:43Z"), "not_after": t("2019-01-21T09:17:23Z")},
            )
        ],
    ),
    "azure-imds-empty-1.json": ("azure-imds", []),
    "azure-imds-freeze-scheduled-1.json": (
        "azure-imds",
        [
            (
                "c7061bac-afdc-4513-b24b-aa5f13a16123#WestNO_0",
                "freeze",
                "planned_maintenance",
                "scheduled",
                "WestNO_0",
                {"not_before": t("2026-04-11T22:26:58Z")},
            ),
            (
                "c7061bac-afdc-4513-b24b-aa5f13a16123#WestNO_1",
                "freeze",
                "planned_maintenance",
                "scheduled",
                "WestNO_1",
                {"not_before": t("2026-04-11T22:26:58Z")},
            ),
        ],
    ),
    "azure-imds-reboot-scheduled-1.json": (
        "azure-imds",
        [
            (
                "602d9444-d2cd-49c7-8624-8643e7171297#FrontEnd_IN_0",
                "reboot",
                "planned_maintenance",
                "scheduled",
                "FrontEnd_IN_0",
                {"not_before": t("2016-09-19T18:29:47Z")},
            ),
            (
                "602d9444-d2cd-49c7-8624-8643e7171297#aks-spotcpu2d2as-24469130-vmss_1",
                "reboot",
                "planned_maintenance",
                "scheduled",
                "aks-spotcpu2d2as-24469130-vmss_1",
                {"not_before": t("2016-09-19T18:29:47Z")},
            ),
        ],
    ),
    "azure-imds-redeploy-scheduled-1.json": (
        "azure-imds",
        [
            (
                "72e160b5-6f75-40fa-bd4c-0c7fa2318a51#VM-SE-Server02",
                "redeploy",
                "planned_maintenance",
                "scheduled",
                "VM-SE-Server02",
                {"not_before": t("2019-01-17T05:57:06Z")},
            )
        ],
    ),
    "gce-maintenance-event-migrate-1.txt": (
        "gce-metadata",
        [
            (
                "i-test:MIGRATE_ON_HOST_MAINTENANCE:20260101T000000Z",
                "live_migrate",
                "planned_maintenance",
                "in_progress",
                "i-test",
                {"started_at": OBSERVED},
            )
        ],
    ),
    "gce-maintenance-event-none-1.txt": ("gce-metadata", []),
}
ERRORS = {
    # An approval body, not a document: refused with a message that says so.
    "azure-imds-startrequests-1.json": ("azure-imds", "StartRequests approval body"),
}


def test_every_data_file_has_an_expectation() -> None:
    assert {p.name for p in DATA.iterdir()} == set(EXPECTED) | set(ERRORS)


@pytest.mark.parametrize("name", sorted(EXPECTED))
@pytest.mark.parametrize("auto", [False, True], ids=["named", "auto"])
def test_sample_normalizes_as_the_reference_says(name: str, auto: bool) -> None:
    source, expected = EXPECTED[name]
    ctx = NormalizeContext(observed_at=OBSERVED, cluster="prod", instance_id="i-test")
    events = normalize_stream("auto" if auto else source, (DATA / name).read_bytes(), ctx)
    got = [(e.provider_event_id, e.action, e.cause, e.phase, e.instance_id) for e in events]
    assert got == [x[:5] for x in expected]
    for event, (_, _, _, phase, _, times) in zip(events, expected, strict=True):
        for field, value in times.items():
            assert getattr(event, field) == value, f"{name}: {field}"
        assert event.is_terminal == (phase in {"completed", "avoided", "canceled", "failed"})
        assert event.cluster == "prod"


@pytest.mark.parametrize("name", sorted(ERRORS))
def test_sample_refused_with_a_clear_message(name: str) -> None:
    source, words = ERRORS[name]
    ctx = NormalizeContext(observed_at=OBSERVED)
    with pytest.raises(PayloadError, match=words):
        normalize_stream(source, (DATA / name).read_bytes(), ctx)


def test_alibaba_details_severity_ack_and_data_loss() -> None:
    ctx = NormalizeContext(observed_at=OBSERVED)
    redeploy = normalize_stream(
        "alibaba-cms",
        (DATA / "alibaba-cms-systemmaintenance-redeploy-scheduled-1-reconstructed.json").read_bytes(),
        ctx,
    )[0]
    assert redeploy.local_data_loss is True
    assert redeploy.severity == "critical"
    assert redeploy.region == "cn-hangzhou"
    assert [a.method for a in redeploy.ack] == ["alibaba.RedeployInstance"]
    assert redeploy.ack[0].valid_until == t("2019-04-12T01:01:01Z")
    reboot = normalize_stream(
        "alibaba-cms", (DATA / "alibaba-cms-systemmaintenance-reboot-scheduled-1.json").read_bytes(), ctx
    )[0]
    assert reboot.local_data_loss is False
    assert [a.method for a in reboot.ack] == ["alibaba.RebootInstance", "alibaba.RedeployInstance"]
    simulated = normalize_stream(
        "alibaba-api", (DATA / "alibaba-api-describeinstancesfullstatus-1.json").read_bytes(), ctx
    )[0]
    assert simulated.is_simulated is True
    assert simulated.channel == "api_fullstatus"
    assert simulated.ack == ()  # simulated events cannot be answered with RedeployInstance


def test_same_transition_from_three_channels_has_one_message_id() -> None:
    ctx = NormalizeContext(observed_at=OBSERVED)
    cms = normalize_stream(
        "alibaba-cms", (DATA / "alibaba-cms-systemmaintenance-reboot-scheduled-1.json").read_bytes(), ctx
    )
    eb = normalize_stream(
        "alibaba-eventbridge",
        (DATA / "alibaba-eventbridge-systemmaintenance-reboot-scheduled-1-reconstructed.json").read_bytes(),
        ctx,
    )
    assert cms[0].id == eb[0].id
    assert cms[0].id.startswith("cloud-")
    assert cms[0].channel == "cms_notification"
    assert eb[0].channel == "eventbridge"


def test_a_disk_event_without_a_status_field_has_one_id_through_cms_and_eventbridge() -> None:
    """Disk events carry no `eventStatus`: CMS takes it from `name` (`Disk:Stalled:Executing`), and so does
    EventBridge now from its `type` (`ecs:Disk:Stalled:Executing`). Before, the EventBridge copy was phase
    `unknown` under another id, and its later arrival overwrote the `in_progress` the CMS copy had set."""
    import json

    ctx = NormalizeContext(observed_at=OBSERVED)
    raw = (DATA / "alibaba-cms-disk-stalled-executing-1.json").read_bytes()
    cms = normalize_stream("alibaba-cms", raw, ctx)
    body = json.loads(raw)
    cloud_event = {
        "id": "3f0b1c2e-eventbridge-disk-1",
        "source": "acs.ecs",
        "specversion": "1.0",
        "subject": body["resourceId"],
        "time": "2019-04-10T08:01:02+08:00",
        "type": "ecs:Disk:Stalled:Executing",
        "aliyunpublishtime": "2019-04-10T08:01:02.410PRC",
        "aliyunregionid": "cn-hangzhou",
        "data": body["content"],
    }
    eb = normalize_stream("alibaba-eventbridge", json.dumps(cloud_event).encode(), ctx)
    assert [(e.channel, e.phase) for e in cms + eb] == [
        ("cms_notification", "in_progress"),
        ("eventbridge", "in_progress"),
    ]
    assert cms[0].id == eb[0].id
