"""A simulated kernel crash reaches nodeheal the way a real one does: the dying node leaves a pstore
ramoops record (and maybe a kdump vmcore-dmesg.txt) in its files, never a line in a probe; after the
reboot the agent's own `CrashCollector` reads them and the crash report lands in CRASHES on a real
nats-server, where the diagnoser's classifier finds the injected panic. As deployed: the per-role server, each
node's agent under its own node credential, the prober under its role; the test reads as admin."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import orjson
import pytest
from nats.aio.client import Client

from nodeheal.diagnoser.crash import classify
from nodeheal.diagnoser.kb import Matcher, load_knowledge_base
from nodeheal.diagnoser.kb.signature import signature_identified
from nodeheal.runtime.connect import connect
from nodeheal.runtime.settings import NatsSettings
from nodeheal.schemas.crash import CrashReport
from nodeheal.sim.engine import FleetSimulator, SimTimings
from nodeheal.sim.faults import PlannedFault
from nodeheal.sim.fleet import FleetSpec
from tests.integration.deploy.natsauth_loader import connect_agent, per_role_server, role_nats, violations

pytestmark = pytest.mark.nats


async def test_a_simulated_panic_is_reported_from_pstore_after_the_reboot(tmp_path: Path) -> None:
    directory = tmp_path / "nats"
    directory.mkdir()
    async with per_role_server(directory, "prober") as (server, nc, settings):
        opened = [await connect(role_nats(directory, server.url, "prober"), name="prober")]
        try:
            await _panic_reported(tmp_path, nc, settings, directory, server.url, opened)
        finally:
            for conn in opened:
                await conn.close()
    assert violations(directory) == []


async def _panic_reported(
    tmp_path: Path, nc: Client, settings: NatsSettings, directory: Path, url: str, opened: list[Client]
) -> None:
    spec = FleetSpec(nodes=6, seed=5, bad_kernel_share=1.0)
    sim = FleetSimulator(
        spec=spec,
        settings=settings,
        timings=SimTimings(probe_interval_s=0.3, reboot_s=1.0),
        work_dir=tmp_path / "nodes",
    )
    probes: list[dict[str, Any]] = []
    reports: list[CrashReport] = []

    async def probe(msg: Any) -> None:
        probes.append(orjson.loads(msg.data))

    async def crash(msg: Any) -> None:
        reports.append(CrashReport.model_validate_json(msg.data))

    await nc.subscribe(f"{settings.prefix}.probe.>", cb=probe)
    await nc.subscribe(f"{settings.prefix}.crash.>", cb=crash)
    await nc.flush()
    agents = {node: await connect_agent(directory, url, spec.cluster, node) for node in sim.nodes}
    opened.extend(agents.values())
    await sim.start(prober_nc=opened[0], agent_nc=agents)
    try:
        await asyncio.sleep(0.5)
        [fault] = sim.inject(PlannedFault(at_s=0.0, fault_class="bad_kernel_crash"))
        node = sim.nodes[fault.node]
        crashed_boot = node.boot_id
        for _ in range(100):
            if reports:
                break
            await asyncio.sleep(0.1)
        await asyncio.sleep(0.5)  # a second report would come now
    finally:
        await sim.stop()

    assert len(reports) == 1, reports
    report = reports[0]
    assert report.node == fault.node and report.unexpected
    assert report.previous_boot_id == crashed_boot and report.boot_id == node.boot_id != crashed_boot
    sources = {e.source for e in report.evidence}
    assert "pstore" in sources and sources <= {"pstore", "kdump"}
    assert any(e.path.startswith("/sys/fs/pstore/dmesg-ramoops-") for e in report.evidence)
    assert report.kernel_release == spec.bad_kernel

    verdict = classify(report, Matcher(load_knowledge_base()))
    assert verdict.cls == "kernel_panic"
    # a crash that names its bug (the bad kernel's one bucket across its hosts, docs/demo.md)
    assert verdict.signature is not None and signature_identified(verdict.signature)
    if verdict.signature is not None and verdict.signature.kernel_release:
        assert verdict.signature.kernel_release == node.inv.kernel
    # the panic never travelled in a probe: the kernel was dead
    assert not [line for p in probes if p["node"] == fault.node for line in p.get("kernel_log", [])]
    # the evidence is still on the node's disk (nothing deletes it)
    assert (tmp_path / "nodes").exists() and any((tmp_path / "nodes").rglob("dmesg-ramoops-*"))
