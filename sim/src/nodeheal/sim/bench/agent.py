"""`nodeheal bench agent`: what one probe of the real node agent costs inside the simulator.

The simulator runs the agent's own `ProbeCollector` for every node and probe, over `SimHostFiles` (no
file IO). This measures it on its own: probes collected and encoded (`NodeProbe.to_json`; probes
carry no message id header) per second of one process, CPU microseconds per probe, and what that means for a fleet at
a given interval (the CPU the simulator needs just for the agents' code)."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from nodeheal.sim.fleet import FleetSpec, SimNode, build_inventory
from nodeheal.sim.nodehost import AgentProfile, SimAgent


async def _collect(agents: list[SimAgent], probes: int) -> tuple[float, float]:
    wall0, cpu0 = time.perf_counter(), time.process_time()
    for i in range(probes):
        agent = agents[i % len(agents)]
        probe = await agent.collect(now=time.time(), noise=0.01)
        probe.to_json()
    return time.perf_counter() - wall0, time.process_time() - cpu0


def run_bench(
    *, nodes: int = 1000, probes: int = 20_000, fleet: int = 50_000, interval_s: float = 5.0
) -> dict[str, Any]:
    spec = FleetSpec(nodes=nodes)
    now = time.time()
    sim_nodes = [SimNode(inv=inv, index=i, booted_at=now - 3600) for i, inv in enumerate(build_inventory(spec))]
    agents = [SimAgent(n, cluster=spec.cluster, profile=AgentProfile(), work_dir=None) for n in sim_nodes]
    asyncio.run(_collect(agents, min(probes, 1000)))  # warm up
    wall, cpu = asyncio.run(_collect(agents, probes))
    us = 1e6 * cpu / probes
    needed = fleet / interval_s * us / 1e6
    return {
        "what": (
            "real nodeheal.agent ProbeCollector over the simulator's in-memory host, plus to_json"
            " (probes carry no Nats-Msg-Id)"
        ),
        "probes": probes,
        "nodes": nodes,
        "wall_s": round(wall, 3),
        "cpu_s": round(cpu, 3),
        "probes_per_s_one_process": round(probes / cpu, 1),
        "cpu_us_per_probe": round(us, 1),
        "fleet": {"nodes": fleet, "interval_s": interval_s, "cpu_cores_for_agent_code": round(needed, 2)},
    }
