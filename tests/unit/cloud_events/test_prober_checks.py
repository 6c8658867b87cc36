"""Prober checks against real local TCP listeners."""

from __future__ import annotations

from pathlib import Path

import pytest

from nodeheal.cloud_events.prober.checks import CheckPlan, check_healthz, check_node, check_tcp
from nodeheal.cloud_events.prober.settings import ProberSettings
from nodeheal.cloud_events.prober.sharding import ordinal_from_instance, owns, shard_of
from nodeheal.sim.embedded import free_port
from tests.unit.cloud_events.prober_targets import hung_listener, local_node, stock_kubelet


async def test_open_ssh_port_with_banner() -> None:
    async with local_node() as node:
        tcp, banner = await check_tcp("127.0.0.1", node.ssh_port, timeout_s=2, read_ssh_banner=True)
    assert tcp.check == "tcp" and tcp.ok and tcp.latency_ms is not None
    assert banner.check == "ssh_banner" and banner.ok


async def test_port_without_banner_is_not_ssh() -> None:
    async with local_node(banner=b"HTTP/1.0 400 Bad Request\r\n") as node:
        tcp, banner = await check_tcp("127.0.0.1", node.ssh_port, timeout_s=2, read_ssh_banner=True)
    assert tcp.ok
    assert not banner.ok and banner.error is not None and "no SSH banner" in banner.error


async def test_closed_port_is_refused() -> None:
    async with local_node() as node:
        [tcp] = await check_tcp("127.0.0.1", node.closed_port, timeout_s=2)
    assert not tcp.ok and tcp.error == "connection refused"


async def test_healthz_ok_and_unhealthy() -> None:
    async with local_node() as node:
        ok = await check_healthz(f"http://127.0.0.1:{node.healthz_port}/healthz", timeout_s=2)
        node.healthz_status = "500 Internal Server Error"
        bad = await check_healthz(f"http://127.0.0.1:{node.healthz_port}/healthz", timeout_s=2)
    assert ok.ok and ok.check == "kubelet_healthz"
    assert not bad.ok and bad.error == "HTTP 500 Internal"


async def test_check_node_runs_every_check() -> None:
    async with local_node() as node:
        plan = CheckPlan(
            tcp_ports=(node.ssh_port, node.kubelet_port, node.closed_port),
            ssh_port=node.ssh_port,
            healthz_url=f"http://{{address}}:{node.healthz_port}/healthz",
            timeout_s=2,
        )
        results = await check_node("127.0.0.1", plan)
    summary = [(r.check, r.target.rsplit(":", 1)[-1], r.ok) for r in results]
    assert summary == [
        ("tcp", str(node.ssh_port), True),
        ("ssh_banner", str(node.ssh_port), True),
        ("tcp", str(node.kubelet_port), True),
        ("tcp", str(node.closed_port), False),
        ("kubelet_healthz", f"{node.healthz_port}/healthz", True),
    ]


def test_sharding_splits_every_node_exactly_once() -> None:
    nodes = [f"node-{i}" for i in range(1000)]
    owners = [[i for i in range(4) if owns(n, shard_index=i, shard_count=4)] for n in nodes]
    assert all(len(o) == 1 for o in owners)
    counts = [sum(1 for o in owners if o == [i]) for i in range(4)]
    assert min(counts) > 150  # roughly even
    assert shard_of("node-1", 4) == shard_of("node-1", 4)
    assert ordinal_from_instance("nodeheal-prober-3") == 3
    assert ordinal_from_instance("prober") is None


def test_shard_index_from_pod_name_and_bad_index() -> None:
    assert ProberSettings(instance="nodeheal-prober-2", shard_count=3).resolved_shard_index() == 2
    with pytest.raises(ValueError, match="NODEHEAL_PROBER_SHARD_COUNT"):
        ProberSettings(shard_index=5, shard_count=3).resolved_shard_index()


async def test_stock_kubelet_answers_on_its_tls_port_while_its_plain_healthz_is_local_only(tmp_path: Path) -> None:
    async with stock_kubelet(tmp_path, address="127.0.0.2") as kubelet:
        new = await check_node(
            "127.0.0.2",
            CheckPlan(tcp_ports=(kubelet.port,), healthz_url=f"https://{{address}}:{kubelet.port}/healthz"),
        )
        old = await check_node(
            "127.0.0.2",
            CheckPlan(
                tcp_ports=(kubelet.port,),
                healthz_url=f"http://{{address}}:{kubelet.localhost_healthz_port}/healthz",
                timeout_s=1,
            ),
        )
    assert [(r.check, r.ok) for r in new] == [("tcp", True), ("kubelet_healthz", True)]  # 401 = the kubelet answers
    # the old default (plain healthz on the node's address) fails on every stock node
    assert [(r.check, r.ok, r.error) for r in old][-1] == ("kubelet_healthz", False, "connection refused")


async def test_a_port_that_accepts_but_never_answers_tls_is_not_a_kubelet() -> None:
    port = free_port()
    async with hung_listener("127.0.0.3", port):
        results = await check_node(
            "127.0.0.3", CheckPlan(tcp_ports=(port,), healthz_url=f"https://{{address}}:{port}/healthz", timeout_s=0.5)
        )
    assert [(r.check, r.ok, r.error) for r in results] == [
        ("tcp", True, None),
        ("kubelet_healthz", False, "timeout after 0.5s"),
    ]


async def test_401_counts_only_on_https() -> None:
    async with local_node() as node:
        bad = await check_healthz(f"http://127.0.0.1:{node.healthz_port}/healthz", timeout_s=2)
        node.healthz_status = "401 Unauthorized"
        plain_401 = await check_healthz(f"http://127.0.0.1:{node.healthz_port}/healthz", timeout_s=2)
    assert bad.ok
    assert not plain_401.ok  # only on the authenticated (https) port does 401 mean "answering"
