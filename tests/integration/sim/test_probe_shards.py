"""`nodeheal demo --sim-processes 2`: the fleet's probes come from two shard processes on a real
nats-server, built by the real agent collector, and follow the state the main process owns (a failed
unit, a kernel line reported once)."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import orjson
import pytest
from nats.aio.client import Client

from nodeheal.runtime.connect import connect
from nodeheal.runtime.settings import NatsSettings
from nodeheal.sim.engine import FleetSimulator, SimTimings
from nodeheal.sim.fleet import FleetSpec
from nodeheal.sim.nodehost import AgentProfile
from nodeheal.sim.shard import ProbeShards, ShardPlan, node_state

pytestmark = [pytest.mark.nats, pytest.mark.slow]


async def test_two_shards_probe_the_fleet_and_follow_the_main_state(nats_settings: NatsSettings) -> None:
    settings = nats_settings.model_copy(update={"prefix": f"shardtest{int(time.time() * 1000) % 100000}"})
    spec = FleetSpec(nodes=12, seed=3)
    # a full probe every 4 probes (2 s), heartbeats between: a failed kubelet shows within 2 s
    sim = FleetSimulator(
        spec=spec, settings=settings, timings=SimTimings(probe_interval_s=0.5), agent_profile=AgentProfile(full_every=4)
    )
    names = list(sim.nodes)
    chunks = [names[:6], names[6:]]
    plans = [
        ShardPlan(
            index=k,
            spec=spec,
            nodes={n: node_state(sim.nodes[n]) for n in chunk},
            interval_s=0.5,
            settings=settings.model_dump(),
            prober=settings.model_dump(),
            agents=[(settings.model_dump(), chunk)],
            full_every=sim.agent_profile.full_every,
        )
        for k, chunk in enumerate(chunks)
    ]
    seen: list[dict[str, Any]] = []
    reader: Client = await connect(settings, name="pytest-shards")

    async def keep(msg: Any) -> None:
        seen.append(orjson.loads(msg.data))

    async def keep_batch(msg: Any) -> None:  # the active prober's results come in ProberResults batches
        body = orjson.loads(msg.data)
        seen.extend({"node": entry["node"], "source": body["source"]} for entry in body["results"])

    await reader.subscribe(f"{settings.prefix}.probe.>", cb=keep)  # the agents'
    await reader.subscribe(f"{settings.prefix}.prober.>", cb=keep_batch)  # the active prober's own subject kind
    await reader.flush()
    main_nc = await connect(settings, name="pytest-shards-main")
    shards = ProbeShards(plans)
    try:
        await asyncio.to_thread(shards.wait_ready, timeout_s=120)
        await sim.start(prober_nc=main_nc, agent_nc=dict.fromkeys(names, main_nc), shards=shards)
        await _until(lambda: {p["node"] for p in seen if p["source"] == "agent"} == set(names))
        # the prober's results of the same nodes (sent in a batch at most a tick later)
        await _until(lambda: {p["node"] for p in seen if p["source"] == "prober"} == set(names))

        node = sim.nodes[names[7]]
        sim.touched.add(node)
        node.services["kubelet"] = "failed"
        node.pending_kernel.append("kubelet[1234]: fatal: simulated line")
        mark = len(seen)

        def kubelet_failed() -> bool:
            return any(
                p["node"] == node.name
                and p["source"] == "agent"
                and {s["name"]: s["state"] for s in p["services"]}.get("kubelet") == "failed"
                for p in seen[mark:]
            )

        await _until(kubelet_failed)
        await asyncio.sleep(1.5)  # a few more probes of that node
        # every shard tells the main process how it is doing while it runs (the live view, a failed
        # run's partial report): probes published and how far behind its interval it is
        shards.poll_progress()
        assert set(shards.progress) == {0, 1}
        assert all(p["probes_published"] > 0 and p["lag_s_last"] < 5.0 for p in shards.progress.values())
        assert shards.totals()["probes_published"] == sum(p["probes_published"] for p in shards.progress.values())
        lines = [line for p in seen if p["node"] == node.name for line in p.get("kernel_log", [])]
        assert lines == ["kubelet[1234]: fatal: simulated line"]

        # a machine that joins after the shards started (a replacement from RunInstances) is probed by the
        # main process's world loop with the real agent code, and follows its state like any other
        inv = sim.inventory[0].model_copy(
            update={"node": f"{spec.region}.10.200.0.1", "instance_id": "i-joined", "addresses": ("10.200.0.1",)}
        )
        joined = await sim.add_node(inv, now=time.time(), conn=main_nc)
        joined.services["kubelet"] = "failed"
        sim.touched.add(joined)  # a touched joined node is no shard's: it must not reach their sync

        def joined_probed() -> bool:
            return any(
                p["node"] == inv.node
                and p["source"] == "agent"
                and {s["name"]: s["state"] for s in p["services"]}.get("kubelet") == "failed"
                for p in seen
            )

        await _until(joined_probed)
        sim.remove_node(inv.node, time.time())  # released: no longer probed
        await asyncio.sleep(0.6)
        gone = len([p for p in seen if p["node"] == inv.node])
        await asyncio.sleep(1.2)
        assert len([p for p in seen if p["node"] == inv.node]) == gone
    finally:
        # as the demo does: the shards are stopped while the world loop still runs (and reads their pipes)
        counters = await asyncio.to_thread(shards.stop)
        await sim.stop()
        await main_nc.close()
        await reader.close()
    assert len(counters) == 2
    assert all(c["collected"] > 0 and c["publish_errors"] == 0 for c in counters)
    # each shard measured the gaps between its nodes' probes (the report's effective interval)
    assert all(c["intervals"] > 0 and c["interval_sum_s"] / c["intervals"] < 5.0 for c in counters)


async def _until(check: Any, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.1)
