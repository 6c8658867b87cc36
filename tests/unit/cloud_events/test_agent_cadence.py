"""The agent's cadence of full probes and heartbeats, on a fake node root with a real `systemctl`
script run as a subprocess: a full probe every `full_every` probes (staggered by node), at once for the
first probe, a new boot, file handles running high and after a node command; kernel lines in heartbeats."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from pydantic import ValidationError

from nodeheal.agent.host import HostReader
from nodeheal.agent.kmsg import KmsgReader
from nodeheal.agent.probe import ProbeCollector, SequenceCounter, full_every_for, full_phase
from nodeheal.agent.settings import AgentSettings
from nodeheal.agent.systemd import SystemctlClient
from tests.unit.cloud_events.agent_fakenode import FakeNode, make_fake_node, statvfs_with

BOOT = "0f0e0d0c-1111-2222-3333-444455556666"


def _collector(node: FakeNode, tmp_path: Path, *, name: str = "n1", full_every: int = 6) -> ProbeCollector:
    state = tmp_path / f"kmsg-{name}.json"
    state.write_text(json.dumps({"boot_id": BOOT, "seq": 0}))  # every line written from now on is new
    return ProbeCollector(
        cluster="c",
        node=name,
        host=HostReader(root=node.root, statvfs=statvfs_with({})),  # type: ignore[arg-type]
        systemd=SystemctlClient(command=(node.systemctl,)),
        services=("kubelet", "containerd"),
        kernel_log=KmsgReader(path=node.root / "dev/kmsg", state_file=state, boot_id=BOOT),
        max_kernel_lines=10,
        sequence=SequenceCounter(state_file=None),
        full_every=full_every,
    )


@pytest.fixture
def node(tmp_path: Path) -> FakeNode:
    fake = make_fake_node(tmp_path)
    fake.set_unit("kubelet.service", "active", restarts=0)
    fake.set_unit("containerd.service", "active", restarts=0)
    return fake


async def test_a_full_probe_every_k_probes_staggered_by_node_and_heartbeats_between(
    node: FakeNode, tmp_path: Path
) -> None:
    names = ("n1", "n2", "n3", "n4", "n5")
    phases = {full_phase(n, 6) for n in names}
    assert len(phases) > 1  # the names used here fall in different places of the cycle
    for name in names:
        collector = _collector(node, tmp_path, name=name)
        probes = [await collector.collect() for _ in range(19)]
        fulls = [i for i, p in enumerate(probes) if p.full]
        assert fulls[0] == 0  # the first probe (the agent just started) is full
        cadence = fulls[1:]
        assert cadence == list(range(cadence[0], 19, 6)) and cadence[0] <= 6, (name, fulls)
        assert cadence[0] % 6 == (-full_phase(name, 6)) % 6
        for p in probes:
            if p.full:
                assert {s.name for s in p.services} == {"kubelet", "containerd"}
                assert p.filesystems
            else:  # a heartbeat: the cheap readings only
                assert p.services == () and p.filesystems == () and p.fd_holders == ()
                assert p.boot_id == BOOT and p.load is not None and p.file_handles is not None
                assert p.uptime_s is not None and p.cpu_count == 64 and p.kernel_release is not None
        assert [p.seq for p in probes] == sorted({p.seq for p in probes})


async def test_kernel_lines_ride_in_heartbeats(node: FakeNode, tmp_path: Path) -> None:
    collector = _collector(node, tmp_path, name="n1")
    await collector.collect()  # the first probe: full
    probes = []
    for i in range(6):
        node.kmsg(f"EXT4-fs error (device vda1): line {i}")
        probes.append(await collector.collect())
    heartbeats = [p for p in probes if not p.full]
    assert len(heartbeats) == 5
    assert [p.kernel_log for p in probes] == [(f"EXT4-fs error (device vda1): line {i}",) for i in range(6)]


async def test_a_node_command_a_new_boot_and_high_file_handles_make_the_next_probe_full(
    node: FakeNode, tmp_path: Path
) -> None:
    collector = _collector(node, tmp_path, name="n1", full_every=1000)
    assert (await collector.collect()).full and collector.full_reason == "first probe"
    assert not (await collector.collect()).full
    collector.want_full("node command")
    node.set_unit("kubelet.service", "active", restarts=1)
    after = await collector.collect()
    assert after.full and collector.full_reason == "node command"
    assert {(s.name, s.restarts) for s in after.services} >= {("kubelet", 1)}
    assert not (await collector.collect()).full
    node.write("/proc/sys/kernel/random/boot_id", "99999999-1111-2222-3333-444455556666\n")
    assert (await collector.collect()).full and collector.full_reason == "new boot"
    assert not (await collector.collect()).full
    node.write("/proc/sys/fs/file-nr", "95000\t0\t100000\n")
    high = await collector.collect()
    assert high.full and collector.full_reason == "file handles"


def test_the_default_cadence_keeps_a_full_probe_within_30_seconds() -> None:
    assert full_every_for(5.0, None) == 6
    assert full_every_for(10.0, None) == 3
    assert full_every_for(2.0, None) == 15
    assert full_every_for(60.0, None) == 1
    assert full_every_for(5.0, 2) == 2
    assert AgentSettings(interval_s=5.0, full_every=12).full_every == 12  # 60 s: allowed, not advised
    with pytest.raises(ValidationError, match="1-minute detection budget"):
        AgentSettings(interval_s=5.0, full_every=13)
