"""Reachability checks of one node from outside, with asyncio streams (no HTTP library: at 50,000
nodes a round, the cost per check is what matters).

Every check returns a `Reachability` — never raises — with the latency of a successful check and a
short error otherwise ("timeout after 2s", "connection refused", "HTTP 500", "no SSH banner").

What works from outside on a stock node (docs/node-agent.md, "Active prober"): the kubelet's own
port 10250 (bound on all addresses). A TCP connect there proves the kernel answers; the TLS handshake
and an HTTP status line from `GET /healthz` prove the kubelet process answers — 200, or 401 / 403
when the kubelet asks for credentials (the prober presents none: any answer is the kubelet's). The
kubelet's plain healthz port 10248 is bound to 127.0.0.1 by default, and ICMP needs a raw socket
(CAP_NET_RAW), so neither is a default."""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import time
from dataclasses import dataclass
from urllib.parse import urlsplit

from nodeheal.schemas.probe import Reachability


@dataclass(frozen=True, slots=True)
class CheckPlan:
    """What to check on every node; `healthz_url` has `{address}` where the node's address goes."""

    tcp_ports: tuple[int, ...] = (10250,)
    ssh_port: int | None = None
    healthz_url: str | None = "https://{address}:10250/healthz"
    timeout_s: float = 2.0


AUTH_STATUSES = frozenset({"401", "403"})
"""On https, the kubelet refusing our (absent) credentials is still the kubelet answering."""


def _tls_context() -> ssl.SSLContext:
    # Liveness only: the kubelet's serving certificate is often self-signed and the prober sends
    # nothing secret, so the certificate is not verified.
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


_TLS = _tls_context()


def _error(exc: BaseException, timeout_s: float) -> str:
    if isinstance(exc, TimeoutError):
        return f"timeout after {timeout_s:g}s"
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    if isinstance(exc, OSError):
        return exc.strerror or type(exc).__name__
    return f"{type(exc).__name__}: {exc}"


def _target(address: str, port: int) -> str:
    return f"[{address}]:{port}" if ":" in address else f"{address}:{port}"


async def _close(writer: asyncio.StreamWriter) -> None:
    writer.close()
    with contextlib.suppress(Exception):
        await writer.wait_closed()


async def check_tcp(address: str, port: int, *, timeout_s: float, read_ssh_banner: bool = False) -> list[Reachability]:
    """TCP connect; on the SSH port also read the banner (`SSH-2.0-...`) on the same connection."""
    target = _target(address, port)
    started = time.perf_counter()
    try:
        async with asyncio.timeout(timeout_s):
            reader, writer = await asyncio.open_connection(address, port)
    except (OSError, TimeoutError) as exc:
        results = [Reachability(check="tcp", target=target, ok=False, error=_error(exc, timeout_s))]
        if read_ssh_banner:
            results.append(Reachability(check="ssh_banner", target=target, ok=False, error="no connection"))
        return results
    connected_ms = (time.perf_counter() - started) * 1000
    results = [Reachability(check="tcp", target=target, ok=True, latency_ms=round(connected_ms, 3))]
    try:
        if read_ssh_banner:
            try:
                async with asyncio.timeout(timeout_s):
                    line = await reader.readline()
            except (OSError, TimeoutError, ValueError) as exc:
                results.append(Reachability(check="ssh_banner", target=target, ok=False, error=_error(exc, timeout_s)))
            else:
                banner = line.decode("latin-1").strip()
                latency = round((time.perf_counter() - started) * 1000, 3)
                if banner.startswith("SSH-"):
                    results.append(Reachability(check="ssh_banner", target=target, ok=True, latency_ms=latency))
                else:
                    shown = banner[:60] or "(connection closed)"
                    results.append(
                        Reachability(check="ssh_banner", target=target, ok=False, error=f"no SSH banner: {shown!r}")
                    )
    finally:
        await _close(writer)
    return results


async def check_healthz(url: str, *, timeout_s: float) -> Reachability:
    """`GET url` (HTTP/1.1, over TLS for https); ok when the status is 200 — or, on https, 401 / 403
    (the kubelet answered and wants credentials)."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    secure = parts.scheme == "https"
    port = parts.port or (443 if secure else 80)
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    started = time.perf_counter()
    try:
        async with asyncio.timeout(timeout_s):
            reader, writer = await asyncio.open_connection(
                host, port, ssl=_TLS if secure else None, server_hostname=host if secure else None
            )
            try:
                writer.write(f"GET {path} HTTP/1.1\r\nHost: {parts.netloc}\r\nConnection: close\r\n\r\n".encode())
                status_line = await reader.readline()
            finally:
                await _close(writer)
    except (OSError, TimeoutError) as exc:  # ssl.SSLError is an OSError
        return Reachability(check="kubelet_healthz", target=url, ok=False, error=_error(exc, timeout_s))
    latency = round((time.perf_counter() - started) * 1000, 3)
    fields = status_line.decode("latin-1").split()
    if len(fields) >= 2 and (fields[1] == "200" or (secure and fields[1] in AUTH_STATUSES)):
        return Reachability(check="kubelet_healthz", target=url, ok=True, latency_ms=latency)
    shown = " ".join(fields[1:3]) if len(fields) >= 2 else "no HTTP response"
    return Reachability(check="kubelet_healthz", target=url, ok=False, latency_ms=latency, error=f"HTTP {shown}")


async def check_node(address: str, plan: CheckPlan) -> tuple[Reachability, ...]:
    """All checks of one node, concurrently."""
    jobs = [
        check_tcp(address, port, timeout_s=plan.timeout_s, read_ssh_banner=port == plan.ssh_port)
        for port in plan.tcp_ports
    ]
    results: list[Reachability] = []
    if plan.healthz_url:
        url = plan.healthz_url.format(address=f"[{address}]" if ":" in address else address)
        gathered = await asyncio.gather(*jobs, check_healthz(url, timeout_s=plan.timeout_s))
        *tcp_lists, healthz = gathered
        for part in tcp_lists:
            results.extend(part)  # type: ignore[arg-type]
        results.append(healthz)  # type: ignore[arg-type]
    else:
        for part in await asyncio.gather(*jobs):
            results.extend(part)
    return tuple(results)
