"""Running the nodeheal services as separate processes (the way they deploy), with managed
lifetime: started with their own environment, logs to files, readiness awaited over HTTP, stopped
with SIGTERM (then SIGKILL) and never left behind (PR_SET_PDEATHSIG)."""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import fcntl
import json
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from nodeheal.runtime.settings import NatsSettings

SERVICES: dict[str, tuple[str, list[str]]] = {
    # name: (env prefix, python -m arguments)
    "ingest": ("NODEHEAL_INGEST_", ["-m", "nodeheal.cloud_events", "ingest"]),
    "detector": ("NODEHEAL_DETECTOR_", ["-m", "nodeheal.detector"]),
    "diagnoser": ("NODEHEAL_DIAGNOSER_", ["-m", "nodeheal.diagnoser"]),
    "remediator": ("NODEHEAL_REMEDIATOR_", ["-m", "nodeheal.remediator"]),
}


def _die_with_parent() -> None:
    with contextlib.suppress(Exception):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)


PORT_HOLD_S = 120.0
"""How long a port handed out by `free_port` is not handed out again, to any process of this user on this
machine: longer than any server here takes to bind the port it was given."""


def _ports_ledger() -> Path:
    return Path(tempfile.gettempdir()) / f"nodeheal-ports-{os.getuid()}.json"


def _hand_out(port: int) -> bool:
    """Record `port` as handed out; False when it was handed out less than PORT_HOLD_S ago."""
    ledger = _ports_ledger()
    with ledger.open("a+", encoding="ascii") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)  # one process at a time reads and rewrites the ledger
        handle.seek(0)
        try:
            handed: dict[str, float] = json.loads(handle.read() or "{}")
        except ValueError:
            handed = {}
        now = time.time()
        handed = {p: at for p, at in handed.items() if now - at < PORT_HOLD_S}
        fresh = str(port) not in handed
        if fresh:
            handed[str(port)] = now
        handle.seek(0)
        handle.truncate()
        handle.write(json.dumps(handed))
    return fresh


LISTEN_FLOOR = 20000
"""The lowest port `free_port` hands out when it can pick below the kernel's ephemeral range."""


def _ephemeral_range() -> tuple[int, int] | None:
    """The kernel's ephemeral port range (`net.ipv4.ip_local_port_range`), where it picks the local port of
    every outgoing connection and of every `bind(port 0)`; None where it cannot be read."""
    try:
        low, high = (int(v) for v in Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[:2])
    except (OSError, ValueError):
        return None
    return low, high


def _listen_candidates() -> range | None:
    """Ports a listener can be given that no outgoing connection will take: from LISTEN_FLOOR to just below
    the ephemeral range, when that leaves at least 2,000 (None: ask the kernel)."""
    ephemeral = _ephemeral_range()
    if ephemeral is None or ephemeral[0] - LISTEN_FLOOR < 2000:
        return None
    return range(LISTEN_FLOOR, ephemeral[0])


def _bindable(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_port() -> int:
    """A free loopback TCP port for a server to bind. Two races are closed. The kernel may hand a port it
    chose for a probe socket to the next `bind(port 0)` or to the local end of any outgoing connection (a
    test or a service makes thousands) before our server binds it; so on Linux the port is picked below the
    ephemeral range (`net.ipv4.ip_local_port_range`, 32768-60999 by default), where the kernel never puts
    an outgoing connection, and probed with a bind. And two callers (two test workers, two services of
    `nodeheal up`) could pick the same port before either binds it; so a ledger shared by this user's
    processes (a file in the temporary directory, under `flock`) keeps every port handed out for
    PORT_HOLD_S, and the pick is repeated for a port still held."""
    candidates = _listen_candidates()
    for _ in range(200):
        if candidates is not None:
            port = random.choice(candidates)
            if not _bindable(port):
                continue
        else:
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
                sock.bind(("127.0.0.1", 0))
                port = sock.getsockname()[1]
        if _hand_out(port):
            return port
    msg = "no free loopback port that was not handed out in the last two minutes"
    raise RuntimeError(msg)


@dataclass
class ServiceProcess:
    name: str
    args: list[str]
    env: dict[str, str]
    http_port: int
    log_path: Path
    proc: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    def start(self) -> None:
        env = {**os.environ, **self.env}
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = open(self.log_path, "ab")  # noqa: SIM115 - the child owns it
        self.proc = subprocess.Popen(
            [sys.executable, *self.args],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            preexec_fn=_die_with_parent if sys.platform == "linux" else None,
        )

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    def ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.http_port}/readyz", timeout=1) as resp:
                return bool(resp.status == 200)
        except OSError:
            return False

    def tail(self, lines: int = 15) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def stop(self, *, timeout_s: float = 15.0) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=5)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=5)


def stop_all(services: list[ServiceProcess], *, timeout_s: float = 15.0) -> None:
    """SIGTERM every service at once, then wait: shutdown takes one grace period, not one per service."""
    for svc in services:
        if svc.proc is not None and svc.proc.poll() is None:
            svc.proc.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    for svc in services:
        if svc.proc is None:
            continue
        try:
            svc.proc.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            svc.kill()


async def wait_ready(services: list[ServiceProcess], *, timeout_s: float = 90.0) -> None:
    deadline = time.monotonic() + timeout_s
    pending = list(services)
    while pending:
        for svc in list(pending):
            if not svc.alive:
                msg = f"service {svc.name} exited during start-up; last log lines ({svc.log_path}):\n{svc.tail()}"
                raise RuntimeError(msg)
            if await asyncio.to_thread(svc.ready):
                pending.remove(svc)
        if pending and time.monotonic() > deadline:
            names = ", ".join(s.name for s in pending)
            msg = f"services not ready after {timeout_s:.0f}s: {names}; see their logs: " + ", ".join(
                str(s.log_path) for s in pending
            )
            raise RuntimeError(msg)
        if pending:
            await asyncio.sleep(0.3)


def service_processes(
    *,
    settings: NatsSettings,
    cluster: str,
    run_dir: Path,
    names: list[str] | None = None,
    extra_env: dict[str, dict[str, str]] | None = None,
    log_format: str = "json",
) -> list[ServiceProcess]:
    """One process per service, configured only through its environment (as in Kubernetes)."""
    out: list[ServiceProcess] = []
    for name in names or list(SERVICES):
        prefix, args = SERVICES[name]
        port = free_port()
        env = {
            f"{prefix}NATS__URL": settings.url,
            f"{prefix}NATS__PREFIX": settings.prefix,
            f"{prefix}NATS__STREAM_PREFIX": settings.stream_prefix,
            f"{prefix}NATS__BUCKET_PREFIX": settings.bucket_prefix,
            f"{prefix}CLUSTER": cluster,
            f"{prefix}HTTP_HOST": "127.0.0.1",
            f"{prefix}HTTP_PORT": str(port),
            f"{prefix}LOG_FORMAT": log_format,
            f"{prefix}INSTANCE": f"{name}-0",
        }
        env |= (extra_env or {}).get(name, {})
        out.append(ServiceProcess(name, list(args), env, port, run_dir / f"{name}.log"))
    return out
