"""Every service process starts and becomes ready as its own NATS user of deploy/nats/natsauth.py on
a real nats-server running that authorization, and the server logs no permission violation: the
permission matrix is what the services really do (consumers, KV watches, restores), not a guess.

The service kit passes the credentials and the per-role inbox prefix (`NatsSettings.inbox_prefix`) to
both the faststream broker (`make_broker`) and raw nats-py connections (`connect`)."""

from __future__ import annotations

import socket
from pathlib import Path

import nats
import pytest

from nodeheal.runtime.provision import apply_topology
from nodeheal.runtime.settings import NatsSettings
from nodeheal.sim.embedded import EmbeddedNats
from tests.integration.deploy.natsauth_loader import load_natsauth
from tests.integration.deploy.role_services import SERVICES, running_as_roles

pytestmark = [pytest.mark.nats, pytest.mark.slow]


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
            pass  # every one of them became ready as its own user
    violations = [line for line in server_log.read_text().splitlines() if "Violation" in line]
    assert violations == []
