"""The real-kernel tier: the guests run once per session, the tests read what they captured. Skipped,
with the reason, only where the tier cannot run (no qemu and no way to install it, no kernel package
reachable, no compiler) or when `NODEHEAL_KERNEL_TIER=off`.

The guests are started as soon as collection is done, niced, in the background: under TCG they take
minutes of CPU, and most of the rest of the suite waits on sockets, so they use its idle CPU. When the
tier's test is reached, the guests get their normal priority back and the test waits for what is
left. A session that ends earlier kills them (by their process groups)."""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import pytest

from tests.kernel import guest

PLANS = ("null+kdump,softlockup", "hung,null")
"""Two guests, four crashes: a NULL dereference (with a kdump capture kernel), a soft lockup, a hung
task, and the NULL dereference again on another boot."""
BACKGROUND_NICE = 10

_control = guest.Control()
_pool: ThreadPoolExecutor | None = None
_runs: Future[tuple[str, list[guest.PlanResult]]] | None = None
_workdir: Path | None = None


def _enabled() -> bool:
    return os.environ.get("NODEHEAL_KERNEL_TIER", "on") != "off"


def _prepare_and_run(workdir: Path) -> tuple[str, list[guest.PlanResult]]:
    started = time.monotonic()
    guest.ensure_tools()
    kernel = guest.ensure_kernel()
    guest.check_config(kernel)
    initrd = guest.build_initramfs(kernel)
    prepared = time.monotonic() - started
    with ThreadPoolExecutor(len(PLANS)) as pool:
        results = list(
            pool.map(
                lambda plan: guest.run_plan(
                    kernel, initrd, plan, workdir=workdir, nice=BACKGROUND_NICE, control=_control, timeout_s=1500
                ),
                PLANS,
            )
        )
    note = f"kernel tier: {kernel.release} ({kernel.version}); preparation {prepared:.1f}s; " + "; ".join(
        f"{r.plan}: {r.seconds:.1f}s" for r in results
    )
    return note, results


def _start() -> Future[tuple[str, list[guest.PlanResult]]]:
    global _pool, _runs, _workdir
    if _runs is None:
        _workdir = Path(tempfile.mkdtemp(prefix="nodeheal-kernel-guest-"))
        _pool = ThreadPoolExecutor(1, thread_name_prefix="kernel-tier")
        _runs = _pool.submit(_prepare_and_run, _workdir)
    return _runs


def pytest_collection_finish(session: pytest.Session) -> None:
    if session.config.option.collectonly:
        return
    if _enabled() and any("tests/kernel/" in item.nodeid for item in session.items):
        _start()


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    _control.cancel.set()
    if _pool is not None:
        _pool.shutdown(wait=True)
    if _workdir is not None:
        shutil.rmtree(_workdir, ignore_errors=True)


@pytest.fixture(scope="session")
def real_crashes() -> list[guest.PlanResult]:
    if not _enabled():
        pytest.skip("NODEHEAL_KERNEL_TIER=off: the real-kernel tier was switched off for this run")
    waited = time.monotonic()
    runs = _start()
    _control.hurry()
    try:
        while not runs.done():  # short waits: an interrupt (Ctrl-C, pytest-timeout) gets through
            time.sleep(0.5)
        note, results = runs.result()
    except guest.KernelTierUnavailableError as exc:
        pytest.skip(f"real-kernel tier unavailable here: {exc}")
    print(f"\n{note}; waited {time.monotonic() - waited:.1f}s for them")
    return results
