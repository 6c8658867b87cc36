"""`nodeheal bench agent --shard`: the whole CPU cost of one agent probe in a probe shard.

`bench agent` measures the collector and `to_json` alone. A probe shard (`nodeheal.sim.shard`) does more
per probe: its schedule (round robin in ticks), the node's agent look-up and noise, the real collector,
the encoding, nats-py's publish into the connection's buffer, TLS, and a flush per `PUBLISH_BATCH`. This
runs exactly that code — `FleetSimulator` with `probes_only=True`, as a shard process builds it — in this
process against its own embedded nats-server in the production configuration (per-role users from
`deploy/nats/natsauth.py`, the agents sharing connections of 500 nodes as the demo's do, TLS; `insecure`:
plain TCP, no credentials), PROBES provisioned, and reads this process's CPU time (user + system) over a
measured window after a warm-up (every node's first probe is full); `stored_in_probes` is what PROBES
holds at the end (warm-up included: the probes reached the stream). The active prober is left out (its
probes are another path): the figure is per agent probe.

The offered rate (`nodes / interval_s`) should stay below what one core can do; then `cpu_us_per_probe`
is the cost and `probes_per_cpu_s` the rate one shard process could sustain on a core of its own. A run
that cannot keep the rate says so (`schedule_stretched_s` > 0)."""

from __future__ import annotations

import asyncio
import resource
import tempfile
import time
from pathlib import Path
from typing import Any

from nodeheal.runtime.connect import connect
from nodeheal.runtime.provision import apply_topology
from nodeheal.sim.auth import DemoAuth
from nodeheal.sim.bench.secure import self_signed_tls
from nodeheal.sim.embedded import EmbeddedNats
from nodeheal.sim.engine import FleetSimulator, SimTimings
from nodeheal.sim.fleet import FleetSpec

AGENTS_PER_CONNECTION = 500
"""As the demo shares agent connections above 1,000 nodes."""
NO_PROBER_S = 1e9
"""The prober's round in this bench: after each node's first prober probe, none (agent probes only)."""


def _cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def _measure(tmp: Path, *, nodes: int, interval_s: float, seconds: float, insecure: bool) -> dict[str, Any]:
    auth = DemoAuth(mode="insecure", directory=tmp) if insecure else DemoAuth.per_role(tmp / "auth")
    auth.agents_per_connection = AGENTS_PER_CONNECTION
    if not insecure:
        ca, cert, key = self_signed_tls(tmp)
        auth.base = auth.base.model_copy(update={"tls_ca_file": str(ca)})
        auth.server_tls = (cert, key)
    config = auth.server_config()
    with EmbeddedNats(config_file=str(config) if config else None, log_file=str(tmp / "nats.log")) as server:
        url = server.url
        admin = await connect(auth.settings("admin", url=url), name="bench-shard-admin")
        await apply_topology(admin.jetstream(), auth.base.topology())
        spec = FleetSpec(nodes=nodes)
        sim = FleetSimulator(
            spec=spec,
            settings=auth.base,
            timings=SimTimings(probe_interval_s=interval_s, prober_interval_s=NO_PROBER_S),
            probes_only=True,
        )
        names = list(sim.nodes)
        agent_nc: dict[str, Any] = {}
        conns = []
        for index, start in enumerate(range(0, len(names), AGENTS_PER_CONNECTION)):
            chunk = names[start : start + AGENTS_PER_CONNECTION]
            settings = auth.agent_settings(url=url, cluster=spec.cluster, nodes=chunk, index=index)
            conn = await connect(settings, name=f"bench-shard-agents-{index}")
            conns.append(conn)
            agent_nc.update(dict.fromkeys(chunk, conn))
        prober_nc = await connect(auth.settings("prober", url=url), name="bench-shard-prober")
        await sim.start(prober_nc=prober_nc, agent_nc=agent_nc)
        try:
            await asyncio.sleep(2 * interval_s)  # warm-up: every node's first (full) probe, and a second round
            stats = sim.stats
            probes0, collected0, stretched0 = stats.probes_published, stats.collected, stats.stretched_s
            cpu0, wall0 = _cpu_s(), time.perf_counter()
            await asyncio.sleep(seconds)
            cpu, wall = _cpu_s() - cpu0, time.perf_counter() - wall0
            probes = stats.probes_published - probes0
            agent_probes = stats.collected - collected0
            stretched = stats.stretched_s - stretched0
            await sim.stop()
            for conn in conns:
                await conn.flush()
            stored = (await admin.jetstream().stream_info(f"{auth.base.stream_prefix}PROBES")).state.messages
        finally:
            await sim.stop()
            for conn in (*conns, prober_nc, admin):
                await conn.close()
    return {
        "nodes": nodes,
        "interval_s": interval_s,
        "offered_probes_per_s": round(nodes / interval_s, 1),
        "config": {"tls": not insecure, "creds": not insecure, "agents_per_connection": AGENTS_PER_CONNECTION},
        "seconds": round(wall, 2),
        "agent_probes": agent_probes,
        "prober_probes": probes - agent_probes,
        "cpu_s": round(cpu, 3),
        "cpu_us_per_probe": round(1e6 * cpu / max(1, probes), 1),
        "probes_per_cpu_s": round(probes / cpu) if cpu > 0 else None,
        "schedule_stretched_s": round(stretched, 2),
        "stored_in_probes": stored,
    }


def run_shard_bench(*, nodes: int, interval_s: float, seconds: float, insecure: bool = False) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="nodeheal-bench-shard-") as tmp:
        result = asyncio.run(
            _measure(Path(tmp), nodes=nodes, interval_s=interval_s, seconds=seconds, insecure=insecure)
        )
    result["what"] = (
        "one probe shard's probe loop (FleetSimulator probes_only, the real agent collector, to_json, nats-py core"
        " publish, TLS, a flush per batch) against an embedded nats-server; this process's CPU per agent probe"
    )
    return result
