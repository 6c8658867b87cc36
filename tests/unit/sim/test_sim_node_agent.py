"""The real node agent code on a simulated node: the collector reads the node through the simulator's
host interface, and commands run through the agent's own executor and allow-lists."""

from __future__ import annotations

import time
from pathlib import Path

from nodeheal.schemas.commands import NodeCommand
from nodeheal.sim.fleet import FleetSpec, SimNode, build_inventory
from nodeheal.sim.nodehost import AgentProfile, SimAgent
from nodeheal.sim.shard import SYNCED


def _node() -> SimNode:
    inv = build_inventory(FleetSpec(nodes=3))[1]
    return SimNode(inv=inv, index=1, booted_at=time.time() - 600)


def _command(node: SimNode, command: str, target: str | None, action_id: str) -> NodeCommand:
    return NodeCommand(cluster=node.inv.cluster, node=node.name, command=command, target=target, action_id=action_id)


async def test_the_agents_collector_reports_what_the_simulated_node_is() -> None:
    node = _node()
    agent = SimAgent(node, cluster=node.inv.cluster, profile=AgentProfile(), work_dir=None)
    node.fill_disk(40.0)
    node.services["kubelet"] = "failed"
    node.readonly = True
    agent.kmsg.log("EXT4-fs error (device nvme0n1p1): remounting filesystem read-only", now=time.time())
    probe = await agent.collect(now=time.time(), noise=0.0)
    assert agent.collector.host.problems == []
    assert probe.source == "agent" and probe.node == node.name and probe.boot_id == node.boot_id
    # only the node's disk: the container and pod-volume mounts of the mount table are filtered out
    assert [(fs.mount, fs.used_pct, fs.readonly) for fs in probe.filesystems] == [("/", 95.0, True)]
    assert {s.name: s.state for s in probe.services}["kubelet"] == "failed"
    assert probe.kernel_log == ("EXT4-fs error (device nvme0n1p1): remounting filesystem read-only",)
    assert probe.kernel_release == node.inv.kernel and probe.cpu_count == node.cpu_count
    second = await agent.collect(now=time.time(), noise=0.0)
    assert second.kernel_log == ()  # each kernel line once
    assert second.seq == probe.seq + 1


async def test_commands_run_through_the_agents_allow_lists(tmp_path: Path) -> None:
    node = _node()
    agent = SimAgent(node, cluster=node.inv.cluster, profile=AgentProfile(), work_dir=tmp_path)
    node.fill_disk(40.0)
    refused = await agent.execute(_command(node, "clean_disk", "/", "a1"))
    assert not refused.ok and "never allowed" in refused.detail
    assert node.disk_used == 95.0

    pruned = await agent.execute(_command(node, "clean_disk", "container-images", "a2"))
    assert pruned.ok, pruned.detail
    assert pruned.freed_bytes and pruned.freed_bytes > 0
    logs = await agent.execute(_command(node, "clean_disk", "/var/log/pods", "a3"))
    assert logs.ok and "deleted 1 files" in logs.detail
    assert node.disk_used == 55.0

    sshd = await agent.execute(_command(node, "restart_service", "sshd", "a4"))
    assert not sshd.ok and sshd.detail.startswith("refused")
    node.services["ops-agent"] = "failed"
    node.fd_allocated = int(node.fd_max * 0.97)
    restarted = await agent.execute(_command(node, "restart_service", "ops-agent", "a5"))
    assert restarted.ok
    assert node.services["ops-agent"] == "active" and node.fd_allocated < node.fd_max * 0.5
    again = await agent.execute(_command(node, "restart_service", "ops-agent", "a5"))
    assert again == restarted and node.restarts["ops-agent"] == 1  # idempotent per action id


