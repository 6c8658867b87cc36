"""Every service process starts and becomes ready as its own NATS user of deploy/nats/natsauth.py on
a real nats-server running that authorization, and the server logs no permission violation: the
permission matrix is what the services really do (consumers, KV watches, restores), not a guess. Each
process holds exactly one NATS connection (the server's /connz).

The service kit passes the credentials and the per-role inbox prefix (`NatsSettings.inbox_prefix`) to
both the faststream broker (`make_broker`) and raw nats-py connections (`connect`)."""

from __future__ import annotations

import json
import socket
import urllib.request
from pathlib import Path

import nats
import pytest

from nodeheal.runtime.provision import apply_topology
from nodeheal.runtime.settings import NatsSettings
from nodeheal.sim.embedded import EmbeddedNats
from tests.integration.deploy.natsauth_loader import load_natsauth
from tests.integration.deploy.role_services import SERVICES, running_as_roles

pytestmark = [pytest.mark.nats, pytest.mark.slow]

CONNECTION_NAMES = {  # how each process names its NATS connection(s)
    "detector": "nodeheal-detector-",
    "diagnoser": "nodeheal-diagnoser-",
    "remediator": "nodeheal-remediator-",
    "ingest": "cloud-events-ingest:",
    "prober": "nodeheal-prober-",
    "agent": "nodeheal-agent-",
}


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

        with running_as_roles(
            tuple(SERVICES), url=server.url, natsauth=natsauth, bundle=bundle, directory=tmp_path, node=node
        ):
            # every one of them became ready as its own user, and holds one NATS connection: its
            # consumers run on the process's broker
            url = f"http://127.0.0.1:{server.monitor_port}/connz?limit=1000"
            with urllib.request.urlopen(url, timeout=5) as response:
                names = [c.get("name", "") for c in json.load(response)["connections"]]
            per_service = {name: sum(1 for n in names if n.startswith(CONNECTION_NAMES[name])) for name in SERVICES}
            assert per_service == dict.fromkeys(SERVICES, 1), names
    violations = [line for line in server_log.read_text().splitlines() if "Violation" in line]
    assert violations == []
