"""Measure what one prober round costs: `python -m nodeheal.sim.bench.prober --nodes 5000`.

Starts an embedded nats-server, provisions the layout under a unique prefix, writes N inventory
records that all point at 127.0.0.1, serves an SSH banner port, a kubelet port and a healthz port
from a *separate process* (so their CPU is not counted against the prober), and runs rounds of the
real `Prober` (checks + JetStream publishes). Prints one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import subprocess
import sys
import time
import uuid

from nodeheal.cloud_events.prober.app import Prober
from nodeheal.cloud_events.prober.settings import ProberSettings
from nodeheal.runtime.connect import connect
from nodeheal.runtime.provision import apply_topology
from nodeheal.runtime.settings import NatsSettings
from nodeheal.schemas.inventory import NodeInventory, inventory_key
from nodeheal.sim.embedded import EmbeddedNats, free_port


async def _serve(ports: list[int]) -> None:
    async def ssh(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"SSH-2.0-OpenSSH_8.0\r\n")
        writer.close()

    async def accept(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.close()

    async def healthz(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await reader.readuntil(b"\r\n\r\n")
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok")
            await writer.drain()
        except Exception:  # noqa: S110 - a benchmark target; the prober reports what it saw
            pass
        writer.close()

    servers = [
        await asyncio.start_server(handler, "127.0.0.1", port, backlog=4096)
        for handler, port in zip((ssh, accept, healthz), ports, strict=True)
    ]
    print("ready", flush=True)
    await asyncio.gather(*(s.serve_forever() for s in servers))


async def _bench(*, nodes: int, rounds: int, concurrency: int) -> dict[str, object]:
    ports = [free_port(), free_port(), free_port()]
    targets = subprocess.Popen(  # noqa: ASYNC220 - started once, before any measurement
        [sys.executable, "-m", "nodeheal.sim.bench.prober", "--serve", *map(str, ports)],
        stdout=subprocess.PIPE,
    )
    assert targets.stdout is not None
    targets.stdout.readline()
    tag = uuid.uuid4().hex[:8]
    with EmbeddedNats() as server:
        nats_settings = NatsSettings(
            url=server.url, prefix=f"b{tag}", stream_prefix=f"B{tag}_", bucket_prefix=f"b{tag}"
        )
        nc = await connect(nats_settings, name="bench")
        js = nc.jetstream()
        await apply_topology(js, nats_settings.topology())
        kv = await js.key_value(f"{nats_settings.bucket_prefix}-inventory")
        for i in range(nodes):
            inv = NodeInventory(cluster="bench", node=f"node-{i:06d}", addresses=("127.0.0.1",))
            await kv.put(inventory_key("bench", inv.node), inv.to_json())
        settings = ProberSettings(
            nats=nats_settings,
            cluster="bench",
            tcp_ports=[ports[0], ports[1]],
            ssh_port=ports[0],
            healthz_url=f"http://{{address}}:{ports[2]}/healthz",
            timeout_s=5,
            concurrency=concurrency,
        )
        prober = Prober(settings)
        await prober.start()
        assert prober.inventory is not None
        await asyncio.wait_for(prober.inventory.initial.wait(), timeout=120)
        while len(prober.inventory.nodes) < nodes:
            await prober.inventory.changed()
        results = []
        for _ in range(rounds):
            cpu0 = resource.getrusage(resource.RUSAGE_SELF)
            result = await prober.run_round()
            cpu1 = resource.getrusage(resource.RUSAGE_SELF)
            cpu = (cpu1.ru_utime - cpu0.ru_utime) + (cpu1.ru_stime - cpu0.ru_stime)
            results.append(
                {
                    "nodes": result.nodes,
                    "unreachable": result.unreachable,
                    "published": result.published,
                    "failed_publishes": result.failed_publishes,
                    "wall_s": round(result.seconds, 3),
                    "prober_cpu_s": round(cpu, 3),
                    "cpu_us_per_node": round(cpu / max(result.nodes, 1) * 1e6, 1),
                }
            )
        await prober.stop()
        await nc.close()
    targets.terminate()
    targets.wait()
    checks_per_node = len(settings.tcp_ports) + (1 if settings.healthz_url else 0)
    return {
        "benchmark": "prober_round",
        "nodes": nodes,
        "concurrency": concurrency,
        "connections_per_node": checks_per_node,
        "cpus": os.cpu_count(),
        "rounds": results,
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--nodes", type=int, default=5000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=1000)
    parser.add_argument("--serve", nargs=3, type=int, metavar="PORT", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        asyncio.run(_serve(args.serve))
        return
    report = asyncio.run(_bench(nodes=args.nodes, rounds=args.rounds, concurrency=args.concurrency))
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
