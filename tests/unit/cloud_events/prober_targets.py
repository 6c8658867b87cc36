"""Real local TCP listeners standing in for a node: an SSH port with a banner, a kubelet port that
accepts, and a tiny HTTP healthz server."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass

from nodeheal.sim.embedded import free_port


@dataclass
class LocalNode:
    ssh_port: int
    kubelet_port: int
    healthz_port: int
    closed_port: int
    healthz_status: str = "200 OK"


@contextlib.asynccontextmanager
async def local_node(*, banner: bytes = b"SSH-2.0-OpenSSH_8.0\r\n") -> AsyncIterator[LocalNode]:
    node = LocalNode(ssh_port=0, kubelet_port=0, healthz_port=0, closed_port=free_port())

    async def ssh(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(banner)
        with contextlib.suppress(Exception):
            await writer.drain()
            writer.close()

    async def accept(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.close()

    async def healthz(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(Exception):
            await reader.readuntil(b"\r\n\r\n")
            body = b"ok" if node.healthz_status.startswith("200") else b"unhealthy"
            writer.write(
                f"HTTP/1.1 {node.healthz_status}\r\nContent-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode()
                + body
            )
            await writer.drain()
            writer.close()

    servers = [
        await asyncio.start_server(ssh, "127.0.0.1", 0),
        await asyncio.start_server(accept, "127.0.0.1", 0),
        await asyncio.start_server(healthz, "127.0.0.1", 0),
    ]
    node.ssh_port, node.kubelet_port, node.healthz_port = (s.sockets[0].getsockname()[1] for s in servers)
    try:
        yield node
    finally:
        for server in servers:
            server.close()
            await server.wait_closed()
