"""Loads deploy/nats/natsauth.py (a standalone operator script, not a package) for the tests."""

from __future__ import annotations

import contextlib
import importlib.util
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import nats
import pytest
from nats.aio.client import Client

from nodeheal.runtime.connect import connect
from nodeheal.runtime.provision import apply_topology
from nodeheal.runtime.settings import NatsSettings
from nodeheal.sim.embedded import EmbeddedNats

ROOT = Path(__file__).resolve().parents[3]

_BUNDLES: dict[Path, object] = {}
"""The auth bundle of each running `per_role_server`, by its directory (`mint_agent` signs with it)."""


def load_natsauth() -> ModuleType:
    name = "nodeheal_deploy_natsauth"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, ROOT / "deploy" / "nats" / "natsauth.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def write_auth(tmp_path: Path, *roles: str) -> Any:
    """The deployed per-role authorization for a nats-server of a test's own: `tmp_path/auth.conf` (its
    configuration file) and `<role>.creds` for `admin` and each of `roles`; returns the bundle (it mints more)."""
    bundle = load_natsauth().build()
    (tmp_path / "auth.conf").write_text(bundle.server_config())
    for role in ("admin", *roles):
        (tmp_path / f"{role}.creds").write_text(bundle.user_creds(role))
    return bundle


@contextlib.asynccontextmanager
async def per_role_server(
    tmp_path: Path, *roles: str, nodes: tuple[tuple[str, str], ...] = (), provision: bool = True
) -> AsyncIterator[tuple[EmbeddedNats, Client, NatsSettings]]:
    """A nats-server with the deployed per-role authorization (log in tmp_path/nats.log), `<role>.creds`
    written for `admin` and each role, and `agent-<cluster>-<node>.creds` for each of `nodes` (cluster, node),
    minted as `natsauth.py mint-agent` mints a node's (`agent_nats`); the topology applied with the admin
    credential (unless `provision` is False: an empty server, as before `nodeheal streams apply`); yields the
    server, an admin connection (closed on exit) and the admin's settings."""
    bundle = write_auth(tmp_path, *roles)
    with EmbeddedNats(config_file=str(tmp_path / "auth.conf"), log_file=str(tmp_path / "nats.log")) as server:
        for cluster, node in nodes:
            (tmp_path / f"agent-{cluster}-{node}.creds").write_text(
                bundle.user_creds("agent", cluster=cluster, node=node)
            )
        admin = NatsSettings(url=server.url)
        nc = await nats.connect(server.url, user_credentials=str(tmp_path / "admin.creds"))
        _BUNDLES[tmp_path] = bundle
        try:
            if provision:
                await apply_topology(nc.jetstream(), admin.topology())
            yield server, nc, admin
        finally:
            _BUNDLES.pop(tmp_path, None)
            await nc.close()


def mint_agent(tmp_path: Path, cluster: str, node: str) -> None:
    """Write `agent-<cluster>-<node>.creds` for one more node while `per_role_server(tmp_path)` runs, minted as
    `natsauth.py mint-agent` mints it (read by `agent_nats`)."""
    bundle = _BUNDLES[tmp_path]
    creds = bundle.user_creds("agent", cluster=cluster, node=node)  # type: ignore[attr-defined]
    (tmp_path / f"agent-{cluster}-{node}.creds").write_text(creds)


def mint_node_user(tmp_path: Path, role: str, cluster: str, node: str) -> Path:
    """Write `<role>-<cluster>-<node>.creds` for a per-node role (`agent`, `ingest-node`) while
    `per_role_server(tmp_path)` runs, minted as `natsauth.py mint-<role>` mints it; its path."""
    path = tmp_path / f"{role}-{cluster}-{node}.creds"
    path.write_text(_BUNDLES[tmp_path].user_creds(role, cluster=cluster, node=node))  # type: ignore[attr-defined]
    return path


def mint_role(tmp_path: Path, role: str) -> Path:
    """Write `<role>.creds` for one more role while `per_role_server(tmp_path)` runs (e.g. `reader` for the CLI's
    read-only commands), as `natsauth.py init` writes it; its path."""
    path = tmp_path / f"{role}.creds"
    if not path.exists():
        path.write_text(_BUNDLES[tmp_path].user_creds(role))  # type: ignore[attr-defined]
    return path


def role_nats(tmp_path: Path, url: str, role: str) -> NatsSettings:
    """The NATS settings a service of `role` is deployed with: its `.creds` (written by `per_role_server`)
    and its role's inbox prefix."""
    return NatsSettings(
        url=url, creds_file=str(tmp_path / f"{role}.creds"), inbox_prefix=load_natsauth().inbox_prefix(role)
    )


def agent_nats(tmp_path: Path, url: str, cluster: str, node: str) -> NatsSettings:
    """A node agent's NATS settings as deploy/base/agent.yaml gives them: the node's own credential (written by
    `per_role_server(nodes=...)`) and the inbox prefix `_INBOX.agent` (the agent appends its cluster and node)."""
    return NatsSettings(
        url=url,
        creds_file=str(tmp_path / f"agent-{cluster}-{node}.creds"),
        inbox_prefix=load_natsauth().inbox_prefix("agent"),
    )


