"""Service processes (`python -m nodeheal.<service>`) started as their own NATS users of
deploy/nats/natsauth.py, configured only through their environment as Kubernetes configures them, and
held until each answers 200 on /readyz."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

from nodeheal.sim.embedded import free_port

SERVICES = {
    "detector": (["-m", "nodeheal.detector"], "NODEHEAL_DETECTOR_", {}),
    "diagnoser": (["-m", "nodeheal.diagnoser"], "NODEHEAL_DIAGNOSER_", {}),
    "remediator": (
        ["-m", "nodeheal.remediator"],
        "NODEHEAL_REMEDIATOR_",
        {"KUBE__ENABLED": "false", "CLOUD__PROVIDER": "none"},
    ),
    "ingest": (["-m", "nodeheal.cloud_events", "ingest"], "NODEHEAL_INGEST_", {"ALLOW_UNAUTHENTICATED": "true"}),
    "prober": (["-m", "nodeheal.cloud_events", "prober"], "NODEHEAL_PROBER_", {}),
    "agent": (["-m", "nodeheal.agent"], "NODEHEAL_AGENT_", {"KERNEL_LOG": "off", "SERVICES": "[]"}),
}
"""name → (python arguments, settings prefix, extra settings)"""


def ready(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=1) as response:
            return bool(response.status == 200)
    except OSError:
        return False


@contextlib.contextmanager
def running_as_roles(
    names: tuple[str, ...],
    *,
    url: str,
    natsauth: ModuleType,
    bundle: Any,
    directory: Path,
    node: str = "",
    tls_ca: Path | None = None,
    ready_within_s: float = 90.0,
) -> Iterator[None]:
    """Start `names` (keys of SERVICES) as their roles against `url`, each with its own `.creds` and inbox
    prefix (the agent's user carries `node`'s tags), and the CA when the server speaks TLS; wait until all
    are ready (a process that exits fails with its log); stop them at the end of the block."""
    procs: dict[str, tuple[subprocess.Popen[bytes], int]] = {}
    try:
        for name in names:
            args, prefix, extra = SERVICES[name]
            is_agent = name == "agent"
            creds = directory / f"{name}.creds"
            creds.write_text(bundle.user_creds(name, cluster="c1", node=node) if is_agent else bundle.user_creds(name))
            port = free_port()
            env = {k: v for k, v in os.environ.items() if not k.startswith(("NODEHEAL_", "NATS_"))}
            env.update(
                {
                    f"{prefix}NATS__URL": url,
                    f"{prefix}NATS__CREDS_FILE": str(creds),
                    f"{prefix}NATS__INBOX_PREFIX": natsauth.inbox_prefix(name),
                    f"{prefix}HTTP_PORT": str(port),
                    f"{prefix}CLUSTER": "c1",
                    f"{prefix}LOG_FORMAT": "json",
                    **({f"{prefix}NATS__TLS_CA_FILE": str(tls_ca)} if tls_ca else {}),
                    **(
                        {f"{prefix}NODE_NAME": node, f"{prefix}STATE_DIR": str(directory / "agent")} if is_agent else {}
                    ),
                    **{prefix + k: v for k, v in extra.items()},
                }
            )
            log = (directory / f"{name}.log").open("wb")
            procs[name] = (
                subprocess.Popen([sys.executable, *args], env=env, stdout=log, stderr=subprocess.STDOUT),
                port,
            )
        waiting = set(procs)
        deadline = time.monotonic() + ready_within_s
        while waiting and time.monotonic() < deadline:
            for name in sorted(waiting):
                proc, port = procs[name]
                assert proc.poll() is None, f"{name} exited: {(directory / f'{name}.log').read_text()[-2000:]}"
                if ready(port):
                    waiting.discard(name)
            time.sleep(0.2)
        assert not waiting, {n: (directory / f"{n}.log").read_text()[-1500:] for n in waiting}
        yield
    finally:
        for proc, _ in procs.values():
            proc.terminate()
        for proc, _ in procs.values():
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
