"""`nodeheal replay` against a real nats-server with the deployed per-role authorization, run under the operator's
read-only `reader` credential: a recorded scenario published (as admin) with Nats-Msg-Ids is read back and
rebuilt into the timelines with the known time-to-detect / identify / repair; no permission violation logged."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from click.testing import CliRunner, Result
from nats.js.client import JetStreamContext

from nodeheal.cli.replay import replay
from nodeheal.cli.timeline import TimelineMessage
from nodeheal.runtime.jetstream import publish_model
from nodeheal.runtime.settings import NatsSettings
from nodeheal.schemas.audit import RemediationRecord
from nodeheal.schemas.inventory import NodeInventory, inventory_key
from tests.integration.deploy.natsauth_loader import (
    admin_stands_in,
)
from tests.support.cli import nats_args
from tests.unit.replay.factories import (
    CLUSTER,
    cloud_event,
    diagnosis,
    firing,
    probe,
    record,
    resolved,
    subject_of,
)

pytestmark = pytest.mark.nats

nc, topology_ready = admin_stands_in()  # the test stands in for the services that wrote the streams, as admin


def scenario() -> list[TimelineMessage]:
    """node-a hangs (kernel), is rebooted and verified; node-b fills a disk that clears by itself;
    node-c has expected cloud maintenance."""
    a = firing("node-a", kind="node_hang", onset=0, detected=12)
    d = diagnosis("node-a", [a], t=15, cause="soft_lockup", category="kernel")
    b = firing("node-b", kind="disk_full", onset=30, detected=33, subject="/var")
    c = firing("node-c", kind="cloud_maintenance", onset=40, detected=41, expected=True)
    return [
        probe("node-a", -10, ok=True, seq=1),
        probe("node-a", 0, ok=False, seq=2),
        probe("node-b", 0, ok=True, seq=1),
        cloud_event("node-c", t=-300),
        a,
        d,
        record("node-a", t=16, phase="intent", diag=d),
        record("node-a", t=17, phase="started", diag=d),
        b,
        c,
        record("node-a", t=40, phase="succeeded", diag=d),
        probe("node-a", 80, ok=True, seq=3),
        resolved(a, t=85),
        record("node-a", t=90, phase="verified", diag=d),
        resolved(b, t=200),
        resolved(c, t=300),
    ]


async def publish_scenario(
    js: JetStreamContext,
    settings: NatsSettings,
    messages: list[TimelineMessage],
    *,
    audit_js: JetStreamContext | None = None,
) -> None:
    """Store the scenario; its AUDIT records through `audit_js` when given (under the deployed authorization only
    the remediator may write AUDIT, not even the admin)."""
    for m in messages:
        into = audit_js if audit_js is not None and isinstance(m, RemediationRecord) else js
        await publish_model(into, subject_of(m, settings.prefix), m, msg_id=m.id)
    # a re-publish of the same message (same Nats-Msg-Id) is dropped by the stream's dedup window
    await publish_model(js, subject_of(messages[4], settings.prefix), messages[4], msg_id=messages[4].id)
    kv = await js.key_value(f"{settings.bucket_prefix}-inventory")
    for node, zone in (("node-a", "zone-1"), ("node-b", "zone-1"), ("node-c", "zone-2"), ("node-gone", "zone-1")):
        inv = NodeInventory(cluster=CLUSTER, node=node, zone=zone)
        await kv.put(inventory_key(CLUSTER, node), inv.to_json())
    # a node that left the fleet: its deletion is the bucket's last record (a reader of the inventory must still
    # end after it: the server counts the delete marker as sent)
    await kv.delete(inventory_key(CLUSTER, "node-gone"))


def _args(settings: NatsSettings, since: datetime, until: datetime, *extra: str) -> list[str]:
    return [*nats_args(settings), "--since", since.isoformat(), "--until", until.isoformat(), *extra]


async def _replay(settings: NatsSettings, since: datetime, until: datetime, *extra: str) -> Result:
    runner = CliRunner()
    result = await asyncio.to_thread(
        runner.invoke, replay, _args(settings, since, until, *extra), catch_exceptions=False
    )
    assert result.exit_code == 0, result.output + result.stderr
    return result


@pytest.fixture
async def recorded(
    topology_ready: NatsSettings, js: JetStreamContext, audit_js: JetStreamContext, reader: NatsSettings
) -> tuple[NatsSettings, datetime, datetime]:
    """The scenario stored; the settings the CLI is given: the reader's credential."""
    since = datetime.now(tz=UTC) - timedelta(seconds=1)
    await publish_scenario(js, topology_ready, scenario(), audit_js=audit_js)
    until = datetime.now(tz=UTC) + timedelta(seconds=1)
    return reader, since, until


