"""The services keep working when something outside them restarts the nats-server they were pointed at
(as with `nodeheal demo --nats-url`): a server started here with its own store is SIGKILLed and started
again on the same port and store; the detector and the diagnoser processes reconnect (one connection
each again, `/healthz` 200 throughout) and a fault that starts after the restart is still detected and
diagnosed. The long version — a whole `nodeheal demo --nats-url` run with that restart mid-run — is the
second test, run with `NODEHEAL_LONG_DEMO_TESTS=1` (about two minutes here; docs/demo.md)."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest
from rich.console import Console

from nodeheal.runtime.connect import connect
from nodeheal.runtime.provision import apply_topology
from nodeheal.runtime.settings import NatsSettings
from nodeheal.schemas import Anomaly, Diagnosis
from nodeheal.schemas.subjects import wildcard
from nodeheal.sim.demo import DemoConfig, run_demo
from nodeheal.sim.embedded import EmbeddedNats, free_port
from tests.integration.detector.test_detector_nats import probe, publish, read_all

pytestmark = [pytest.mark.nats, pytest.mark.slow]

SERVICES = {"detector": "NODEHEAL_DETECTOR_", "diagnoser": "NODEHEAL_DIAGNOSER_"}


def _status(port: int, path: str) -> int:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=2) as response:
            return int(response.status)
    except urllib.error.HTTPError as err:
        return int(err.code)
    except OSError:
        return 0


def _connection_names(server: EmbeddedNats) -> list[str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{server.monitor_port}/connz?limit=1000", timeout=2) as r:
            return [c.get("name", "") for c in json.load(r)["connections"]]
    except OSError:
        return []


async def _until(check: Callable[[], Awaitable[bool]], what: str, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if await check():
            return
        await asyncio.sleep(0.2)
    raise AssertionError(f"timed out: {what}")


async def test_services_ride_out_an_outside_restart_of_their_nats_server(tmp_path: Path) -> None:
    server = EmbeddedNats(store_dir=str(tmp_path / "store"), log_file=str(tmp_path / "nats.log")).start()
    settings = NatsSettings(url=server.url)
    procs: dict[str, tuple[subprocess.Popen[bytes], int]] = {}
    nc = await connect(settings, name="pytest-outside")
    try:
        await apply_topology(nc.jetstream(), settings.topology())
        for name, prefix in SERVICES.items():
            port = free_port()
            env = {k: v for k, v in os.environ.items() if not k.startswith("NODEHEAL_") and k != "NATS_URL"}
            env |= {
                f"{prefix}NATS__URL": server.url,
                f"{prefix}CLUSTER": "c1",
                f"{prefix}HTTP_PORT": str(port),
                f"{prefix}HTTP_HOST": "127.0.0.1",
                f"{prefix}LOG_FORMAT": "json",
            }
            log = (tmp_path / f"{name}.log").open("wb")
            procs[name] = (
                subprocess.Popen([sys.executable, "-m", f"nodeheal.{name}"], env=env, stdout=log, stderr=log),
                port,
            )

        async def all_ready() -> bool:
            for name, (proc, _) in procs.items():
                assert proc.poll() is None, (tmp_path / f"{name}.log").read_text()[-2000:]
            return all(_status(port, "/readyz") == 200 for _, port in procs.values())

        await _until(all_ready, "the services ready")
        await publish(nc, settings, probe(node="n1", seq=1, used=20.0))

        server.kill()  # from outside: SIGKILL, then the same port and store again
        await asyncio.sleep(1.0)
        server.start()
        healthz = [_status(port, "/healthz") for _, port in procs.values()]

        async def reconnected() -> bool:
            names = _connection_names(server)
            one_each = all(sum(n.startswith(f"nodeheal-{s}-") for n in names) == 1 for s in SERVICES)
            return one_each and await all_ready()

        await _until(reconnected, "the services reconnected, one connection each")
        healthz += [_status(port, "/healthz") for _, port in procs.values()]
        for seq in range(2, 5):  # a disk fills after the restart
            await publish(nc, settings, probe(node="n1", seq=seq, used=99.0))
            await asyncio.sleep(0.3)
        stream_prefix, prefix = settings.stream_prefix, settings.prefix

        async def diagnosed() -> bool:
            raw = await read_all(nc, f"{stream_prefix}DIAGNOSES", wildcard("diagnosis", prefix=prefix))
            return any(Diagnosis.model_validate_json(d).cause == "disk_full" for d in raw)

        await _until(diagnosed, "a disk_full diagnosis after the restart")
        raw = await read_all(nc, f"{stream_prefix}ANOMALIES", wildcard("anomaly", prefix=prefix))
        kinds = [(a.kind, a.status) for a in map(Anomaly.model_validate_json, raw)]
        assert kinds.count(("disk_full", "firing")) == 1, kinds
        assert set(healthz) == {200}, healthz  # never asked to be restarted: nats-py reconnected
    finally:
        await nc.close()
        for proc, _ in procs.values():
            proc.terminate()
        for proc, _ in procs.values():
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
        server.stop()


@pytest.mark.skipif(
    os.environ.get("NODEHEAL_LONG_DEMO_TESTS") != "1", reason="about two minutes: set NODEHEAL_LONG_DEMO_TESTS=1"
)
async def test_the_demo_rides_out_an_outside_restart_of_its_nats_server(tmp_path: Path) -> None:
    server = EmbeddedNats(store_dir=str(tmp_path / "store"), log_file=str(tmp_path / "nats.log")).start()
    cfg = DemoConfig(
        nodes=100,  # the plan injects every class (43 faults here): room for one fault per node
        duration_s=20.0,
        settle_s=30.0,
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
    rows = report["fault_rows"]
    assert any(r["injected_at"] < restarted[0] for r in rows) and any(r["injected_at"] > restarted[0] for r in rows)
    undetected = [(r["fault_id"], r["fault_class"], r["injected_at"] - restarted[0]) for r in rows if not r["detected"]]
    assert undetected == [], undetected
    assert report["chaos"]["repeated_side_effects"] == 0, report["chaos"]["repeated_examples"]
    assert report["safety"]["all_zero"], report["safety"]["examples"]
    assert report["security"]["auth_mode"] == "external"
