"""`nodeheal replay --what-if` against a real nats-server: a stricter disk threshold finds an incident the
recorded run did not have, and not one message reaches the live subjects while the sandbox runs.

As deployed: the per-role server; the command runs under the operator's read-only `reader` credential (the
server itself would refuse any write of the sandbox); the test stands in for the services that wrote the streams,
as admin, and for the remediator (only its credential may write AUDIT). No permission violation logged."""

from __future__ import annotations

import asyncio
import json
import tempfile
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js.client import JetStreamContext

from nodeheal.cli.replay import replay
from nodeheal.cli.timeline import TimelineMessage
from nodeheal.cli.whatif import WhatIfRules, load_rules, run_sandbox
from nodeheal.runtime.jetstream import publish_model
from nodeheal.runtime.settings import NatsSettings
from nodeheal.schemas.anomaly import Anomaly
from nodeheal.schemas.audit import RemediationRecord
from nodeheal.schemas.cloud import CloudSystemEvent
from nodeheal.schemas.ids import deterministic_id
from nodeheal.schemas.probe import FileSystem, LoadAverage, NodeProbe, Reachability, ServiceState
from tests.integration.deploy.natsauth_loader import (
    admin_stands_in,
)
from tests.integration.replay.test_replay import _args, publish_scenario
from tests.unit.replay.factories import CLUSTER, at, cloud_event, diagnosis, firing, record, subject_of

pytestmark = pytest.mark.nats

nc, topology_ready = admin_stands_in()  # the test stands in for the services that wrote the streams, as admin


