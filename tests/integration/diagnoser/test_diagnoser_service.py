"""The diagnoser service against a real nats-server with the deployed per-role authorization, the diagnoser under
its role's credential: scenario sequences published into the real streams (as admin, the test standing in for
the detector and the cloud events), diagnoses read back out of DIAGNOSES; no permission violation is logged."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta

import pytest
from nats.aio.client import Client
from nats.js.api import ConsumerConfig, DeliverPolicy

from nodeheal.diagnoser.handlers import DiagnoserRuntime
from nodeheal.diagnoser.settings import DiagnoserSettings
from nodeheal.runtime.jetstream import publish_model
from nodeheal.runtime.settings import NatsSettings
from nodeheal.schemas import Anomaly, CloudSystemEvent, Diagnosis, NodeInventory
from nodeheal.schemas.finding import FleetFinding
from nodeheal.schemas.inventory import inventory_key
from nodeheal.schemas.subjects import (
    anomaly_subject,
    cloud_subject,
    diagnosis_subject,
    dlq_subject,
    finding_subject,
)
from tests.integration.deploy.natsauth_loader import RoleServer, admin_stands_in, violations
from tests.unit.diagnoser.scenarios import CLUSTER, OOPS_A, OOPS_B, anomaly, cloud_event, inventory, sample_lines

pytestmark = pytest.mark.nats

nc, topology_ready = admin_stands_in()


def now() -> datetime:
    return datetime.now(tz=UTC)


@pytest.fixture
async def service(deployed: RoleServer) -> AsyncIterator[DiagnoserRuntime]:
    topology_ready = deployed.settings
    js = deployed.nc.jetstream()
    kv = await js.key_value(f"{topology_ready.bucket_prefix}-inventory")
    racks = {f"n{i}": f"r{i % 3}" for i in range(1, 10)} | {f"p{i}": "r9" for i in range(6)}
    for node, rack in racks.items():
        await kv.put(inventory_key(CLUSTER, node), inventory(node, rack=rack).to_json())
    settings = DiagnoserSettings(
        nats=deployed.role,
        cluster=CLUSTER,
        tick_s=0.1,
        node_down_hold_s=1.0,
        correlation_interval_s=0.3,
        fetch_timeout_s=0.3,
    )
    runtime = DiagnoserRuntime(settings=settings, nc=await deployed.role_nc("diagnoser"))
    await runtime.start()
    yield runtime
    await runtime.stop()
    assert violations(deployed.dir) == []


async def send(nc: Client, settings: NatsSettings, item: Anomaly | CloudSystemEvent) -> None:
    js = nc.jetstream()
    if isinstance(item, Anomaly):
        subject = anomaly_subject(item.cluster, item.node, prefix=settings.prefix)
    else:
        subject = cloud_subject(item.cluster, item.node, prefix=settings.prefix)
    await publish_model(js, subject, item, msg_id=item.id)


async def read_stream(nc: Client, stream: str, subject: str) -> list[bytes]:
    js = nc.jetstream()
    sub = await js.pull_subscribe(
        subject,
        stream=stream,
        config=ConsumerConfig(deliver_policy=DeliverPolicy.ALL, inactive_threshold=10.0),
    )
    out: list[bytes] = []
    try:
        while True:
            try:
                msgs = await sub.fetch(100, timeout=0.3)
            except Exception:
                break
            out.extend(m.data for m in msgs)
            for m in msgs:
                await m.ack()
    finally:
        await sub.unsubscribe()
    return out


async def wait_for_diagnosis(
    nc: Client, settings: NatsSettings, node: str, predicate: Callable[[Diagnosis], bool], *, timeout_s: float = 20.0
) -> Diagnosis:
    stream = f"{settings.stream_prefix}DIAGNOSES"
    subject = diagnosis_subject(CLUSTER, node, prefix=settings.prefix)
    deadline = asyncio.get_running_loop().time() + timeout_s
    seen: list[Diagnosis] = []
    while asyncio.get_running_loop().time() < deadline:
        seen = [Diagnosis.model_validate_json(b) for b in await read_stream(nc, stream, subject)]
        for d in reversed(seen):
            if predicate(d):
                return d
        await asyncio.sleep(0.2)
    raise AssertionError(f"no matching diagnosis for {node}; saw {[(d.cause, d.resolved) for d in seen]}")


def actions(d: Diagnosis) -> list[str]:
    return [r.action for r in d.recommended]


async def test_redeploy_vs_kubelet_crashloop_vs_rack_partition(
    service: DiagnoserRuntime, nc: Client, topology_ready: NatsSettings
) -> None:
    t = now()
    await send(nc, topology_ready, cloud_event("n1", action="redeploy", phase="in_progress", at=t))
    await send(nc, topology_ready, anomaly("n1", "node_not_ready", at=t))
    await send(nc, topology_ready, anomaly("n2", "service_down", subject="kubelet", at=t))
    await send(nc, topology_ready, anomaly("n2", "node_not_ready", at=t))
    for i in range(4):
        await send(nc, topology_ready, anomaly(f"p{i}", "node_down", at=t + timedelta(milliseconds=100 * i)))

    redeploy = await wait_for_diagnosis(nc, topology_ready, "n1", lambda d: d.cause == "host_maintenance_redeploy")
    assert redeploy.category == "ops" and "reboot" not in actions(redeploy)
    kubelet = await wait_for_diagnosis(nc, topology_ready, "n2", lambda d: d.cause == "kubelet_down")
    assert kubelet.category == "software" and actions(kubelet)[0] == "restart_service"
    for i in range(4):
        part = await wait_for_diagnosis(nc, topology_ready, f"p{i}", lambda d: not d.resolved)
        assert (part.cause, part.category) == ("rack_partition", "network"), (i, part.cause)
        assert actions(part) == ["escalate"]
    # the down spike of rack r9 is raised as a fleet finding
    findings = [
        FleetFinding.model_validate_json(b)
        for b in await read_stream(
            nc, f"{topology_ready.stream_prefix}DIAGNOSES", finding_subject(prefix=topology_ready.prefix)
        )
    ]
    assert any(f.kind == "down_spike" and f.dimension == "rack" and f.value == "r9" for f in findings)


async def test_ext4_with_and_without_nvme_errors(
    service: DiagnoserRuntime, nc: Client, topology_ready: NatsSettings
) -> None:
    t = now()
    await send(
        nc,
        topology_ready,
        anomaly("n3", "kernel_fault", subject="hardware", lines=sample_lines("nvme_disk_io_error", 0), at=t),
    )
    fs = ["EXT4-fs error (device nvme2n1p1): ext4_find_entry:1455: inode #2: comm ls: reading directory lblock 0"]
    await send(
        nc, topology_ready, anomaly("n3", "kernel_fault", subject="filesystem", lines=fs, at=t + timedelta(seconds=1))
    )
    await send(
        nc,
        topology_ready,
        anomaly("n4", "kernel_fault", subject="filesystem", lines=sample_lines("ext4_error", 1), at=t),
    )
    # the NVMe errors alone already say disk_failure; the ext4 errors after them must not change it
    disk = await wait_for_diagnosis(nc, topology_ready, "n3", lambda d: True)
    await asyncio.sleep(1.0)
    disk = await wait_for_diagnosis(nc, topology_ready, "n3", lambda d: True)
    assert (disk.cause, disk.category) == ("disk_failure", "hardware")
    fsck = await wait_for_diagnosis(nc, topology_ready, "n4", lambda d: True)
    assert (fsck.cause, fsck.category) == ("filesystem_corruption", "kernel")


async def test_crash_signatures_one_host_vs_many_hosts(
    service: DiagnoserRuntime, nc: Client, topology_ready: NatsSettings
) -> None:
    t = now()
    await send(
        nc, topology_ready, anomaly("n5", "kernel_fault", subject="crash", lines=OOPS_A, at=t - timedelta(hours=2))
    )
    await send(nc, topology_ready, anomaly("n5", "kernel_fault", subject="crash", lines=OOPS_B, at=t))
    hw = await wait_for_diagnosis(nc, topology_ready, "n5", lambda d: d.cause == "heterogeneous_crashes")
    assert hw.category == "hardware"
    for node in ("n6", "n7", "n8"):
        await send(nc, topology_ready, anomaly(node, "kernel_fault", subject="crash", lines=OOPS_A, at=t))
    kern = await wait_for_diagnosis(nc, topology_ready, "n8", lambda d: True)
    assert (kern.cause, kern.category) == ("kernel_oops_null_deref", "kernel")
    assert kern.crash_signature is not None and kern.crash_signature.rip_func == "tcp_v4_rcv"


async def test_resolution_and_bad_input(service: DiagnoserRuntime, nc: Client, topology_ready: NatsSettings) -> None:
    js = nc.jetstream()
    await js.publish(
        anomaly_subject(CLUSTER, "n9", prefix=topology_ready.prefix), b"{not json", headers={"Nats-Msg-Id": "bad-1"}
    )
    t = now()
    await send(nc, topology_ready, anomaly("n9", "disk_full", subject="/", at=t))
    first = await wait_for_diagnosis(nc, topology_ready, "n9", lambda d: not d.resolved)
    assert first.cause == "disk_full" and actions(first)[0] == "clean_disk"
    await send(
        nc,
        topology_ready,
        anomaly("n9", "disk_full", subject="/", status="resolved", at=t + timedelta(seconds=5), onset=t),
    )
    done = await wait_for_diagnosis(nc, topology_ready, "n9", lambda d: d.resolved)
    assert done.cause == "disk_full" and done.anomaly_ids == first.anomaly_ids
    letters = await read_stream(
        nc, f"{topology_ready.stream_prefix}DLQ", dlq_subject("diagnoser", prefix=topology_ready.prefix)
    )
    assert letters and "not a valid Anomaly" in json.loads(letters[0])["reason"]


async def test_inventory_watch_and_fleet_finding_joined(
    service: DiagnoserRuntime, nc: Client, topology_ready: NatsSettings
) -> None:
    js = nc.jetstream()
    kv = await js.key_value(f"{topology_ready.bucket_prefix}-inventory")
    bad = [f"k{i}" for i in range(6)]
    for i in range(60):
        node = bad[i] if i < 6 else f"ok{i}"
        record: NodeInventory = inventory(node, rack=f"rr{i % 10}", kernel="bad-1" if i < 6 else "good-1")
        await kv.put(inventory_key(CLUSTER, node), record.to_json())
    await asyncio.sleep(0.5)  # the watch delivers asynchronously; the crashes below must see the groups
    t = now()
    for node in bad[:5]:
        await send(nc, topology_ready, anomaly(node, "kernel_fault", subject="crash", lines=OOPS_A, at=t))
    joined = await wait_for_diagnosis(nc, topology_ready, bad[0], lambda d: d.fleet_correlation is not None)
    assert joined.fleet_correlation is not None
    assert (joined.fleet_correlation.dimension, joined.fleet_correlation.value) == ("kernel", "bad-1")
    findings = [
        FleetFinding.model_validate_json(b)
        for b in await read_stream(
            nc, f"{topology_ready.stream_prefix}DIAGNOSES", finding_subject(prefix=topology_ready.prefix)
        )
    ]
    raised = [f for f in findings if f.kind == "rate_outlier" and f.value == "bad-1" and f.scope == "any"]
    assert len(raised) == 1


async def test_time_to_identify_is_observed_once_per_episode(
    service: DiagnoserRuntime, nc: Client, topology_ready: NatsSettings
) -> None:
    """An episode whose diagnosis changes (ext4 errors first, then the NVMe errors under them) publishes two
    unresolved diagnoses; both time-to-identify histograms count the episode once."""
    t = now()
    fs = ["EXT4-fs error (device nvme2n1p1): ext4_find_entry:1455: inode #2: comm ls: reading directory lblock 0"]
    await send(nc, topology_ready, anomaly("n5", "kernel_fault", subject="filesystem", lines=fs, at=t))
    first = await wait_for_diagnosis(nc, topology_ready, "n5", lambda d: True)
    assert first.cause == "filesystem_corruption"
    await send(
        nc,
        topology_ready,
        anomaly("n5", "kernel_fault", subject="hardware", lines=sample_lines("nvme_disk_io_error", 0), at=t),
    )
    second = await wait_for_diagnosis(nc, topology_ready, "n5", lambda d: d.cause == "disk_failure")
    assert not first.resolved and not second.resolved
    assert second.anomaly_ids[0] == first.anomaly_ids[0]  # the same episode, diagnosed again

    def count(name: str) -> float:  # summed over labels (the shared histogram is per fault class)
        return sum(
            float(sample.value)
            for metric in service.pipeline.registry.collect()
            for sample in metric.samples
            if sample.name == name
        )

    assert count("nodeheal_diagnoser_time_to_identify_seconds_count") == 1
    assert count("nodeheal_time_to_identify_seconds_count") == 1


async def test_an_anomaly_written_with_a_clock_far_off_is_measured_and_said(
    service: DiagnoserRuntime, nc: Client, topology_ready: NatsSettings, caplog: pytest.LogCaptureFixture
) -> None:
    """The node_down hold and the time windows compare the detector's clock with this one: an anomaly whose
    `detected_at` is two minutes behind the server's store time is exported as that offset and said."""
    import logging

    import prometheus_client

    behind = now() - timedelta(seconds=120)
    caplog.set_level(logging.WARNING, logger="nodeheal.diagnoser")
    await send(nc, topology_ready, anomaly("n4", "disk_full", at=behind, subject="/"))
    await wait_for_diagnosis(nc, topology_ready, "n4", lambda d: not d.resolved)
    offset = prometheus_client.REGISTRY.get_sample_value("nodeheal_diagnoser_anomaly_clock_offset_seconds")
    assert offset is not None and 119 <= offset <= 130
    assert any("clock far from the NATS server" in r.getMessage() for r in caplog.records)


