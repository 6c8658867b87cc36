"""The real-kernel tier: the guest runs once per session (two qemu processes in parallel), the tests
read what it captured. Skipped, with the reason, only where the tier cannot run (no qemu and no way to
install it, no kernel package reachable, no compiler)."""

from __future__ import annotations

import os
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tests.kernel import guest

PLANS = ("null+kdump,softlockup", "hung,null")
"""Two guests, four crashes: a NULL dereference (with a kdump capture kernel), a soft lockup, a hung
task, and the NULL dereference again on another boot."""


@pytest.fixture(scope="session")
def real_crashes(tmp_path_factory: pytest.TempPathFactory) -> list[guest.PlanResult]:
    if os.environ.get("NODEHEAL_KERNEL_TIER", "on") == "off":
        pytest.skip("NODEHEAL_KERNEL_TIER=off: the real-kernel tier was switched off for this run")
    started = time.monotonic()
    try:
        guest.ensure_tools()
        kernel = guest.ensure_kernel()
        guest.check_config(kernel)
        initrd = guest.build_initramfs(kernel)
    except guest.KernelTierUnavailableError as exc:
        pytest.skip(f"real-kernel tier unavailable here: {exc}")
    prepared = time.monotonic() - started
    workdir = Path(tmp_path_factory.mktemp("kernel-guest"))
    with ThreadPoolExecutor(len(PLANS)) as pool:
        results = list(pool.map(lambda plan: guest.run_plan(kernel, initrd, plan, workdir=workdir), PLANS))
    print(
        f"\nkernel tier: {kernel.release} ({kernel.version}); preparation {prepared:.1f}s; "
        + "; ".join(f"{r.plan}: {r.seconds:.1f}s" for r in results)
    )
    return results
