"""Deterministic kill points for crash tests (issue 14): `NODEHEAL_TEST_KILL_AT=<point>` makes the process
SIGKILL itself when it reaches that point. Unset (production), nothing happens.

Points: `between_intent_and_action` (the intent record is stored, nothing done yet) and
`between_action_and_result` (the side effect happened, no result record yet).
"""

from __future__ import annotations

import logging
import os
import signal
from typing import Final, Literal

ENV: Final = "NODEHEAL_TEST_KILL_AT"
KillPoint = Literal["between_intent_and_action", "between_action_and_result"]

log = logging.getLogger("nodeheal.remediator.testhooks")


def kill_at(point: KillPoint) -> None:
    if os.environ.get(ENV) == point:
        log.warning("test hook: SIGKILL at %s", point)
        os.kill(os.getpid(), signal.SIGKILL)
