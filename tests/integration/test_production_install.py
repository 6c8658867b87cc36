"""A production install is what the images run: `uv sync --locked --no-dev` of one distribution, no
development tools, no simulator. Each environment here is a fresh one (UV_PROJECT_ENVIRONMENT) built
from the lock file and the uv cache by `python -m uv`.

- the whole workspace without dev dependencies imports every `nodeheal.*` module;
- each deployable distribution alone starts its Dockerfile's entry point (`--help`: usage, exit 0,
  nothing connected), and nothing else of it is needed;
- `nodeheal demo` without nodeheal-sim fails with the install hint;
- the node agent's environment holds neither the Kubernetes client nor a cloud SDK.
"""

from __future__ import annotations

import atexit
import functools
import os
import shutil
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tests.support import background

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]

# distribution → the commands its Dockerfile's entry point runs (deploy/images/<dist>.Dockerfile)
ENTRY_POINTS: dict[str, list[list[str]]] = {
    "nodeheal": [["bin/nodeheal", "--help"]],
    "nodeheal-agent": [["bin/python", "-m", "nodeheal.agent", "--help"]],
    "nodeheal-cloud-events": [
        ["bin/python", "-m", "nodeheal.cloud_events", "--help"],
        ["bin/python", "-m", "nodeheal.cloud_events", "ingest", "--help"],
        ["bin/python", "-m", "nodeheal.cloud_events", "prober", "--help"],
        ["bin/python", "-m", "nodeheal.cloud_events", "inventory", "--help"],
    ],
    "nodeheal-detector": [["bin/python", "-m", "nodeheal.detector", "--help"]],
    "nodeheal-diagnoser": [["bin/python", "-m", "nodeheal.diagnoser", "--help"]],
    "nodeheal-remediator": [["bin/python", "-m", "nodeheal.remediator", "--help"]],
}

IMPORT_ALL = """
import importlib, pkgutil, sys
import nodeheal
names = sorted(m.name for m in pkgutil.walk_packages(nodeheal.__path__, "nodeheal.")
               if not m.name.endswith("__main__"))
failed = []
for name in names:
    try:
        importlib.import_module(name)
    except Exception as exc:
        failed.append(f"{name}: {type(exc).__name__}: {exc}")
print(len(names))
print("\\n".join(failed), file=sys.stderr)
sys.exit(1 if failed else 0)
"""

NO_CLOUD_SDK = """
import importlib.util, pkgutil
present = [m.name for m in pkgutil.iter_modules() if m.name == "kubernetes" or m.name.startswith("alibabacloud")]
assert importlib.util.find_spec("kubernetes") is None, "kubernetes is installed"
print(",".join(present))
"""


@functools.cache
def uv_command() -> list[str]:
    """uv as a Python package: of the running interpreter, else of the interpreter the venv was made from
    (`python3 -m uv run pytest` puts uv there), else the binary `uv run` names in $UV."""
    for python in (sys.executable, getattr(sys, "_base_executable", sys.executable)):
        with background.spawn([python, "-m", "uv", "--version"], stdout=subprocess.PIPE, stderr=subprocess.PIPE) as p:
            p.communicate()
        if p.returncode == 0:
            return [python, "-m", "uv"]
    if os.environ.get("UV"):
        return [os.environ["UV"]]
    pytest.fail("uv is not installed: python3 -m pip install uv")


def sync(env_dir: Path, *args: str) -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "UV_PROJECT_ENVIRONMENT")}
    env["UV_PROJECT_ENVIRONMENT"] = str(env_dir)
    done = background.run(
        [*uv_command(), "sync", "--locked", "--no-dev", "--python", sys.executable, "--quiet", *args],
        cwd=ROOT,
        env=env,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr


def run(env_dir: Path, *cmd: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("NODEHEAL_", "NATS_", "VIRTUAL_ENV"))}
    return background.run([str(env_dir / cmd[0]), *cmd[1:]], cwd=env_dir, env=env, timeout=60)


def install_and_check(root: Path, dist: str) -> dict[str, subprocess.CompletedProcess[str]]:
    """Sync one environment and run its checks; returns each check's result by name."""
    env_dir = root / dist
    if dist == "all":
        sync(env_dir, "--all-packages")
        return {"import-all": run(env_dir, "bin/python", "-c", IMPORT_ALL)}
    sync(env_dir, "--no-editable", "--package", dist)
    results = {" ".join(cmd): run(env_dir, *cmd) for cmd in ENTRY_POINTS[dist]}
    results["import nodeheal.sim"] = run(env_dir, "bin/python", "-c", "import nodeheal.sim")
    if dist == "nodeheal":
        results["nodeheal demo"] = run(env_dir, "bin/nodeheal", "demo")
    if dist == "nodeheal-agent":
        results["cloud SDKs"] = run(env_dir, "bin/python", "-c", NO_CLOUD_SDK)
    return results


def install_all() -> dict[str, dict[str, subprocess.CompletedProcess[str]]]:
    """Every environment, built and checked concurrently (the checks are mostly imports: CPU-bound), in a
    temporary directory removed when the session ends."""
    root = Path(tempfile.mkdtemp(prefix="nodeheal-installs-"))
    atexit.register(shutil.rmtree, root, ignore_errors=True)
    dists = ["all", *sorted(ENTRY_POINTS)]
    with ThreadPoolExecutor(max_workers=max(2, os.cpu_count() or 2)) as pool:
        return dict(zip(dists, pool.map(lambda d: install_and_check(root, d), dists), strict=True))


INSTALLS = background.job(__file__, "production installs", install_all)
"""CPU- and disk-bound for a minute: built from the start of the session (tests/support/background.py)."""


@pytest.fixture(scope="module")
def installs() -> dict[str, dict[str, subprocess.CompletedProcess[str]]]:
    return INSTALLS.result()


def test_the_workspace_without_dev_dependencies_imports_every_module(
    installs: dict[str, dict[str, subprocess.CompletedProcess[str]]],
) -> None:
    done = installs["all"]["import-all"]
    assert done.returncode == 0, done.stderr
    assert int(done.stdout.strip()) > 100  # the walk really found the packages of every distribution


@pytest.mark.parametrize("dist", sorted(ENTRY_POINTS))
def test_each_distribution_alone_starts_its_entry_point(
    installs: dict[str, dict[str, subprocess.CompletedProcess[str]]], dist: str
) -> None:
    results = installs[dist]
    for cmd in ENTRY_POINTS[dist]:
        done = results[" ".join(cmd)]
        assert done.returncode == 0, f"{' '.join(cmd)}: {done.stderr}"
        assert "usage" in (done.stdout + done.stderr).lower()
    assert results["import nodeheal.sim"].returncode != 0, f"{dist} ships the simulator"


def test_nodeheal_demo_without_the_simulator_says_how_to_install_it(
    installs: dict[str, dict[str, subprocess.CompletedProcess[str]]],
) -> None:
    demo = installs["nodeheal"]["nodeheal demo"]
    assert demo.returncode != 0
    assert "nodeheal-sim" in demo.stderr + demo.stdout


def test_the_node_agent_ships_no_kubernetes_client_and_no_cloud_sdk(
    installs: dict[str, dict[str, subprocess.CompletedProcess[str]]],
) -> None:
    probe = installs["nodeheal-agent"]["cloud SDKs"]
    assert probe.returncode == 0, probe.stderr
    assert probe.stdout.strip() == ""