async def test_replay_rebuilds_the_known_timelines_and_is_byte_identical(
    recorded: tuple[NatsSettings, datetime, datetime], tmp_path: Path
) -> None:
    settings, since, until = recorded
    html_path = tmp_path / "replay.html"
    first = await _replay(settings, since, until, "--all", "--json", "--html", str(html_path))
    report = json.loads(first.stdout)
    assert "disconnected" not in first.stderr  # the command's own close at the end is no disconnect to report
    by_node = {i["node"]: i for i in report["incidents"]}
    assert sorted(by_node) == ["node-a", "node-b", "node-c"]
    a = by_node["node-a"]
    assert (a["ttd_s"], a["tti_s"], a["ttr_s"]) == (12.0, 15.0, 90.0)
    assert a["cause"] == "soft_lockup" and a["action_taken"] is True
    assert [p["phase"] for p in a["actions"][0]["phases"]] == ["intent", "started", "succeeded", "verified"]
    assert (by_node["node-b"]["ttd_s"], by_node["node-b"]["ttr_s"]) == (3.0, 170.0)
    assert by_node["node-c"]["expected"] is True and len(by_node["node-c"]["cloud_events"]) == 1
    assert report["ttd_s"] == {"p50": 3.0, "p95": 12.0, "max": 12.0}
    assert report["counts"]["probes"] == 4 and report["counts"]["anomalies"] == 6
    assert report["skipped"] == []
    assert set(report["by_class"]) == {"soft_lockup", "disk_full", "cloud_maintenance"}

    second = await _replay(settings, since, until, "--all", "--json")
    assert second.stdout == first.stdout

    page = html_path.read_text(encoding="utf-8")
    for node in ("node-a", "node-b", "node-c"):
        assert f"data-node='{CLUSTER}/{node}'" in page
    assert page.count("class='node-timeline'") == 3
    assert "Plotly.newPlot" in page


async def test_replay_of_one_node_and_of_a_zone(recorded: tuple[NatsSettings, datetime, datetime]) -> None:
    settings, since, until = recorded
    one = json.loads((await _replay(settings, since, until, "--node", "node-b", "--json")).stdout)
    assert [i["node"] for i in one["incidents"]] == ["node-b"]
    assert one["counts"]["probes"] == 1 and one["counts"]["audit_records"] == 0
    zone = json.loads((await _replay(settings, since, until, "--zone", "zone-1", "--json")).stdout)
    assert sorted(i["node"] for i in zone["incidents"]) == ["node-a", "node-b"]


async def test_a_window_before_anything_was_stored_is_empty(recorded: tuple[NatsSettings, datetime, datetime]) -> None:
    settings, since, _until = recorded
    result = await _replay(settings, since - timedelta(hours=2), since - timedelta(hours=1), "--all", "--json")
    report = json.loads(result.stdout)
    assert report["incidents"] == [] and report["counts"]["probes"] == 0


async def test_replay_needs_a_scope(recorded: tuple[NatsSettings, datetime, datetime]) -> None:
    settings, since, until = recorded
    result = await asyncio.to_thread(CliRunner().invoke, replay, _args(settings, since, until))
    assert result.exit_code == 2 and "choose exactly one of --node" in result.output
