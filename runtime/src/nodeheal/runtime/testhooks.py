"""Deterministic crash points for the kill tests: `NODEHEAL_TEST_KILL_AT=<point>` makes the process
SIGKILL itself the first time it reaches `kill_point("<point>")`. Without the variable (production)
`kill_point` is a set lookup and nothing else."""

from __future__ import annotations

import os
import signal

ENV = "NODEHEAL_TEST_KILL_AT"
_POINTS = frozenset(p.strip() for p in os.environ.get(ENV, "").split(",") if p.strip())


def kill_point(name: str) -> None:
    if name in _POINTS:
        os.kill(os.getpid(), signal.SIGKILL)
