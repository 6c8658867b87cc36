"""The real-kernel tier: the guests run once per session, the tests read what they captured. Skipped,
with the reason, only where the tier cannot run (no qemu and no way to install it, no kernel package
reachable, no compiler) or when `NODEHEAL_KERNEL_TIER=off`.

The guests are started as soon as collection is done, niced, in the background (a job of
tests/support/background.py: under pytest-xdist one worker runs them for the whole run): under TCG they
take minutes of CPU, and most of the rest of the suite waits on sockets, so they use its idle CPU. When the
tier's test is reached, the guests get their normal priority back and the test waits for what is left. A
session that ends earlier kills them (by their process groups)."""

from __future__ import annotations

import os
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tests.kernel import guest
from tests.support import background

PLANS = ("null+kdump,softlockup", "hung,null")
"""Two guests, four crashes: a NULL dereference (with a kdump capture kernel), a soft lockup, a hung
task, and the NULL dereference again on another boot."""
BACKGROUND_NICE = 10

_control = guest.Control()


def _enabled() -> bool:
    return os.environ.get("NODEHEAL_KERNEL_TIER", "on") != "off"


def _prepare_and_run() -> tuple[str, list[guest.PlanResult]]:
    started = time.monotonic()
    with guest.cache_lock():  # one preparation at a time on this machine (the cache is shared)
        guest.ensure_tools()
        kernel = guest.ensure_kernel()
        guest.check_config(kernel)
        initrd = guest.build_initramfs(kernel)
    prepared = time.monotonic() - started
    with (
        tempfile.TemporaryDirectory(prefix="nodeheal-kernel-guest-") as workdir,
        ThreadPoolExecutor(len(PLANS)) as pool,
    ):
        results = list(
            pool.map(
                lambda plan: guest.run_plan(
                    kernel, initrd, plan, workdir=Path(workdir), nice=BACKGROUND_NICE, control=_control, timeout_s=1500
                ),
                PLANS,
            )
        )
    note = f"kernel tier: {kernel.release} ({kernel.version}); preparation {prepared:.1f}s; " + "; ".join(
        f"{r.plan}: {r.seconds:.1f}s" for r in results
    )
    return note, results


def _run_if_enabled() -> tuple[str, list[guest.PlanResult]] | None:
    return _prepare_and_run() if _enabled() else None


GUESTS = background.job(__file__, "kernel tier", _run_if_enabled, hurry=_control.hurry, cancel=_control.cancel.set)
"""Started for every selected test below this folder (tests/support/background.py)."""


@pytest.fixture(scope="session")
def real_crashes() -> list[guest.PlanResult]:
    if not _enabled():
        pytest.skip("NODEHEAL_KERNEL_TIER=off: the real-kernel tier was switched off for this run")
    waited = time.monotonic()
    try:
        ran = GUESTS.result()
    except guest.KernelTierUnavailableError as exc:
        pytest.skip(f"real-kernel tier unavailable here: {exc}")
    assert ran is not None
    note, results = ran
    print(f"\n{note}; waited {time.monotonic() - waited:.1f}s for them")
    return results
