"""Session-wide real nats-server and per-test unique names (see tests/support/broker.py); the CPU-bound
background jobs of a few tests start when collection is done (tests/support/background.py).

The whole suite runs on two pytest-xdist workers (`-n auto --dist loadscope` in pyproject.toml; the number
and the scheduling units are chosen here): it waits far more than it computes. A run of named files or tests stays in one process.
Each worker has its own nats-server; the background jobs run once for the run, in a directory the
controller hands to both workers."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from nats.aio.client import Client
from nats.js.client import JetStreamContext

from nodeheal.runtime.connect import connect
from nodeheal.runtime.provision import apply_topology
from nodeheal.runtime.settings import NatsSettings
from tests.support import background
from tests.support.broker import remove_topology, session_nats_url, unique_settings

WORKERS = 2
"""xdist workers of a whole-suite run: the machines have 2 cores and the suite is wait-bound."""


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_auto_num_workers(config: pytest.Config) -> int:
    """`-n auto`: two workers for the suite or a folder of it, none (one process, no start-up of workers)
    when only files or single tests are named. `-n N` on the command line still wins."""
    named = [arg.split("::")[0] for arg in config.args]
    if named and all("::" in arg or Path(path).is_file() for arg, path in zip(config.args, named, strict=True)):
        return 0
    return WORKERS


@pytest.hookimpl(optionalhook=True)
def pytest_configure_node(node: Any) -> None:
    """(xdist controller) one directory for the run's shared background jobs, handed to every worker."""
    config = node.config
    if not hasattr(config, "_nodeheal_shared"):
        config._nodeheal_shared = tempfile.mkdtemp(prefix="nodeheal-pytest-")
    node.workerinput["nodeheal_shared"] = config._nodeheal_shared


def pytest_configure(config: pytest.Config) -> None:
    workerinput = getattr(config, "workerinput", None)
    if workerinput is not None:
        background.share(workerinput.get("nodeheal_shared"))
    else:
        compile_workspace()


WORKSPACE = ("schemas", "runtime", "services", "cli", "sim")


def compile_workspace() -> None:
    """(controller or a one-process run) byte-compile the workspace's sources and the installed packages
    once: the services the tests start as subprocesses then import from `__pycache__` instead of
    compiling every module at every start. With PYTHONDONTWRITEBYTECODE set, as on this project's
    machines, nothing else writes them, and a service start took twice the CPU (docs/BENCHMARKS.md, "The
    test suite"). Up-to-date files are only checked (about a second); the first run compiles ~8,000."""
    import compileall
    import sysconfig

    root = Path(__file__).resolve().parent.parent
    for folder in (*(root / f for f in WORKSPACE), Path(sysconfig.get_paths()["purelib"])):
        compileall.compile_dir(folder, quiet=2, workers=1)


def pytest_unconfigure(config: pytest.Config) -> None:
    shared = getattr(config, "_nodeheal_shared", None)
    if shared is not None:
        shutil.rmtree(shared, ignore_errors=True)


E2E = "tests/e2e/"


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
    """(xdist controller) `--dist loadscope` with the e2e folder as one unit: a module's tests run on one
    worker in order (a module-scoped fixture, such as the 400-node demo's run or the permission matrix's
    server, is set up once), and the e2e tests all run on one worker, one after the other (the demos are
    CPU-hungry and assert diagnosis quality: never two at once). `--dist loadgroup` cannot do this here:
    pytest-xdist 3.8 marks a group by rewriting `item._nodeid`, which pytest 9 no longer reads."""
    from xdist.scheduler import LoadScopeScheduling

    class ModulesAndE2E(LoadScopeScheduling):  # type: ignore[misc]
        def _split_scope(self, nodeid: str) -> str:
            return E2E if nodeid.startswith(E2E) else nodeid.split("::", 1)[0]

    return ModulesAndE2E(config, log)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item: pytest.Item) -> Iterator[None]:
    """A test marked `alone` runs with nothing of the other xdist worker beside it (background.turn)."""
    with background.turn(alone=item.get_closest_marker("alone") is not None):
        yield


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
