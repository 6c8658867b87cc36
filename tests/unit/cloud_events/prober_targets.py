"""Real local TCP listeners standing in for a node: an SSH port with a banner, a kubelet port that
accepts, and a tiny HTTP healthz server; a stock kubelet (TLS on its port, 401 to anonymous requests,
plain healthz on 127.0.0.1 only) and a hung node's port (TCP accepted, nothing answers)."""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import ssl
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

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


def self_signed(directory: Path, host: str) -> tuple[Path, Path]:
    """A throwaway self-signed certificate for `host` (like a kubelet's default serving certificate)."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"{host}@kubelet")])
    now = datetime.now(tz=UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=1))
        .not_valid_after(now + timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address(host))]), critical=False)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "kubelet.crt", directory / "kubelet.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return cert_path, key_path


@dataclass
class StockKubelet:
    """A stock node's kubelet as seen from outside: HTTPS on `port` (all addresses of the node, here
    `address`), answering 401 to an anonymous `GET /healthz`; its plain healthz port bound to
    127.0.0.1 only."""

    address: str
    port: int
    localhost_healthz_port: int


@contextlib.asynccontextmanager
async def stock_kubelet(directory: Path, *, address: str = "127.0.0.2") -> AsyncIterator[StockKubelet]:
    cert, key = self_signed(directory, address)
    tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    tls.load_cert_chain(cert, key)
    kubelet = StockKubelet(address=address, port=0, localhost_healthz_port=0)

    async def https(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(Exception):
            await reader.readuntil(b"\r\n\r\n")
            body = b"Unauthorized"
            writer.write(
                b"HTTP/1.1 401 Unauthorized\r\nContent-Length: %d\r\nConnection: close\r\n\r\n" % len(body) + body
            )
            await writer.drain()
            writer.close()

    async def plain_healthz(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(Exception):
            await reader.readuntil(b"\r\n\r\n")
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok")
            await writer.drain()
            writer.close()

    port = free_port()
    answering = await asyncio.start_server(https, address, port, ssl=tls)
    localhost = await asyncio.start_server(plain_healthz, "127.0.0.1", 0)
    kubelet.port = port
    kubelet.localhost_healthz_port = localhost.sockets[0].getsockname()[1]
    servers = [answering, localhost]
    try:
        yield kubelet
    finally:
        for server in servers:
            server.close()
        for server in servers:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(server.wait_closed(), timeout=2)


@contextlib.asynccontextmanager
async def hung_listener(address: str, port: int) -> AsyncIterator[None]:
    """What a hung node's kubelet port looks like: the kernel completes the TCP handshake, nothing more."""
    held: list[asyncio.StreamWriter] = []

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)

    server = await asyncio.start_server(silent, address, port)
    try:
        yield
    finally:
        server.close()
        for writer in held:
            writer.close()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(server.wait_closed(), timeout=2)
