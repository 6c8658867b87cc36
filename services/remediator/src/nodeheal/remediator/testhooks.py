"""Deterministic kill points for crash tests (issue 14): `NODEHEAL_TEST_KILL_AT=<point>` makes the process
SIGKILL itself when it reaches that point. Unset (production), nothing happens.

Points: `between_intent_and_action` (the intent record is stored, nothing done yet),
`between_action_and_result` (the side effect happened, no result record yet) and
`between_storm_key_and_record` (a storm's key in nodeheal-control says "escalated", its AUDIT record is not
sent yet).
"""

from __future__ import annotations

import logging
import os
import signal
from typing import Final, Literal

ENV: Final = "NODEHEAL_TEST_KILL_AT"
KillPoint = Literal["between_intent_and_action", "between_action_and_result", "between_storm_key_and_record"]

log = logging.getLogger("nodeheal.remediator.testhooks")


def kill_at(point: KillPoint) -> None:
    if os.environ.get(ENV) == point:
        log.warning("test hook: SIGKILL at %s", point)
        os.kill(os.getpid(), signal.SIGKILL)
