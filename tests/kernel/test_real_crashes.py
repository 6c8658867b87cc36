"""A real kernel crashes for real; the real agent code finds what it left behind and the real
diagnoser buckets it.

The guest (a Debian cloud kernel under qemu, see guest.py) crashes four times — NULL-pointer oops
(with kdump), soft lockup, hung task, and the NULL oops again on another boot — and hands back the
pstore records and the vmcore-dmesg.txt each next boot found. Each guest becomes a node root: before
the crash the node agent (`NodeAgent`, real code) probes under the crashed boot's id; the crash gives
it no chance to stop; after the reboot a new agent process probes under the new boot id with the
guest's files under /sys/fs/pstore and /var/crash. The crash reports go to a real nats-server, where
the diagnoser runtime consumes them and keeps one fleet record per crash bucket.
"""

from __future__ import annotations

import asyncio
import json
import shutil
from pathlib import Path
from typing import Any

import pytest
from nats.aio.client import Client
from nats.js.errors import KeyNotFoundError

from nodeheal.agent.app import NodeAgent
from nodeheal.agent.settings import AgentSettings, CleanSettings, CrashSettings
from nodeheal.diagnoser.handlers import DiagnoserRuntime
from nodeheal.diagnoser.settings import DiagnoserSettings
from nodeheal.runtime.settings import NatsSettings
from nodeheal.schemas.crash import CrashReport
from tests.kernel import guest
from tests.unit.cloud_events.agent_fakenode import FakeNode, make_fake_node

pytestmark = [pytest.mark.nats, pytest.mark.slow, pytest.mark.timeout(1200)]  # the guests boot under TCG

CLUSTER = "kernel-lab"


def _agent(nats: NatsSettings, node: FakeNode, name: str, state: Path) -> NodeAgent:
    settings = AgentSettings(
        nats=nats,
        cluster=CLUSTER,
        node_name=name,
        host_root=node.root,
        services=[],
        systemctl_command=[node.systemctl],
        state_dir=state,
        interval_s=1.0,
        clean=CleanSettings(allowed_dirs=["/var/log/pods"], image_prune_command=[]),
        crash=CrashSettings(journal=False),  # the guest keeps no journal; this host's journal is not the node's
    )
    return NodeAgent(settings)


async def _crash(agent: NodeAgent) -> None:
    """The kernel died under the agent: no orderly stop, the connection just goes away."""
    assert agent.nc is not None
    await agent.nc.close()


def _boot(node: FakeNode, capture: guest.Capture | None, boot_id: str) -> None:
    """What the node's / looks like at the start of a boot: its boot id and the files the guest found."""
    node.write("/proc/sys/kernel/random/boot_id", boot_id + "\n")
    shutil.rmtree(node.root / "sys/fs/pstore", ignore_errors=True)
    (node.root / "sys/fs/pstore").mkdir(parents=True)
    if capture is None:
        return
    for name, data in capture.files.items():
        if name.startswith("pstore/"):
            path = node.root / "sys/fs" / name
        else:  # vmcore-dmesg.txt in the kdumpctl layout (Alibaba Cloud Linux, CentOS)
            path = node.root / "var/crash/127.0.0.1-2026-12-01-17:00:00" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)


async def _records(nc: Client, settings: NatsSettings, *, boots: int) -> dict[str, dict[str, Any]]:
    kv = await nc.jetstream().key_value(f"{settings.bucket_prefix}-crash-buckets")
    for _ in range(300):
        try:
            keys = await kv.keys()
        except Exception:
            keys = []
        records = {}
        for key in keys:
            try:
                entry = await kv.get(key)
            except KeyNotFoundError:
                continue
            records[key.removeprefix("bucket.")] = json.loads(entry.value or b"{}")
        if sum(r.get("count", 0) for r in records.values()) >= boots:
            return records
        await asyncio.sleep(0.1)
    msg = f"the diagnoser counted fewer than {boots} crashes"
    raise AssertionError(msg)


