"""Incidents still open at the end of the window, and operator requests, on a real nats-server: the demo's
report (its own stream reader and `build_report`) and `nodeheal replay` read the same recorded window and
give every incident and every fault the same time to repair; an operator's batch reboot is listed as an
operator request and changes no incident. Widening the window closes the open incidents.

As deployed: the per-role server; `nodeheal replay` and the demo report's reader under the operator's read-only
`reader` credential; the test stands in for the services that wrote the streams (as admin, and as the remediator
for AUDIT, which only its credential may write)."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from click.testing import CliRunner
from nats.js.client import JetStreamContext

from nodeheal.cli.replay import replay
from nodeheal.cli.timeline import TimelineMessage
from nodeheal.runtime.connect import connect
from nodeheal.runtime.jetstream import publish_model
from nodeheal.runtime.settings import NatsSettings
from nodeheal.schemas import Anomaly
from nodeheal.schemas.audit import RemediationRecord
from nodeheal.sim.demo_report import RunRecord, build_report, collect_window
from nodeheal.sim.faults import InjectedFault
from tests.integration.deploy.natsauth_loader import admin_stands_in
from tests.support.cli import nats_args
from tests.unit.replay.factories import T0, diagnosis, firing, operator_request, record, resolved, subject_of

pytestmark = pytest.mark.nats

nc, topology_ready = admin_stands_in()  # the test stands in for the services that wrote the streams, as admin


def _scenario() -> tuple[list[TimelineMessage], list[Anomaly]]:
    """What is stored inside the window, and the resolutions that come only after it.

    node-k: a hang cured by a reboot verified at 90 s; its kernel_fault is still held by the detector at
            the window end (fired before the verification: repaired, still open).
    node-l: a hang verified at 90 s; a read-only file system (bad from 75 s, detected at 100 s) still fires at
            the window end (after the verification: not repaired while it fires).
    node-m: a disk that fills and has not cleared, no action (open, not repaired).
    node-o: a disk that filled and cleared by itself (ttr 100 s); 100 s later an operator's batch reboots
            the node (an operator request, not part of that incident).
    """
    k_hang = firing("node-k", kind="node_hang", onset=0, detected=10)
    k_kernel = firing("node-k", kind="kernel_fault", onset=1, detected=11)
    k_diag = diagnosis("node-k", [k_hang, k_kernel], t=15, cause="soft_lockup", category="kernel")
    l_hang = firing("node-l", kind="node_hang", onset=0, detected=10)
    l_diag = diagnosis("node-l", [l_hang], t=15, cause="soft_lockup", category="kernel")
    l_ro = firing("node-l", kind="readonly_fs", onset=75, detected=100, subject="/data")
    m_disk = firing("node-m", kind="disk_full", onset=5, detected=8, subject="/var")
    o_disk = firing("node-o", kind="disk_full", onset=0, detected=3, subject="/var")
    op = operator_request("node-o", t=200)
    inside: list[TimelineMessage] = [
        k_hang,
        k_kernel,
        k_diag,
        record("node-k", t=16, phase="started", diag=k_diag, action_id="k-reboot"),
        resolved(k_hang, t=80),
        record("node-k", t=90, phase="verified", diag=k_diag, action_id="k-reboot"),
        l_hang,
        l_diag,
        record("node-l", t=16, phase="started", diag=l_diag, action_id="l-reboot"),
        resolved(l_hang, t=80),
        record("node-l", t=90, phase="verified", diag=l_diag, action_id="l-reboot"),
        l_ro,
        m_disk,
        o_disk,
        resolved(o_disk, t=100),
        op,
        record("node-o", t=201, phase="intent", diag=op, action_id="o-reboot"),
        record("node-o", t=202, phase="started", diag=op, action_id="o-reboot"),
        record("node-o", t=260, phase="verified", diag=op, action_id="o-reboot"),
    ]
    after = [resolved(k_kernel, t=140), resolved(l_ro, t=150), resolved(m_disk, t=400)]
    return inside, after


TRUTH = [
    InjectedFault("f-k", "kernel_fault", "node-k", (T0 + timedelta(seconds=0)).timestamp()),
    InjectedFault("f-l", "hang", "node-l", (T0 + timedelta(seconds=0)).timestamp()),
    InjectedFault("f-l2", "readonly_fs", "node-l", (T0 + timedelta(seconds=75)).timestamp()),
    InjectedFault("f-m", "disk_fill", "node-m", (T0 + timedelta(seconds=5)).timestamp()),
    InjectedFault("f-o", "disk_fill", "node-o", (T0 + timedelta(seconds=0)).timestamp()),
]


async def _publish(
    js: JetStreamContext, settings: NatsSettings, messages: list[Any], *, audit_js: JetStreamContext
) -> None:
    for m in messages:
        into = audit_js if isinstance(m, RemediationRecord) else js
        await publish_model(into, subject_of(m, settings.prefix), m, msg_id=m.id)


async def _replay(settings: NatsSettings, since: datetime, until: datetime) -> dict[str, Any]:
    args = [*nats_args(settings), "--since", since.isoformat(), "--until", until.isoformat()]
    result = await asyncio.to_thread(CliRunner().invoke, replay, [*args, "--all", "--json"], catch_exceptions=False)
    assert result.exit_code == 0, result.output + result.stderr
    report: dict[str, Any] = json.loads(result.stdout)
    return report


async def _demo_report(settings: NatsSettings, since: datetime, until: datetime) -> Any:
    reader = await connect(settings, name="demo-report")
    try:
        messages, findings = await collect_window(reader.jetstream(), settings=settings, since=since, until=until)
    finally:
        await reader.close()
    record_ = RunRecord(
        nodes=4,
        duration_s=300.0,
        probe_interval_s=5.0,
        reboot_s=30.0,
        run_start=since,
        run_end=until,
        truth=TRUTH,
        health=[],
        world={},
        sim_stats={},
        nats_url=settings.url,
        bad_kernel="-",
    )
    return build_report(record_, messages=messages, findings=findings)


def _ttr(report: dict[str, Any]) -> dict[str, float | None]:
    return {i["node"] + "/" + i["anomalies"][0]["kind"]: i["ttr_s"] for i in report["incidents"]}


async def test_open_incidents_and_operator_requests_agree_between_replay_and_the_demo_report(
    topology_ready: NatsSettings, js: JetStreamContext, audit_js: JetStreamContext, reader: NatsSettings
) -> None:
    settings = topology_ready
    inside, after = _scenario()
    since = datetime.now(tz=UTC) - timedelta(seconds=1)
    await _publish(js, settings, inside, audit_js=audit_js)
    await asyncio.sleep(0.05)
    window_end = datetime.now(tz=UTC)
    await asyncio.sleep(0.05)
    await _publish(js, settings, after, audit_js=audit_js)
    later = datetime.now(tz=UTC) + timedelta(seconds=1)

    cut = await _replay(reader, since, window_end)
    assert _ttr(cut) == {
        "node-k/node_hang": 90.0,  # open (kernel_fault held) but verified after it fired
        "node-l/node_hang": None,  # the read-only fs came after the verification and still fires
        "node-m/disk_full": None,  # open, no action
        "node-o/disk_full": 100.0,  # cleared by itself; the operator's later reboot is not its repair
    }
    assert [i["open"] for i in cut["incidents"]] == [True, True, False, True]
    counts = cut["counts"]
    assert (counts["open"], counts["repaired"], counts["operator_requests"]) == (3, 2, 1)
    (request,) = cut["operator_requests"]
    assert request["node"] == "node-o" and request["request"]["cause"] == "operator_request"
    assert [p["phase"] for p in request["actions"][0]["phases"]] == ["intent", "started", "verified"]
    o = next(i for i in cut["incidents"] if i["node"] == "node-o")
    assert o["actions"] == [] and o["diagnoses"] == [] and o["action_taken"] is False

    demo = await _demo_report(reader, since, window_end)
    assert demo["ttr_s"] == cut["ttr_s"] and demo["ttd_s"] == cut["ttd_s"] and demo["tti_s"] == cut["tti_s"]
    by_incident = {i["incident_id"]: i for i in cut["incidents"]}
    rows = {r["fault_id"]: r for r in demo["fault_rows"]}
    assert all(r["detected"] for r in rows.values()), rows
    for row in rows.values():
        shown = by_incident[row["incident_id"]]
        assert row["ttr_s"] == shown["ttr_s"], row
        assert row["repaired"] == (shown["repaired_at"] is not None), row
    assert {fid: r["repaired"] for fid, r in rows.items()} == {
        "f-k": True,
        "f-l": False,
        "f-l2": False,
        "f-m": False,
        "f-o": True,
    }

    # the resolutions stored after the window close the incidents when the window includes them
    wide = await _replay(reader, since, later)
    assert _ttr(wide) == {
        "node-k/node_hang": 90.0,
        "node-l/node_hang": 90.0,
        "node-m/disk_full": 395.0,
        "node-o/disk_full": 100.0,
    }
    assert wide["counts"]["open"] == 0
    wide_demo = await _demo_report(reader, since, later)
    assert wide_demo["ttr_s"] == wide["ttr_s"] and wide_demo["faults"]["repaired"] == 5
