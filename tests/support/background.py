"""CPU-bound work of a few tests, started as soon as collection is done and run niced in the background.

Most of the suite waits on sockets and timers (services starting, probes, hold timers); a handful of tests
are CPU-bound from start to end (mypy over the workspace, building the production environments, the
real-kernel tier's guests). Started early, their work uses the CPU the waiting tests leave idle, and the
test only collects the result when it is reached.

A test module (or a conftest, for the tests below its folder) declares its work with
`job(__file__, name, fn)`; `start_jobs(items)` (from the root conftest's `pytest_collection_finish`) starts
the jobs of the modules whose tests were selected; a test calls `.result()`, which also starts the job when
it was not started yet (e.g. the test is run alone). A job runs its commands through `run` (niced, so the
waiting tests' own bursts of CPU come first); `stop_jobs()` (at the end of the session) kills what is still
running, so a session that ends early (`-x`, Ctrl-C) does not wait for it.

Under pytest-xdist every worker collects the whole suite, so every worker would start every job. The root
conftest hands each worker one directory shared by the whole run (`share(path)`); there each job is run by
one worker only:

- `<job>.lock`: the worker that takes it (`flock`, not waiting) runs the job and holds it until the result is
  written; the others never start it;
- `<job>.result`: the result (or the exception), pickled, written before the lock is let go;
- `<job>.hurry`: left by a worker whose test is waiting, so that the running worker calls the job's `hurry`
  (the kernel tier gives its guests their normal priority back).

A worker whose test needs the result waits for the lock; if it gets the lock and there is no result (the
running worker ended first and killed its job, or died), it runs the job itself."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import pickle
import re
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import IO, Any, Generic, TypeVar

T = TypeVar("T")

NICE = ("nice", "-n", "19")
"""Prefix of a background job's commands: the lowest priority, so the foreground tests (and their service
processes) keep the CPU they ask for."""

POLL_S = 0.5
"""How often a waiting worker looks for the result (short, so Ctrl-C and pytest-timeout get through)."""

_pool: ThreadPoolExecutor | None = None
_jobs: dict[Path, list[Job[Any]]] = {}
_running: set[subprocess.Popen[str]] = set()
_lock = threading.Lock()
_stopping = threading.Event()
_shared: Path | None = None


def share(directory: str | Path | None) -> None:
    """Run every job once for all the processes given the same `directory` (the xdist workers of one run);
    `None`: once for this process."""
    global _shared
    _shared = Path(directory) if directory else None
    if _shared is not None:
        _shared.mkdir(parents=True, exist_ok=True)


@contextlib.contextmanager
def turn(*, alone: bool) -> Iterator[None]:
    """Held around every test when the run is shared (xdist): a test with `alone` runs with no test of
    another worker beside it (they wait for it; it waits for theirs to end); the others run side by side.

    `alone.lock` is held shared by every running test and exclusively by an `alone` test; `gate.lock` is
    taken first by everyone, and kept by an `alone` test while it waits, so that no new test starts
    meanwhile (an exclusive request does not hold back new shared ones by itself)."""
    if _shared is None:
        yield
        return
    with (_shared / "gate.lock").open("ab") as gate, (_shared / "alone.lock").open("ab") as room:
        fcntl.flock(gate, fcntl.LOCK_EX)
        try:
            fcntl.flock(room, fcntl.LOCK_EX if alone else fcntl.LOCK_SH)
        finally:
            fcntl.flock(gate, fcntl.LOCK_UN)
        try:
            yield
        finally:
            fcntl.flock(room, fcntl.LOCK_UN)


def _executor() -> ThreadPoolExecutor:
    global _pool
    if _pool is None:
        _pool = ThreadPoolExecutor(4, thread_name_prefix="background-job")
    return _pool


def spawn(cmd: list[str], **kwargs: Any) -> subprocess.Popen[str]:
    """`subprocess.Popen(cmd, **kwargs)`, tried again when the process could not be created with EFAULT.

    Seen once in a fresh-clone CI run (thirteenth session): `OSError: [Errno 14] Bad address` naming the venv's own
    python, from a spawn in one of the background threads while others spawned too (CPython 3.11 creates the
    child with vfork; other reports of the same error: oraios/serena#1363). It is the machine failing to create a
    process, not the command failing: the command is not run, so running it again changes nothing it would do."""
    for attempt in range(3):
        try:
            return subprocess.Popen(cmd, **kwargs)
        except OSError as exc:
            if exc.errno != errno.EFAULT or attempt == 2:
                raise
            time.sleep(0.1)
    raise AssertionError("unreachable")


def run(
    cmd: list[str], *, timeout: float, cwd: Path | None = None, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """`subprocess.run(cmd, capture_output=True, text=True)` niced, in its own process group (killed with
    its children by `stop_jobs`)."""
    if _stopping.is_set():
        raise RuntimeError("the session is over")
    with spawn(
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


def _pickled_outcome(fn: Callable[[], Any]) -> bytes:
    try:
        outcome: tuple[str, Any] = ("ok", fn())
    except BaseException as exc:  # handed to the test that waits, as a local future would
        outcome = ("error", exc)
    try:
        return pickle.dumps(outcome)
    except Exception as exc:  # an exception that does not pickle: its text
        return pickle.dumps(("error", RuntimeError(f"{outcome[0]}: {outcome[1]!r} (not picklable: {exc})")))


def _unpickled(data: bytes) -> Any:
    kind, value = pickle.loads(data)  # written by this run's own workers
    if kind == "error":
        raise value
    return value


class Job(Generic[T]):
    def __init__(
        self,
        name: str,
        fn: Callable[[], T],
        *,
        hurry: Callable[[], None] | None = None,
        cancel: Callable[[], None] | None = None,
    ) -> None:
        self.name = name
        self._fn = fn
        self._hurry = hurry
        self._cancel = cancel
        self._future: Future[Any] | None = None
        self._held: IO[bytes] | None = None  # the shared lock, while this process runs the job

    def _path(self, suffix: str) -> Path:
        assert _shared is not None
        return _shared / (re.sub(r"[^a-z0-9]+", "-", self.name.lower()) + suffix)

    def _try_lock(self) -> IO[bytes] | None:
        handle = self._path(".lock").open("ab")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.close()
            return None
        return handle

    def start(self) -> None:
        if self._future is not None:
            return
        if _shared is None:
            self._future = _executor().submit(self._fn)
            return
        handle = self._try_lock()
        if handle is None or self._path(".result").exists():  # another worker runs it, or it is done
            if handle is not None:
                handle.close()
            return
        self._held = handle
        self._future = _executor().submit(self._run_shared)

    def _run_shared(self) -> bytes:
        """Run the job for every worker: result written, then the lock let go (killed jobs write nothing)."""
        done = threading.Event()
        if self._hurry is not None:
            threading.Thread(target=self._watch_hurry, args=(done,), daemon=True).start()
        try:
            data = _pickled_outcome(self._fn)
            if not _stopping.is_set():
                part = self._path(f".result.{os.getpid()}")
                part.write_bytes(data)
                part.replace(self._path(".result"))
            return data
        finally:
            done.set()
            assert self._held is not None
            self._held.close()
            self._held = None

    def _watch_hurry(self, done: threading.Event) -> None:
        while not done.wait(POLL_S):
            if self._path(".hurry").exists():
                assert self._hurry is not None
                self._hurry()
                return

    def result(self) -> T:
        """The job's result (its exception re-raised), waiting for it if it is still running."""
        self.start()
        if _shared is None:
            assert self._future is not None
            if self._hurry is not None:
                self._hurry()
            return self._wait(self._future)
        if self._future is not None:  # this worker runs it
            if self._hurry is not None:
                self._hurry()
            return _unpickled(self._wait(self._future))
        self._path(".hurry").touch()
        while True:
            result = self._path(".result")
            if result.exists():
                return _unpickled(result.read_bytes())
            handle = self._try_lock()
            if handle is not None:  # nobody runs it: done (the result is there now) or given up
                if result.exists():
                    handle.close()
                    continue
                self._held = handle
                self._future = _executor().submit(self._run_shared)
                return _unpickled(self._wait(self._future))
            time.sleep(POLL_S)

    @staticmethod
    def _wait(future: Future[Any]) -> Any:
        while not future.done():  # short waits: an interrupt (Ctrl-C, pytest-timeout) gets through
            with contextlib.suppress(TimeoutError):
                future.result(timeout=POLL_S)
        return future.result()


def job(
    declared_in: str,
    name: str,
    fn: Callable[[], T],
    *,
    hurry: Callable[[], None] | None = None,
    cancel: Callable[[], None] | None = None,
) -> Job[T]:
    """Declare a background job of the test module `declared_in` (its `__file__`), or of every test module
    below a conftest's folder when `declared_in` is that conftest.py. `hurry`: called once a test waits for
    the result; `cancel`: called by `stop_jobs` before it kills the commands."""
    declared = Job(name, fn, hurry=hurry, cancel=cancel)
    path = Path(declared_in).resolve()
    _jobs.setdefault(path.parent if path.name == "conftest.py" else path, []).append(declared)
    return declared


def start_jobs(items: Iterable[Any]) -> None:
    """Start the jobs of every module that has a selected test (`items`: pytest's collected items)."""
    selected = {Path(str(item.path)).resolve() for item in items}
    for where, jobs in _jobs.items():
        if any(where == path or where in path.parents for path in selected):
            for declared in jobs:
                declared.start()


def stop_jobs() -> None:
    """Kill the process groups of the jobs' commands still running; later commands are refused."""
    _stopping.set()
    for jobs in _jobs.values():
        for declared in jobs:
            if declared._cancel is not None:
                declared._cancel()
    with _lock:
        procs = list(_running)
    for proc in procs:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    if _pool is not None:
        _pool.shutdown(wait=True, cancel_futures=True)
