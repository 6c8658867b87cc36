"""The agent's heartbeat is assembled without pydantic validating it again (`ProbeCollector._probe`):
what it sends must be exactly what the validated model gives, field for field and byte for byte, and a
reading out of the schema's bounds must still fail as it did before (validated)."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

import nodeheal.agent.probe as probe_module
from nodeheal.agent.host import HostReader
from nodeheal.agent.kmsg import KmsgReader
from nodeheal.agent.probe import ProbeCollector, SequenceCounter
from nodeheal.agent.systemd import SystemctlClient
from nodeheal.schemas.probe import NodeProbe
from nodeheal.sim.fleet import FleetSpec, SimNode, build_inventory
from nodeheal.sim.nodehost import AgentProfile, SimAgent
from tests.unit.cloud_events.agent_fakenode import FakeNode, make_fake_node, statvfs_with

BOOT = "0f0e0d0c-1111-2222-3333-444455556666"


def _collector(node: FakeNode, tmp_path: Path, *, full_every: int = 6) -> ProbeCollector:
    state = tmp_path / "kmsg.json"
    state.write_text(json.dumps({"boot_id": BOOT, "seq": 0}))
    return ProbeCollector(
        cluster="c",
        node="n1",
        host=HostReader(root=node.root, statvfs=statvfs_with({})),  # type: ignore[arg-type]
        systemd=SystemctlClient(command=(node.systemctl,)),
        services=("kubelet",),
        kernel_log=KmsgReader(path=node.root / "dev/kmsg", state_file=state, boot_id=BOOT),
        max_kernel_lines=10,
        sequence=SequenceCounter(state_file=None),
        full_every=full_every,
    )


def assert_same_as_validated(probe: NodeProbe) -> None:
    """`probe` holds every field of the model, each what validating its values again gives."""
    assert set(probe.__dict__) == set(NodeProbe.model_fields)
    values = {name: getattr(probe, name) for name in NodeProbe.model_fields}
    validated = NodeProbe(**values)
    assert validated.__dict__ == probe.__dict__
    assert validated == probe
    assert probe.to_json() == validated.to_json() == validated.model_dump_json(by_alias=True).encode()
    assert NodeProbe.model_validate_json(probe.to_json()) == probe  # what a reader of the wire gets
    assert probe.model_dump(mode="json", by_alias=True) == json.loads(probe.to_json())


@pytest.fixture
def assembled(monkeypatch: pytest.MonkeyPatch) -> list[NodeProbe]:
    """The probes the collector assembled without validation."""
    out: list[NodeProbe] = []
    real = probe_module.trusted

    def spy(cls: Any, values: dict[str, Any]) -> Any:
        built = real(cls, values)
        out.append(built)
        return built

    monkeypatch.setattr(probe_module, "trusted", spy)
    return out


async def test_a_heartbeat_is_field_for_field_the_validated_probe(tmp_path: Path, assembled: list[NodeProbe]) -> None:
    node = make_fake_node(tmp_path)
    node.set_unit("kubelet.service", "active", restarts=0)
    collector = _collector(node, tmp_path)
    probes = []
    for i in range(12):
        if i == 4:
            node.kmsg("EXT4-fs error (device vda1): a kernel line in a heartbeat")
        node.write("/proc/loadavg", f"{1.5 + i:.2f} 0.75 0.25 3/812 12345\n")
        probes.append(await collector.collect())
    heartbeats = [p for p in probes if not p.full]
    assert len(heartbeats) >= 9  # the first probe and one or two of the cadence are full
    assert [p.id for p in assembled] == [p.id for p in heartbeats]  # every heartbeat took the fast path
    assert any(p.kernel_log for p in heartbeats)
    for probe in probes:
        assert_same_as_validated(probe)
    assert [p.seq for p in probes] == list(range(probes[0].seq, probes[0].seq + 12))
    assert len({p.id for p in probes}) == 12


async def test_a_simulated_nodes_heartbeats_are_the_validated_probe(assembled: list[NodeProbe]) -> None:
    spec = FleetSpec(nodes=3)
    now = time.time()
    nodes = [SimNode(inv=inv, index=i, booted_at=now - 3600) for i, inv in enumerate(build_inventory(spec))]
    agents = [SimAgent(n, cluster=spec.cluster, profile=AgentProfile(full_every=6), work_dir=None) for n in nodes]
    probes = [await agent.collect(now=now + i, noise=0.01 * i) for i in range(8) for agent in agents]
    assert sum(not p.full for p in probes) >= 12
    assert len(assembled) == sum(not p.full for p in probes)
    for probe in probes:
        assert_same_as_validated(probe)


async def test_a_reading_out_of_bounds_in_a_heartbeat_still_fails_validation(
    tmp_path: Path, assembled: list[NodeProbe]
) -> None:
    node = make_fake_node(tmp_path)
    node.set_unit("kubelet.service", "active", restarts=0)
    collector = _collector(node, tmp_path, full_every=1000)  # after the first probe, heartbeats only
    await collector.collect()  # the first probe: full, validated
    await collector.collect()
    assert collector.full_reason == ""
    assert len(assembled) == 1
    node.write("/proc/uptime", "-5.00 1.00\n")  # a broken /proc/uptime: below the schema's bound
    with pytest.raises(ValidationError, match="uptime_s"):
        await collector.collect()
    assert collector.full_reason == ""  # it was a heartbeat
    node.write("/proc/uptime", "12345.67 54321.00\n")
    node.write("/etc/os-release", 'PRETTY_NAME="Another image"\n')  # a boot fact re-read (a new boot id is full)
    collector._boot_facts = None
    probe = await collector.collect()
    assert not probe.full
    assert probe.os_image == "Another image"
    assert probe not in assembled  # a value not seen validated yet: built validated
    assert_same_as_validated(probe)