async def test_a_firing_stored_after_its_resolution_leaves_no_diagnosis(
    service: DiagnoserRuntime, nc: Client, topology_ready: NatsSettings
) -> None:
    """ANOMALIES holds a resolution before its own firing (the detector's publish of the firing failed and was
    sent again after the resolution's was stored): the node is healthy, no verdict may stand for it. Before,
    the late firing opened an episode nothing would ever close (disk_full diagnosed, a repair ordered)."""
    t = now()
    firing = anomaly("n8", "disk_full", subject="/", at=t)
    resolved = anomaly("n8", "disk_full", subject="/", status="resolved", at=t + timedelta(seconds=5), onset=t)
    await send(nc, topology_ready, resolved)
    await send(nc, topology_ready, firing)
    # one message at a time, in stream order: once n7's diagnosis is out, n8's two anomalies were judged
    await send(nc, topology_ready, anomaly("n7", "disk_full", subject="/", at=t))
    await wait_for_diagnosis(nc, topology_ready, "n7", lambda d: not d.resolved)
    stream = f"{topology_ready.stream_prefix}DIAGNOSES"
    said = [
        Diagnosis.model_validate_json(b)
        for b in await read_stream(nc, stream, diagnosis_subject(CLUSTER, "n8", prefix=topology_ready.prefix))
    ]
    assert all(d.resolved for d in said), [(d.cause, d.resolved) for d in said]