async def _what_if_unchanged(
    js: JetStreamContext,
    settings: NatsSettings,
    tmp_path: Path,
    *,
    before: Sequence[Any],
    window: Sequence[Any],
    audit_js: JetStreamContext,
    reader: NatsSettings,
) -> dict[str, Any]:
    """Store `before`, then the window's messages from a `--since` between them, and run `replay --what-if` with
    unchanged rules over that window: the JSON report."""
    for m in before:
        into = audit_js if isinstance(m, RemediationRecord) else js
        await publish_model(into, subject_of(m, settings.prefix), m, msg_id=m.id)
    await asyncio.sleep(1.1)
    since = datetime.now(tz=UTC)
    for m in window:
        into = audit_js if isinstance(m, RemediationRecord) else js
        await publish_model(into, subject_of(m, settings.prefix), m, msg_id=m.id)
    until = datetime.now(tz=UTC) + timedelta(seconds=1)
    same = tmp_path / "same.yaml"
    same.write_text("detector: {}\n")
    args = _args(reader, since, until, "--all", "--json", "--what-if", str(same))
    result = await asyncio.to_thread(CliRunner().invoke, replay, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    report: dict[str, Any] = json.loads(result.stdout)
    return report


def agent_probe(node: str, t: float, *, seq: int, used_pct: float) -> NodeProbe:
    return NodeProbe(
        id=deterministic_id("agent", node, seq),
        time=at(t),
        cluster=CLUSTER,
        node=node,
        source="agent",
        seq=seq,
        boot_id="boot-1",
        uptime_s=10_000 + t,
        reachability=(Reachability(check="agent", target=node, ok=True),),
        load=LoadAverage(load1=0.5, load5=0.5, load15=0.5),
        cpu_count=8,
        filesystems=(FileSystem(mount="/var", used_pct=used_pct, inodes_used_pct=10.0),),
        services=(ServiceState(name="kubelet", state="active"),),
        ready=True,
    )


def disk_scenario() -> list[TimelineMessage]:
    """node-w's /var climbs to 92 % for 40 s: under the live 95 % threshold, over a stricter 90 %."""
    return [
        agent_probe("node-w", t, seq=i, used_pct=92.0 if 30 <= t <= 70 else 50.0)
        for i, t in enumerate(range(0, 200, 10))
    ]


async def test_stricter_threshold_shows_the_difference_and_publishes_nothing(
    topology_ready: NatsSettings, js: JetStreamContext, nc: Client, tmp_path: Path, reader: NatsSettings
) -> None:
    since = datetime.now(tz=UTC) - timedelta(seconds=1)
    await publish_scenario(js, topology_ready, disk_scenario())
    until = datetime.now(tz=UTC) + timedelta(seconds=1)
    rules = tmp_path / "rules.yaml"
    rules.write_text("detector:\n  disk_full_pct: 90\n  disk_clear_pct: 80\npolicy:\n  dry_run: true\n")

    heard: list[str] = []

    async def listen(msg: Msg) -> None:
        heard.append(msg.subject)

    sub = await nc.subscribe(f"{topology_ready.prefix}.>", cb=listen)
    await nc.flush()
    try:
        args = _args(reader, since, until, "--all", "--json", "--what-if", str(rules))
        result = await asyncio.to_thread(CliRunner().invoke, replay, args, catch_exceptions=False)
        assert result.exit_code == 0, result.output
        await nc.flush()
    finally:
        await sub.unsubscribe()
    report = json.loads(result.stdout)
    assert report["incidents"] == []  # the recorded run saw nothing
    diffs = report["what_if"]["differences"]
    assert [(d["node"], d["kind"], d["what_if"]) for d in diffs] == [("node-w", "new_incident", "disk_full")]
    assert diffs[0]["at"] == "2026-03-01T12:00:30Z"  # the first probe over 90 %
    assert report["what_if"]["would_publish"]["anomalies"] >= 1
    assert heard == []  # not one message on any live subject while the sandbox ran

    # the same window with the live thresholds: no difference at all
    same = tmp_path / "same.yaml"
    same.write_text("detector: {}\n")
    args = _args(reader, since, until, "--all", "--json", "--what-if", str(same))
    again = await asyncio.to_thread(CliRunner().invoke, replay, args, catch_exceptions=False)
    assert json.loads(again.stdout)["what_if"]["differences"] == []


async def test_a_bad_rules_file_is_a_usage_error(reader: NatsSettings, tmp_path: Path) -> None:
    rules = tmp_path / "rules.yaml"
    rules.write_text("detector:\n  disk_full_pct: 900\n")
    now = datetime.now(tz=UTC)
    args = _args(reader, now - timedelta(minutes=1), now, "--all", "--what-if", str(rules))
    result = await asyncio.to_thread(CliRunner().invoke, replay, args)
    assert result.exit_code == 2
    assert "disk_full_pct" in result.output


def host_reboot_scenario() -> tuple[CloudSystemEvent, list[TimelineMessage]]:
    """node-h's host reboot, announced two hours before the window (stored before --since): its agent goes
    silent at t = 60 s, when the reboot runs, and comes back with a new boot id at t = 180 s."""
    notice = cloud_event("node-h", t=-7200).model_copy(update={"not_before": at(60)})
    probes: list[TimelineMessage] = []
    for i, t in enumerate([*range(0, 60, 10), *range(180, 300, 10)]):
        p = agent_probe("node-h", t, seq=i, used_pct=50.0)
        probes.append(p.model_copy(update={"boot_id": "boot-1" if t < 60 else "boot-2", "uptime_s": 10_000 + t}))
    return notice, probes


async def test_a_host_event_announced_before_the_window_is_known_to_the_what_if(
    topology_ready: NatsSettings, js: JetStreamContext, tmp_path: Path, audit_js: JetStreamContext, reader: NatsSettings
) -> None:
    """A notice comes once, days ahead (AWS about two weeks), and nothing more until its phase changes:
    the window of a postmortem rarely holds it. Before, the what-if read CLOUD from --since only, so the
    sandbox met node-h's host reboot as an unexplained outage and diagnosed it and planned a repair; live,
    the detector and the remediator knew the event."""
    notice, probes = host_reboot_scenario()
    # another node's event ended before the window; a late report of an earlier phase does not reopen it
    ended = cloud_event("node-x", t=-7000, phase="completed")
    late = cloud_event("node-x", t=-6900, phase="scheduled")
    report = await _what_if_unchanged(
        js, topology_ready, tmp_path, before=[notice, ended, late], window=probes, audit_js=audit_js, reader=reader
    )
    assert report["what_if"]["differences"] == []  # before: a new incident, `unexpected_reboot`, at t = 180 s
    assert report["what_if"]["open_before_window"] == {"cloud_events": 1, "anomalies_left_out": 1}
    assert report["what_if"]["incidents"] == 0 and report["what_if"]["ttd_s"]["max"] is None
    assert report["window"]["open_cloud_events"] == [
        {
            "node": "node-h",
            "provider_event_id": "e-node-h",
            "action": "reboot",
            "phase": "scheduled",
            "not_before": "2026-03-01T12:01:00Z",
            "reported_at": "2026-03-01T10:00:00Z",
        }
    ]


def load_rules_text(text: str) -> WhatIfRules:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "rules.yaml"
        path.write_text(text)
        return load_rules(path)


def own_reboot_scenario() -> tuple[list[TimelineMessage], list[TimelineMessage]]:
    """Our own reboot of node-r, begun just before the window: its AUDIT intent / started / succeeded are stored
    before --since (t < 0); its agent keeps probing through the shutdown until t = 10 s, is silent, and comes back
    with a new boot id at t = 90 s; the remediator verifies it at t = 120 s. node-ok probes all along (a fleet, so
    the detector's input is alive). The anomalies and diagnoses are what the services' own code made of all of it
    (the detector and diagnoser driven from t = -300 s, the AUDIT records included); the remediator's answer to a
    diagnosis in the window is the first step of its plan. Returns (stored before the window, in the window)."""
    # the verdict the reboot repaired (its episode ended before the reboot's downtime; not part of the recording)
    fault = firing("node-r", kind="kernel_fault", onset=-40, detected=-39, subject="soft_lockup")
    reboot = diagnosis("node-r", [fault], t=-30, cause="soft_lockup")
    records = [
        record("node-r", t=-22, phase="intent", diag=reboot),
        record("node-r", t=-20, phase="started", diag=reboot),
        record("node-r", t=-18, phase="succeeded", diag=reboot),
        record("node-r", t=120, phase="verified", diag=reboot),
    ]
    probes: list[TimelineMessage] = []
    for i, t in enumerate([*range(-300, 20, 10), *range(90, 400, 10)]):
        p = agent_probe("node-r", t, seq=i, used_pct=50.0)
        probes.append(p.model_copy(update={"boot_id": "boot-1" if t < 20 else "boot-2"}))
    probes += [agent_probe("node-ok", t, seq=i, used_pct=50.0) for i, t in enumerate(range(-300, 400, 10))]
    inputs = [m for m in [*records, *probes] if isinstance(m, NodeProbe | RemediationRecord)]
    live = run_sandbox(inputs=inputs, rules=load_rules_text("detector: {}\n"), until=at(400))
    answers: list[TimelineMessage] = []
    for d in live.diagnoses:
        action, _, _ = live.plans.get(d.id, ("none", False, ()))
        if action != "none":
            t = (d.time - at(0)).total_seconds()
            answers.append(record("node-r", t=t, phase="intent", action=action, diag=d, action_id=f"act-{d.id}"))
    everything: list[TimelineMessage] = [*records, *probes, *live.anomalies, *live.diagnoses, *answers]
    before = [m for m in everything if m.time < at(0)]
    window = [m for m in everything if m.time >= at(0)]
    return before, window


async def test_our_own_reboot_begun_before_the_window_is_known_to_the_what_if(
    topology_ready: NatsSettings, js: JetStreamContext, tmp_path: Path, audit_js: JetStreamContext, reader: NatsSettings
) -> None:
    """The live detector knew we were rebooting node-r (its AUDIT `started`, 20 s before the window: an expected
    grace) and the diagnoser explained the downtime by it (`planned_reboot`). Before, the what-if read AUDIT from
    --since only: its sandbox met node-r's silence as an unexplained `node_down` and its new boot id as an
    `unexpected_reboot` (`unexplained_reboot`, another cause and another first action) with the very same rules."""
    before, window = own_reboot_scenario()
    assert not [m for m in before if isinstance(m, Anomaly)]  # nothing fired before the window
    recorded = [m for m in window if isinstance(m, Anomaly)]
    assert {(a.kind, a.expected) for a in recorded} == {("node_down", True)}
    report = await _what_if_unchanged(
        js, topology_ready, tmp_path, before=before, window=window, audit_js=audit_js, reader=reader
    )
    assert report["what_if"]["differences"] == []
    # the records before the window are the sandbox's initial state only: not in the window's timeline or counts
    assert report["counts"]["audit_records"] == len([m for m in window if isinstance(m, RemediationRecord)])
    [incident] = report["incidents"]
    assert incident["node"] == "node-r" and incident["expected"]
    phases = {p["record_id"] for a in incident["actions"] for p in a["phases"]}
    assert not phases & {m.id for m in before}
    # the same figures: the detector knew the downtime was ours (expected: no node_down hold, no unexpected_reboot),
    # so the diagnosis came as early as live (the comparison itself looks at detection, cause and first action)
    assert report["what_if"]["incidents"] == 1
    assert (report["what_if"]["ttd_s"], report["what_if"]["tti_s"]) == (report["ttd_s"], report["tti_s"])