def node_nats(tmp_path: Path, url: str, role: str, cluster: str, node: str) -> NatsSettings:
    """The NATS settings one node's process of a per-node role (`agent`, `ingest-node`) connects with, while
    `per_role_server(tmp_path)` runs: the node's own credential (minted now, as `natsauth.py mint-<role>` mints
    it) and its node's inbox (`agent_inbox_prefix`, what the process derives from its role's base prefix)."""
    return NatsSettings(
        url=url,
        creds_file=str(mint_node_user(tmp_path, role, cluster, node)),
        inbox_prefix=load_natsauth().agent_inbox_prefix(cluster, node, role=role),
    )


async def connect_agent(tmp_path: Path, url: str, cluster: str, node: str) -> Client:
    """A node agent's connection as deployed, for the simulator's real agent code (`node_nats`); the caller
    closes it."""
    return await connect(node_nats(tmp_path, url, "agent", cluster, node), name=f"agent-{node}")


@contextlib.asynccontextmanager
async def node_client(tmp_path: Path, url: str, role: str, cluster: str, node: str) -> AsyncIterator[Client]:
    """A connection of a per-node role as one node's process makes it (`node_nats`). Closed on exit."""
    client = await connect(node_nats(tmp_path, url, role, cluster, node), name=f"{role}-{node}")
    try:
        yield client
    finally:
        await client.close()


def violations(tmp_path: Path) -> list[str]:
    """The permission violations the server of `per_role_server(tmp_path)` logged."""
    return [line for line in (tmp_path / "nats.log").read_text().splitlines() if "Violation" in line]


@dataclass
class RoleServer:
    """The per-role server of one test of one service: `nc` and `settings` are the admin's (the test stands in for
    the other services and the operator), `role` the service's settings as deployed (its role's credential and
    inbox prefix); `role_nc` opens a connection as one process of the service does."""

    dir: Path
    url: str
    nc: Client
    settings: NatsSettings
    role: NatsSettings
    opened: list[Client] = field(default_factory=list)
    node_inbox: str = ""
    """A per-node role's node inbox (`agent_inbox_prefix`): `role` is then as deployed (the role's inbox prefix;
    the service appends its node's tokens, e.g. the ingest's `INBOX_PER_NODE`) and `role_nc` connects with it."""

    async def role_nc(self, name: str) -> Client:
        settings = self.role.model_copy(update={"inbox_prefix": self.node_inbox}) if self.node_inbox else self.role
        client = await connect(settings, name=name)
        self.opened.append(client)
        return client


@contextlib.asynccontextmanager
async def role_server(tmp_path: Path, role: str, *, node: tuple[str, str] | None = None) -> AsyncIterator[RoleServer]:
    """`per_role_server(tmp_path / "nats", role)` as a `RoleServer`; the connections `role_nc` opened are closed
    on exit. A per-node role (`agent`, `ingest-node`) needs `node` (cluster, node): its credential is that node's,
    minted as `natsauth.py mint-<role>` mints it, its inbox that node's (`RoleServer.node_inbox`)."""
    directory = tmp_path / "nats"
    directory.mkdir()
    natsauth = load_natsauth()
    per_node = role in natsauth.NODE_ROLES
    if per_node != (node is not None):
        msg = f"role {role!r}: pass node=(cluster, node) for a per-node role {natsauth.NODE_ROLES}, and only then"
        raise ValueError(msg)
    async with per_role_server(directory, *(() if per_node else (role,))) as (server, nc, admin):
        if node is None:
            deployed = RoleServer(directory, server.url, nc, admin, role_nats(directory, server.url, role))
        else:
            own = node_nats(directory, server.url, role, *node)
            settings = own.model_copy(update={"inbox_prefix": natsauth.inbox_prefix(role)})  # as deployed
            deployed = RoleServer(directory, server.url, nc, admin, settings, node_inbox=own.inbox_prefix)
        try:
            yield deployed
        finally:
            for client in deployed.opened:
                await client.close()


def deployed_as(role: str, *, node: tuple[str, str] | None = None) -> Any:
    """The `deployed` fixture of a test module whose service runs as `role`: a nats-server of the test's own with the
    deployed per-role authorization and the topology applied (`role_server`); after the test, no permission
    violation in its log. In the module: `deployed = deployed_as("prober")`; for a per-node role, the node it runs
    on: `deployed_as("ingest-node", node=("prod-1", "node-1"))`."""

    @pytest.fixture(name="deployed")
    async def deployed(tmp_path: Path) -> AsyncIterator[RoleServer]:
        async with role_server(tmp_path, role, node=node) as d:
            yield d
        assert violations(d.dir) == []

    return deployed


def admin_stands_in() -> tuple[Any, Any]:
    """The `nc` and `topology_ready` fixtures of a test module whose tests run on its `deployed` per-role server
    (a `RoleServer` fixture): the admin's connection and settings, the test standing in for the services not
    under test. In the module: `nc, topology_ready = admin_stands_in()`; a module without it keeps the shared
    server's fixtures."""

    @pytest.fixture(name="nc")
    def admin_nc(deployed: RoleServer) -> Client:
        """The admin's connection to the per-role server: the test stands in for the services not under test."""
        return deployed.nc

    @pytest.fixture(name="topology_ready")
    def admin_settings(deployed: RoleServer) -> NatsSettings:
        """The admin's settings (the layout is provisioned on the per-role server)."""
        return deployed.settings

    return admin_nc, admin_settings
