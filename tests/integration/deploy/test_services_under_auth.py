"""Every service process starts and becomes ready as its own NATS user of deploy/nats/natsauth.py on
a real nats-server running that authorization, and the server logs no permission violation: the
permission matrix is what the services really do (consumers, KV watches, restores), not a guess. Each
process holds exactly one NATS connection (the server's /connz).

The service kit passes the credentials and the per-role inbox prefix (`NatsSettings.inbox_prefix`) to
both the faststream broker (`make_broker`) and raw nats-py connections (`connect`)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import nats
import pytest

from nodeheal.runtime.provision import apply_topology
from nodeheal.runtime.settings import NatsSettings
from nodeheal.sim.embedded import EmbeddedNats, free_port
from tests.integration.deploy.natsauth_loader import load_natsauth

pytestmark = [pytest.mark.nats, pytest.mark.slow]

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


CONNECTION_NAMES = {  # how each process names its NATS connection(s)
    "detector": "nodeheal-detector-",
    "diagnoser": "nodeheal-diagnoser-",
    "remediator": "nodeheal-remediator-",
    "ingest": "cloud-events-ingest:",
    "prober": "nodeheal-prober-",
    "agent": "nodeheal-agent-",
}


def ready(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=1) as response:
            return bool(response.status == 200)
    except OSError:
        return False


async def test_every_service_runs_as_its_own_nats_user(tmp_path: Path) -> None:
    natsauth = load_natsauth()
    bundle = natsauth.build()
    (tmp_path / "auth.conf").write_text(bundle.server_config())
    server_log = tmp_path / "nats.log"
    node = socket.gethostname()
    with EmbeddedNats(config_file=str(tmp_path / "auth.conf"), log_file=str(server_log)) as server:
        admin_creds = tmp_path / "admin.creds"
        admin_creds.write_text(bundle.user_creds("admin"))
        nc = await nats.connect(server.url, user_credentials=str(admin_creds))
        await apply_topology(nc.jetstream(), NatsSettings().topology())
        await nc.close()

        procs: dict[str, tuple[subprocess.Popen[bytes], int]] = {}
        try:
            for name, (args, prefix, extra) in SERVICES.items():
                is_agent = name == "agent"
                creds = tmp_path / f"{name}.creds"
                creds.write_text(
                    bundle.user_creds(name, cluster="c1" if is_agent else None, node=node if is_agent else None)
                )
                port = free_port()
                env = {k: v for k, v in os.environ.items() if not k.startswith("NODEHEAL_") and k != "NATS_URL"}
                env.update(
                    {
                        f"{prefix}NATS__URL": server.url,
                        f"{prefix}NATS__CREDS_FILE": str(creds),
                        f"{prefix}NATS__INBOX_PREFIX": natsauth.inbox_prefix(name),
                        f"{prefix}HTTP_PORT": str(port),
                        f"{prefix}CLUSTER": "c1",
                        f"{prefix}LOG_FORMAT": "json",
                        **(
                            {f"{prefix}NODE_NAME": node, f"{prefix}STATE_DIR": str(tmp_path / "agent")}
                            if is_agent
                            else {}
                        ),
                        **{prefix + k: v for k, v in extra.items()},
                    }
                )
                log = (tmp_path / f"{name}.log").open("wb")
                procs[name] = (
                    subprocess.Popen([sys.executable, *args], env=env, stdout=log, stderr=subprocess.STDOUT),
                    port,
                )
            waiting = set(procs)
            deadline = time.monotonic() + 90
            while waiting and time.monotonic() < deadline:
                for name in sorted(waiting):
                    proc, port = procs[name]
                    assert proc.poll() is None, f"{name} exited: {(tmp_path / f'{name}.log').read_text()[-2000:]}"
                    if ready(port):
                        waiting.discard(name)
                time.sleep(0.2)
            assert not waiting, {n: (tmp_path / f"{n}.log").read_text()[-1500:] for n in waiting}
            # one NATS connection per service process: its consumers run on the process's broker
            url = f"http://127.0.0.1:{server.monitor_port}/connz?limit=1000"
            with urllib.request.urlopen(url, timeout=5) as response:
                names = [c.get("name", "") for c in json.load(response)["connections"]]
            per_service = {name: sum(1 for n in names if n.startswith(CONNECTION_NAMES[name])) for name in SERVICES}
            assert per_service == dict.fromkeys(SERVICES, 1), names
        finally:
            for proc, _ in procs.values():
                proc.terminate()
            for proc, _ in procs.values():
                try:
                    proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    proc.kill()
    violations = [line for line in server_log.read_text().splitlines() if "Violation" in line]
    assert violations == []
