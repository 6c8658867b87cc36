"""Fleet KPIs live: the real diagnoser service diagnoses crashes on a real nats-server, exports the three
rates as gauges, and `nodeheal fleet --json` (and --html) reads the same numbers, the risks and the crash
buckets back from the streams and the inventory."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import prometheus_client
import pytest
from click.testing import CliRunner
from nats.aio.client import Client

from nodeheal.cli.main import cli
from nodeheal.diagnoser.handlers import DiagnoserRuntime
from nodeheal.diagnoser.settings import DiagnoserSettings
from nodeheal.runtime.jetstream import publish_model
from nodeheal.runtime.settings import NatsSettings
from nodeheal.schemas.inventory import inventory_key
from nodeheal.schemas.subjects import anomaly_subject
from tests.integration.deploy.natsauth_loader import RoleServer, admin_stands_in, mint_role, violations
from tests.support.cli import nats_args
from tests.unit.diagnoser.scenarios import CLUSTER, OOPS_A, anomaly, inventory

pytestmark = pytest.mark.nats

nc, topology_ready = admin_stands_in()  # the test stands in for the detector and the inventory watcher, as admin

BAD = "6.6.6-bad"


@pytest.fixture
async def fleet(deployed: RoleServer) -> AsyncIterator[tuple[DiagnoserRuntime, NatsSettings]]:
    """The diagnoser under its role's credential on the per-role server."""
    nc, topology_ready = deployed.nc, deployed.settings
    js = nc.jetstream()
    kv = await js.key_value(f"{topology_ready.bucket_prefix}-inventory")
    for i in range(40):
        record = inventory(f"k{i}", rack=f"r{i % 4}", zone=f"z{i % 2}", kernel=BAD if i < 8 else "5.10.134")
        if i == 39:  # one cordoned node
            record = record.model_copy(update={"unschedulable": True})
        await kv.put(inventory_key(CLUSTER, record.node), record.to_json())
    # a node that left the fleet, its deletion the bucket's last record: not counted, and the readers still end
    await kv.put(inventory_key(CLUSTER, "k-gone"), inventory("k-gone").to_json())
    await kv.delete(inventory_key(CLUSTER, "k-gone"))
    settings = DiagnoserSettings(
        nats=deployed.role,
        cluster=CLUSTER,
        tick_s=0.1,
        node_down_hold_s=0.5,
        correlation_interval_s=0.3,
        fetch_timeout_s=0.3,
        correlation_min_nodes=3,
    )
    runtime = DiagnoserRuntime(
        settings=settings, nc=await deployed.role_nc("diagnoser"), registry=prometheus_client.CollectorRegistry()
    )
    await runtime.start()
    yield runtime, topology_ready
    await runtime.stop()
    assert violations(deployed.dir) == []


def _gauge(runtime: DiagnoserRuntime, kpi: str) -> float:
    return float(runtime.m_fleet.labels(kpi)._value.get())


async def test_kpis_risks_and_buckets_from_the_live_pipeline(
    fleet: tuple[DiagnoserRuntime, NatsSettings], nc: Client, tmp_path: Path, deployed: RoleServer
) -> None:
    runtime, settings = fleet
    js = nc.jetstream()
    t = datetime.now(UTC)
    # the same oops on 5 of the 8 nodes of the bad kernel; one node down (no peers down: a crash)
    for node in ("k0", "k1", "k2", "k3", "k4"):
        a = anomaly(node, "kernel_fault", subject="crash", lines=OOPS_A, at=t)
        await publish_model(js, anomaly_subject(CLUSTER, node, prefix=settings.prefix), a, msg_id=a.id)
    down = anomaly("k20", "node_down", at=t)
    await publish_model(js, anomaly_subject(CLUSTER, "k20", prefix=settings.prefix), down, msg_id=down.id)

    for _ in range(900):  # a loaded machine: up to 90 s
        if _gauge(runtime, "crash") > 0 and _gauge(runtime, "online") < 1:
            break
        await asyncio.sleep(0.1)
    assert _gauge(runtime, "online") == pytest.approx(39 / 40)
    assert _gauge(runtime, "schedulable") == pytest.approx(38 / 40)  # k39 cordoned, k20 down
    assert _gauge(runtime, "crash") > 0

    html = tmp_path / "fleet.html"
    args = [
        "fleet",
        "--json",
        "--html",
        str(html),
        "--since",
        "1h",
        *nats_args(settings),
        *("--creds", str(mint_role(deployed.dir, "reader"))),  # the operator's read-only credential
    ]
    report = {}
    for _ in range(200):  # the bad-kernel finding needs a correlation run after the crashes
        result = await asyncio.to_thread(CliRunner().invoke, cli, args, catch_exceptions=False)
        assert result.exit_code == 0, result.output
        report = json.loads(result.stdout)
        if any(r["dimension"] == "kernel" for r in report["systematic_risks"]):
            break
        await asyncio.sleep(0.2)
    assert report["nodes"] == 40
    assert report["online_rate"] == pytest.approx(39 / 40)
    assert report["schedulable_rate"] == pytest.approx(38 / 40)
    # five crash episodes with a signature, and the lone node_down diagnosed as a crash
    assert report["crashes"] >= 5
    assert report["crash_rate"] == pytest.approx(report["crashes"] / 40 / (3600 / 86_400), rel=0.01)
    kernels = [r for r in report["systematic_risks"] if r["dimension"] == "kernel"]
    assert kernels and kernels[0]["value"] == BAD
    top = report["top_crash_buckets"][0]
    # the bucket names the kernel the crash text itself reports (its release line), and the machine model
    assert (top["count"], top["nodes"], top["kind"]) == (5, 5, "oops_null_deref")
    assert top["kernels"] == {"5.10.134-16.al8.x86_64": 5} and top["machine_models"] == {"m1": 5}
    assert "<script>" in html.read_text() and "top crash buckets" in html.read_text()


async def test_fleet_without_a_server_says_what_to_do() -> None:
    result = await asyncio.to_thread(CliRunner().invoke, cli, ["fleet", "--json"], env={"NATS_URL": ""})
    assert result.exit_code != 0
    assert "--nats-url" in result.output
