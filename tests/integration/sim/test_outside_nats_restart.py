"""`nodeheal demo --nats-url` keeps working when something outside it restarts that nats-server: a server
started here (not by the demo) with its own store is SIGKILLed mid-run and started again on the same port
and store; every connection of the demo, its services and its simulated fleet reconnects, the demo
finishes, and its report still holds the run (faults found, nothing lost from the streams, no side
effect repeated). The long version is `nodeheal demo --chaos` (docs/demo.md)."""

from __future__ import annotations

import asyncio
import json
import time
import urllib.request
from pathlib import Path

import pytest
from rich.console import Console

from nodeheal.sim.demo import DemoConfig, run_demo
from nodeheal.sim.embedded import EmbeddedNats

pytestmark = [pytest.mark.nats, pytest.mark.slow]


def _connection_names(server: EmbeddedNats) -> list[str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{server.monitor_port}/connz?limit=1000", timeout=2) as r:
            return [c.get("name", "") for c in json.load(r)["connections"]]
    except OSError:
        return []


async def test_the_demo_rides_out_an_outside_restart_of_its_nats_server(tmp_path: Path) -> None:
    server = EmbeddedNats(store_dir=str(tmp_path / "store"), log_file=str(tmp_path / "nats.log")).start()
    cfg = DemoConfig(
        nodes=30,
        duration_s=20.0,
        settle_s=15.0,
        probe_interval_s=2.0,
        faults_per_minute=6.0,
        seed=5,
        nats_url=server.url,
        partition=False,
        report_path=tmp_path / "report.html",
        run_dir=tmp_path / "run",
        quiet=True,
    )
    restarted: list[float] = []

    async def restart_from_outside() -> None:
        # the simulated prober connects right before the fleet starts; faults start 3 intervals later
        for _ in range(1500):
            if "nodeheal-sim-prober" in await asyncio.to_thread(_connection_names, server):
                break
            await asyncio.sleep(0.2)
        await asyncio.sleep(cfg.probe_interval_s * 3 + 6.0)
        await asyncio.to_thread(server.kill)
        await asyncio.sleep(1.0)
        await asyncio.to_thread(server.start)  # same port, same store
        restarted.append(time.time())

    outside = asyncio.create_task(restart_from_outside())
    try:
        report = await run_demo(cfg, console=Console(stderr=True, quiet=True))
        await outside
    finally:
        outside.cancel()
        server.stop()
    assert restarted, "the server was never restarted during the run"
    faults = report["faults"]
    assert faults["injected"] > 0 and faults["detected"] == faults["injected"], faults
    rows = report["fault_rows"]
    assert any(r["injected_at"] < restarted[0] for r in rows) and any(r["injected_at"] > restarted[0] for r in rows)
    assert report["chaos"]["repeated_side_effects"] == 0, report["chaos"]["repeated_examples"]
    assert report["safety"]["all_zero"], report["safety"]["examples"]
    assert report["security"]["auth_mode"] == "external"
