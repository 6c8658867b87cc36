"""The replay and audit-tail tests' shared parts: a nats-server of the test's own with the deployed per-role
authorization (`deployed`; a module may give its own), the operator's read-only credential the commands run
under (`reader`) and the remediator's JetStream context, the only writer of AUDIT (`audit_js`). A module whose
tests run there says so with `nc, topology_ready = admin_stands_in()`: the test stands in for the services that
wrote the streams, as admin."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from nats.js.client import JetStreamContext

from nodeheal.runtime.connect import connect
from nodeheal.runtime.settings import NatsSettings
from tests.integration.deploy.natsauth_loader import RoleServer, mint_role, role_nats, role_server, violations


@pytest.fixture
async def deployed(tmp_path: Path) -> AsyncIterator[RoleServer]:
    """The per-role server; no permission violation may be logged by the end of the test."""
    async with role_server(tmp_path, "reader") as d:
        yield d
        assert violations(d.dir) == []


@pytest.fixture
def reader(deployed: RoleServer) -> NatsSettings:
    """What a read-only command (`replay`, `audit tail`, `fleet`) is given: the operator's `reader` credential."""
    mint_role(deployed.dir, "reader")
    return role_nats(deployed.dir, deployed.url, "reader")


@pytest.fixture
async def audit_js(deployed: RoleServer) -> AsyncIterator[JetStreamContext]:
    """The remediator's JetStream context: under the deployed authorization only it may write AUDIT."""
    mint_role(deployed.dir, "remediator")
    remediator = await connect(role_nats(deployed.dir, deployed.url, "remediator"), name="remediator")
    try:
        yield remediator.jetstream()
    finally:
        await remediator.close()
