"""CPU-bound work of a few tests, started as soon as collection is done and run niced in the background.

Most of the suite waits on sockets and timers (services starting, probes, hold timers); a handful of tests
are CPU-bound from start to end (mypy over the workspace, building the production environments). Started
early, their work uses the CPU the waiting tests leave idle, and the test only collects the result when it
is reached. The same pattern as the real-kernel tier (tests/kernel/conftest.py).

A test module declares its work with `job(__file__, name, fn)`; `start_jobs(items)` (from the root
conftest's `pytest_collection_finish`) starts the jobs of the modules whose tests were selected; a test
calls `.result()`, which also starts the job when it was not started yet (e.g. the test is run alone).
A job runs its commands through `run` (niced, so the waiting tests' own bursts of CPU come first);
`stop_jobs()` (at the end of the session) kills what is still running, so a session that ends early
(`-x`, Ctrl-C) does not wait for it."""

from __future__ import annotations

import os
import signal
import subprocess
import threading
from collections.abc import Callable, Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any, Generic, TypeVar

T = TypeVar("T")

NICE = ("nice", "-n", "19")
"""Prefix of a background job's commands: the lowest priority, so the foreground tests (and their service
processes) keep the CPU they ask for."""

_pool: ThreadPoolExecutor | None = None
_jobs: dict[Path, list[Job[Any]]] = {}
_running: set[subprocess.Popen[str]] = set()
_lock = threading.Lock()
_stopping = threading.Event()


def _executor() -> ThreadPoolExecutor:
    global _pool
    if _pool is None:
        _pool = ThreadPoolExecutor(4, thread_name_prefix="background-job")
    return _pool


def run(
    cmd: list[str], *, timeout: float, cwd: Path | None = None, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """`subprocess.run(cmd, capture_output=True, text=True)` niced, in its own process group (killed with
    its children by `stop_jobs`)."""
    if _stopping.is_set():
        raise RuntimeError("the session is over")
    with subprocess.Popen(
        [*NICE, *cmd], cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        start_new_session=True,
    ) as proc:  # fmt: skip
        with _lock:
            _running.add(proc)
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            out, err = proc.communicate()
            err += f"\n(killed after {timeout:g} s)"
        finally:
            with _lock:
                _running.discard(proc)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


class Job(Generic[T]):
    def __init__(self, name: str, fn: Callable[[], T]) -> None:
        self.name = name
        self._fn = fn
        self._future: Future[T] | None = None

    def start(self) -> None:
        if self._future is None:
            self._future = _executor().submit(self._fn)

    def result(self) -> T:
        """The job's result (its exception re-raised), waiting for it if it is still running."""
        self.start()
        assert self._future is not None
        return self._future.result()


def job(module_file: str, name: str, fn: Callable[[], T]) -> Job[T]:
    """Declare a background job of the test module `module_file` (its `__file__`)."""
    declared = Job(name, fn)
    _jobs.setdefault(Path(module_file).resolve(), []).append(declared)
    return declared


def start_jobs(items: Iterable[Any]) -> None:
    """Start the jobs of every module that has a selected test (`items`: pytest's collected items)."""
    selected = {Path(str(item.path)).resolve() for item in items}
    for module, jobs in _jobs.items():
        if module in selected:
            for declared in jobs:
                declared.start()


def stop_jobs() -> None:
    """Kill the process groups of the jobs' commands still running; later commands are refused."""
    _stopping.set()
    with _lock:
        procs = list(_running)
    for proc in procs:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    if _pool is not None:
        _pool.shutdown(wait=True, cancel_futures=True)