async def test_a_descriptor_leak_names_its_process_and_the_agent_restarts_that_unit(tmp_path: Path) -> None:
    node = _node()
    agent = SimAgent(node, cluster=node.inv.cluster, profile=AgentProfile(), work_dir=tmp_path)
    healthy = await agent.collect(now=time.time(), noise=0.0)
    assert healthy.fd_holders == ()  # looked up only when file handles run high
    node.fd_allocated = int(node.fd_max * 0.97)
    probe = await agent.collect(now=time.time(), noise=0.0)
    assert agent.collector.host.problems == []
    top = probe.fd_holders[0]
    assert (top.name, top.unit) == ("ops-agent", "ops-agent.service") and top.fds > node.fd_max * 0.9
    result = await agent.execute(_command(node, "restart_service", "fd-holder", "fd1"))
    assert result.ok, result.detail
    assert "(ops-agent)" in result.detail
    assert node.restarts == {"ops-agent": 1} and node.fd_allocated < node.fd_max * 0.5


async def test_the_next_boots_agent_answers_a_resent_command_from_the_stored_result(tmp_path: Path) -> None:
    node = _node()
    node.services["kubelet"] = "failed"
    first = SimAgent(node, cluster=node.inv.cluster, profile=AgentProfile(), work_dir=tmp_path)
    done = await first.execute(_command(node, "restart_service", "kubelet", "k1"))
    assert done.ok and node.restarts["kubelet"] == 1
    node.boot(time.time())  # the node rebooted: a new agent process, the same state directory on its disk
    second = SimAgent(node, cluster=node.inv.cluster, profile=AgentProfile(), work_dir=tmp_path)
    again = await second.execute(_command(node, "restart_service", "kubelet", "k1"))
    assert again == done and node.restarts["kubelet"] == 1 and second.executor().replayed == 1


async def test_a_command_anywhere_makes_the_nodes_next_probe_full(tmp_path: Path) -> None:
    """With probe shards, the main process runs a node's commands and a shard collects its probes: the
    node's command count travels with its state, and the collecting agent's next probe is full (the
    remediator verifies on a full probe newer than its action)."""
    node = _node()
    profile = AgentProfile(full_every=1000)
    assert AgentProfile().at_interval(5.0).full_every == 6 and profile.at_interval(5.0) is profile
    main = SimAgent(node, cluster=node.inv.cluster, profile=profile, work_dir=tmp_path)
    shard_node = SimNode(inv=node.inv, index=node.index, booted_at=node.booted_at, boot_id=node.boot_id)
    shard = SimAgent(shard_node, cluster=node.inv.cluster, profile=profile, work_dir=None)
    assert (await shard.collect(now=time.time(), noise=0.0)).full  # the agent's first probe
    assert not (await shard.collect(now=time.time(), noise=0.0)).full
    node.services["kubelet"] = "failed"
    assert (await main.execute(_command(node, "restart_service", "kubelet", "k9"))).ok
    assert {"commands_done", "services"} <= set(SYNCED)  # what the main process sends a shard
    shard_node.commands_done, shard_node.services = node.commands_done, dict(node.services)
    after = await shard.collect(now=time.time(), noise=0.0)
    assert after.full and shard.collector.full_reason == "node command"
    assert {s.name: s.state for s in after.services}["kubelet"] == "active"
    assert not (await shard.collect(now=time.time(), noise=0.0)).full


async def test_a_reboot_starts_a_new_agent_process() -> None:
    """As on a real node, the agent of a new boot is a new process: its kmsg ring and reader start with the
    boot, and its first probe is full. Before, the simulator compared the agent's fresh reading of the boot
    id (always the current one) and kept the old agent forever."""
    from nodeheal.runtime.settings import NatsSettings
    from nodeheal.sim.engine import FleetSimulator

    sim = FleetSimulator(spec=FleetSpec(nodes=3), settings=NatsSettings(), agent_profile=AgentProfile(full_every=6))
    node = next(iter(sim.nodes.values()))
    first = sim.agent(node)
    assert sim.agent(node) is first  # same boot, same process
    for _ in range(2):
        await first.collect(now=time.time(), noise=0.0)
    node.power_off()
    node.boot(time.time())
    second = sim.agent(node)
    assert second is not first and second.boot_id == node.boot_id
    probe = await second.collect(now=time.time(), noise=0.0)
    assert probe.boot_id == node.boot_id and probe.full  # the new process's first probe
