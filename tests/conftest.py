"""Session-wide real nats-server and per-test unique names (see tests/support/broker.py); the CPU-bound
background jobs of a few tests start when collection is done (tests/support/background.py)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import pytest
from nats.aio.client import Client
from nats.js.client import JetStreamContext

from nodeheal.runtime.connect import connect
from nodeheal.runtime.provision import apply_topology
from nodeheal.runtime.settings import NatsSettings
from tests.support import background
from tests.support.broker import remove_topology, session_nats_url, unique_settings


def pytest_collection_finish(session: pytest.Session) -> None:
    if not session.config.option.collectonly:
        background.start_jobs(session.items)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    background.stop_jobs()


@pytest.fixture(scope="session")
def nats_url() -> Iterator[str]:
    with session_nats_url() as (url, _how):
        yield url


@pytest.fixture
def nats_settings(nats_url: str) -> NatsSettings:
    """Unique subject prefix, stream names and bucket names for one test."""
    return unique_settings(nats_url)


@pytest.fixture
async def nc(nats_settings: NatsSettings) -> AsyncIterator[Client]:
    client = await connect(nats_settings, name="pytest")
    yield client
    await client.close()


@pytest.fixture
async def js(nc: Client) -> JetStreamContext:
    return nc.jetstream()


@pytest.fixture
async def topology_ready(nats_settings: NatsSettings, nc: Client) -> AsyncIterator[NatsSettings]:
    """The whole stream/bucket layout provisioned under this test's unique names; removed after."""
    js = nc.jetstream()
    topo = nats_settings.topology()
    await apply_topology(js, topo)
    yield nats_settings
    await remove_topology(js, nats_settings)


@pytest.fixture
async def cleanup(js: JetStreamContext, nats_settings: NatsSettings) -> AsyncIterator[None]:
    """Remove whatever a test provisioned under its unique names (it provisions them itself)."""
    yield
    await remove_topology(js, nats_settings)