async def test_real_kernel_crashes_are_captured_once_and_bucketed_by_class(
    real_crashes: list[guest.PlanResult], topology_ready: NatsSettings, nc: Client, tmp_path: Path
) -> None:
    captures = [(f"guest-{i}", c) for i, result in enumerate(real_crashes) for c in result.captures]
    assert [c.crash for _, c in captures] == ["null", "softlockup", "hung", "null"]
    diagnoser = DiagnoserRuntime(
        settings=DiagnoserSettings(nats=topology_ready, cluster=CLUSTER, fetch_timeout_s=0.3), nc=nc
    )
    await diagnoser.start()
    try:
        for name, result in zip(("guest-0", "guest-1"), real_crashes, strict=True):
            node = make_fake_node(tmp_path / name)
            state = tmp_path / name / "agent-state"
            first = result.captures[0]
            _boot(node, None, first.crashed_boot_id)
            agent = _agent(topology_ready, node, name, state)
            await agent.start()
            await agent.probe_once()  # the agent runs on the boot that is going to crash
            for capture in result.captures:
                await _crash(agent)
                _boot(node, capture, capture.boot_id)
                agent = _agent(topology_ready, node, name, state)  # a new process on the new boot
                await agent.start()
                await agent.probe_once()
                await agent.probe_once()  # later probes of the same boot send nothing more
            await agent.stop()
            restarted = _agent(topology_ready, node, name, state)  # an agent restart within the boot
            await restarted.start()
            await restarted.probe_once()
            await restarted.stop()

        js = nc.jetstream()
        stream = topology_ready.topology().stream(f"{topology_ready.stream_prefix}CRASHES").name
        info = await js.stream_info(stream)
        assert info.state.messages == 4  # one report per crashed boot, however often the agents probed
        reports = []
        for seq in range(info.state.first_seq, info.state.last_seq + 1):
            msg = await js.get_msg(stream, seq)
            reports.append(CrashReport.model_validate_json(msg.data or b""))
        by_boot = {r.boot_id: r for r in reports}
        for name, capture in captures:
            report = by_boot[capture.boot_id]
            assert (report.node, report.previous_boot_id, report.unexpected) == (name, capture.crashed_boot_id, True)
            assert {e.path.rsplit("/", 1)[-1] for e in report.evidence} == {n.rsplit("/", 1)[-1] for n in capture.files}
        kdump = next(e for e in by_boot[captures[0][1].boot_id].evidence if e.source == "kdump")
        assert kdump.path.endswith("/vmcore-dmesg.txt") and kdump.backend == "kdumpctl"

        records = await _records(nc, topology_ready, boots=4)
        by_crash: dict[str, set[str]] = {}
        for _, capture in captures:
            bucket = next(
                k
                for k, r in records.items()
                if f"{CLUSTER}/{_node_of(captures, capture)}/{capture.boot_id}" in r["boots"]
            )
            by_crash.setdefault(capture.crash, set()).add(bucket)
        assert all(len(buckets) == 1 for buckets in by_crash.values()), by_crash  # same crash, same bucket
        null, soft, hung = (next(iter(by_crash[c])) for c in ("null", "softlockup", "hung"))
        assert len({null, soft, hung}) == 3  # different crashes, different buckets
        assert (records[null]["cls"], records[null]["count"], records[null]["rip_func"]) == (
            "kernel_oops_null_deref",
            2,
            "nodeheal_null_deref",
        )
        assert records[null]["node_count"] == 2
        assert (records[soft]["cls"], records[soft]["count"]) == ("soft_lockup", 1)
        assert (records[hung]["cls"], records[hung]["count"]) == ("hung_task", 1)
        assert all(r["kernels"] == [_release(real_crashes)] for r in records.values())
    finally:
        await diagnoser.stop()


def _node_of(captures: list[tuple[str, guest.Capture]], capture: guest.Capture) -> str:
    return next(name for name, c in captures if c is capture)


def _release(results: list[guest.PlanResult]) -> str:
    text = next(iter(results[0].captures[0].files.values())).decode(errors="replace")
    line = next(line for line in text.splitlines() if "Linux version " in line)
    return line.split("Linux version ", 1)[1].split()[0]
