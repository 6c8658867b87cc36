"""`nodeheal replay --what-if` against a real nats-server: a stricter disk threshold finds an incident the
recorded run did not have, and not one message reaches the live subjects while the sandbox runs."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from click.testing import CliRunner
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js.client import JetStreamContext

from nodeheal.cli.replay import replay
from nodeheal.cli.timeline import TimelineMessage
from nodeheal.runtime.jetstream import publish_model
from nodeheal.runtime.settings import NatsSettings
from nodeheal.schemas.cloud import CloudSystemEvent
from nodeheal.schemas.ids import deterministic_id
from nodeheal.schemas.probe import FileSystem, LoadAverage, NodeProbe, Reachability, ServiceState
from tests.integration.replay.test_replay import _args, publish_scenario
from tests.unit.replay.factories import CLUSTER, at, cloud_event, subject_of

pytestmark = pytest.mark.nats


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
    topology_ready: NatsSettings, js: JetStreamContext, nc: Client, tmp_path: Path
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
        args = _args(topology_ready, since, until, "--all", "--json", "--what-if", str(rules))
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
    args = _args(topology_ready, since, until, "--all", "--json", "--what-if", str(same))
    again = await asyncio.to_thread(CliRunner().invoke, replay, args, catch_exceptions=False)
    assert json.loads(again.stdout)["what_if"]["differences"] == []


async def test_a_bad_rules_file_is_a_usage_error(topology_ready: NatsSettings, tmp_path: Path) -> None:
    rules = tmp_path / "rules.yaml"
    rules.write_text("detector:\n  disk_full_pct: 900\n")
    now = datetime.now(tz=UTC)
    args = _args(topology_ready, now - timedelta(minutes=1), now, "--all", "--what-if", str(rules))
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
    topology_ready: NatsSettings, js: JetStreamContext, tmp_path: Path
) -> None:
    """A notice comes once, days ahead (AWS about two weeks), and nothing more until its phase changes:
    the window of a postmortem rarely holds it. Before, the what-if read CLOUD from --since only, so the
    sandbox met node-h's host reboot as an unexplained outage and diagnosed it and planned a repair; live,
    the detector and the remediator knew the event."""
    notice, probes = host_reboot_scenario()
    # another node's event ended before the window; a late report of an earlier phase does not reopen it
    ended = cloud_event("node-x", t=-7000, phase="completed")
    late = cloud_event("node-x", t=-6900, phase="scheduled")
    for m in (notice, ended, late):
        await publish_model(js, subject_of(m, topology_ready.prefix), m, msg_id=m.id)
    await asyncio.sleep(1.1)
    since = datetime.now(tz=UTC)
    for p in probes:
        await publish_model(js, subject_of(p, topology_ready.prefix), p, msg_id=p.id)
    until = datetime.now(tz=UTC) + timedelta(seconds=1)
    same = tmp_path / "same.yaml"
    same.write_text("detector: {}\n")
    args = _args(topology_ready, since, until, "--all", "--json", "--what-if", str(same))
    result = await asyncio.to_thread(CliRunner().invoke, replay, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
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
