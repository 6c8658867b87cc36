"""`nodeheal bench agent`: what one probe of the real node agent costs inside the simulator.

The simulator runs the agent's own `ProbeCollector` for every node and probe, over `SimHostFiles` (no
file IO). This measures it on its own: probes collected and encoded (`NodeProbe.to_json`; probes
carry no message id header) per second of one process, CPU microseconds per probe, and what that means for a fleet at
a given interval (the CPU the simulator needs just for the agents' code).

Three figures, each on its own agents after a warm-up (a node's first probe is always full): every probe
full (`full_every=1`, what every probe cost before heartbeats), heartbeats only, and the blend the agents
really send (a full probe every `full_every` probes, staggered by node; default: the agent's default for
the interval, `nodeheal.agent.probe.full_every_for`). The fleet figure is the blend's."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from nodeheal.agent.probe import full_every_for
from nodeheal.sim.fleet import FleetSpec, SimNode, build_inventory
from nodeheal.sim.nodehost import AgentProfile, SimAgent

HEARTBEATS_ONLY = 1_000_000_000
"""`full_every` of the heartbeat-only variant: after its first probe an agent never sends a full one."""


async def _collect(agents: list[SimAgent], probes: int) -> tuple[float, float, int]:
    wall0, cpu0 = time.perf_counter(), time.process_time()
    full = 0
    for i in range(probes):
        agent = agents[i % len(agents)]
        probe = await agent.collect(now=time.time(), noise=0.01)
        probe.to_json()
        full += probe.full
    return time.perf_counter() - wall0, time.process_time() - cpu0, full


def _variant(sim_nodes: list[SimNode], cluster: str, *, full_every: int, probes: int) -> dict[str, Any]:
    profile = AgentProfile(full_every=full_every)
    agents = [SimAgent(n, cluster=cluster, profile=profile, work_dir=None) for n in sim_nodes]
    asyncio.run(_collect(agents, max(len(agents), min(probes, 1000))))  # warm up: every agent's first probe
    wall, cpu, full = asyncio.run(_collect(agents, probes))
    return {
        "full_every": full_every if full_every < HEARTBEATS_ONLY else None,
        "full_share": round(full / probes, 4),
        "wall_s": round(wall, 3),
        "cpu_s": round(cpu, 3),
        "cpu_us_per_probe": round(1e6 * cpu / probes, 1),
    }


def run_bench(
    *,
    nodes: int = 1000,
    probes: int = 20_000,
    fleet: int = 50_000,
    interval_s: float = 5.0,
    full_every: int | None = None,
) -> dict[str, Any]:
    spec = FleetSpec(nodes=nodes)
    now = time.time()
    sim_nodes = [SimNode(inv=inv, index=i, booted_at=now - 3600) for i, inv in enumerate(build_inventory(spec))]
    k = full_every_for(interval_s, full_every)
    every_full = _variant(sim_nodes, spec.cluster, full_every=1, probes=probes)
    heartbeat = _variant(sim_nodes, spec.cluster, full_every=HEARTBEATS_ONLY, probes=probes)
    blended = _variant(sim_nodes, spec.cluster, full_every=k, probes=probes)
    us = blended["cpu_us_per_probe"]
    cores = fleet / interval_s * us / 1e6
    return {
        "what": (
            "real nodeheal.agent ProbeCollector over the simulator's in-memory host, plus to_json"
            " (probes carry no Nats-Msg-Id): every probe full, heartbeats only, and the blend the agents send"
        ),
        "probes": probes,
        "nodes": nodes,
        "full_every": k,
        "every_probe_full": every_full,
        "heartbeats_only": heartbeat,
        "blended": blended,
        "cpu_us_per_probe": us,
        "probes_per_s_one_process": round(1e6 / us, 1) if us else None,
        "fleet": {
            "nodes": fleet,
            "interval_s": interval_s,
            "cpu_cores_for_agent_code": round(cores, 2),
            "cpu_cores_if_every_probe_full": round(fleet / interval_s * every_full["cpu_us_per_probe"] / 1e6, 2),
        },
    }
