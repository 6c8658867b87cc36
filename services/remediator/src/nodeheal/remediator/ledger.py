"""The shared disruption ledger: which nodes hold a blast-radius slot, and recent disruptive starts.

One key (`ledger.disruptions`) in `nodeheal-control`, changed only by compare-and-set, so two replicas
can never both take the last slot of a budget: the policy is computed on what was read, and the write
with `last=revision` decides. A slot of a crashed holder expires at its `until` (conservative: the
budget stays used a little longer, never shorter): it no longer counts, and stays in the ledger until
the maintenance loop gives it back with an AUDIT record (`Remediator.expire_slot`).

Taking a slot gives up after `attempts` conflicts (fail-closed: the step is blocked and retried later).
Giving one back or re-tagging it (`release`, `retag`) does not: a lost release keeps a slot held for
`SLOT_HOLD_S`, a lost re-tag leaves a host event's node cordoned as long. They retry with jittered
backoff until the write lands or the slot is provably gone or another's, for up to `settle_deadline_s`;
a write still not landed then is logged as an error and counted in `nodeheal_ledger_writes_lost_total`.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import time
from collections.abc import Callable
from dataclasses import replace
from datetime import datetime, timedelta

import nats.errors
from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError, ServiceUnavailableError
from nats.js.kv import KeyValue

from nodeheal.remediator.policy import Slot
from nodeheal.runtime.metrics import pipeline_metrics
from nodeheal.schemas.audit import PolicyCheck

LEDGER_KEY = "ledger.disruptions"

log = logging.getLogger("nodeheal.remediator.ledger")

_TRANSIENT = (KeyWrongLastSequenceError, nats.errors.TimeoutError, ServiceUnavailableError, asyncio.TimeoutError)
"""A write that loses the compare-and-set race, or a request JetStream did not answer in time: try again."""


def _dump(slots: list[Slot], starts: list[datetime]) -> bytes:
    return json.dumps(
        {
            "slots": [
                {
                    "node": s.node,
                    "zone": s.zone,
                    "rack": s.rack,
                    "node_pool": s.node_pool,
                    "action_id": s.action_id,
                    "holder": s.holder,
                    "until": s.until.isoformat(),
                    "episode": s.episode,
                }
                for s in slots
            ],
            "starts": [t.isoformat() for t in starts],
        }
    ).encode()


def _load(raw: bytes | None) -> tuple[list[Slot], list[datetime]]:
    if not raw:
        return [], []
    data = json.loads(raw)
    slots = [
        Slot(
            node=s["node"],
            zone=s.get("zone"),
            rack=s.get("rack"),
            node_pool=s.get("node_pool"),
            action_id=s["action_id"],
            holder=s["holder"],
            until=datetime.fromisoformat(s["until"]),
            episode=s.get("episode"),
        )
        for s in data.get("slots", [])
    ]
    return slots, [datetime.fromisoformat(t) for t in data.get("starts", [])]


Decide = Callable[[list[Slot], list[datetime]], tuple[list[PolicyCheck], list[Slot], list[datetime]] | None]


class Ledger:
    def __init__(
        self,
        kv: KeyValue,
        *,
        attempts: int = 20,
        settle_deadline_s: float = 120.0,
        backoff_s: tuple[float, float] = (0.005, 0.5),
    ) -> None:
        """`attempts`: CAS conflicts a `transact` (taking a slot) tolerates; `settle_deadline_s`: how long a
        release or re-tag keeps trying; `backoff_s`: (first, largest) ceiling of its jittered backoff."""
        self.kv = kv
        self.attempts = attempts
        self.settle_deadline_s = settle_deadline_s
        self.backoff_s = backoff_s

    async def read(self) -> tuple[list[Slot], list[datetime], int]:
        try:
            entry = await self.kv.get(LEDGER_KEY)
        except KeyNotFoundError:
            return [], [], 0
        slots, starts = _load(entry.value)
        return slots, starts, entry.revision or 0

    async def transact(self, decide: Decide) -> list[PolicyCheck]:
        """Read, let `decide` compute the new state (or None: nothing to write), write with CAS; retry on conflict."""
        last_checks: list[PolicyCheck] = []
        for _ in range(self.attempts):
            slots, starts, revision = await self.read()
            result = decide(slots, starts)
            if result is None:
                return last_checks
            checks, new_slots, new_starts = result
            last_checks = checks
            if not all(c.passed for c in checks):
                return checks
            try:
                if revision == 0:
                    await self.kv.create(LEDGER_KEY, _dump(new_slots, new_starts))
                else:
                    await self.kv.update(LEDGER_KEY, _dump(new_slots, new_starts), last=revision)
                return checks
            except KeyWrongLastSequenceError:
                continue
        return [PolicyCheck(name="ledger", passed=False, detail=f"ledger contended: {self.attempts} CAS conflicts")]

    async def settle(self, decide: Decide, *, op: str, node: str) -> bool:
        """Like `transact`, for a write that must not be given up on a conflict (a release, a re-tag): read,
        decide, write with CAS, and on a lost race or an unanswered request back off (full jitter, the
        ceiling doubling from `backoff_s[0]` to `backoff_s[1]`) and do it again, until the write lands or
        `decide` says there is nothing to write (the slot is gone, or another's). True when settled; False
        (logged, counted in `nodeheal_ledger_writes_lost_total{op}`) after `settle_deadline_s`."""
        deadline = time.monotonic() + self.settle_deadline_s
        ceiling, largest = self.backoff_s
        tries = 0
        last: BaseException | None = None
        while True:
            tries += 1
            try:
                slots, starts, revision = await self.read()
                result = decide(slots, starts)
                if result is None:
                    return True
                _, new_slots, new_starts = result
                if revision == 0:
                    await self.kv.create(LEDGER_KEY, _dump(new_slots, new_starts))
                else:
                    await self.kv.update(LEDGER_KEY, _dump(new_slots, new_starts), last=revision)
                return True
            except _TRANSIENT as exc:
                last = exc
            if time.monotonic() >= deadline:
                break
            await asyncio.sleep(random.uniform(0, ceiling))
            ceiling = min(largest, ceiling * 2)
        pipeline_metrics().ledger_writes_lost.labels(op=op).inc()
        log.error(
            "ledger %s of %s's budget slot did not land after %d tries in %.0fs (last: %r): the slot stays as it "
            "was until it expires (SLOT_HOLD_S) and the maintenance loop gives it back; check the NATS server "
            "and the %s key of the control bucket",
            op,
            node,
            tries,
            self.settle_deadline_s,
            last,
            LEDGER_KEY,
            extra={"node": node},
        )
        return False

    async def slot_of(self, node: str) -> Slot | None:
        slots, _, _ = await self.read()
        return next((s for s in slots if s.node == node), None)

    async def retag(self, *, node: str, episode: str, until: datetime) -> bool:
        """The node's slot now belongs to `episode` (a hand-over to the cloud maintenance), held until `until`.
        Retried until it lands (`settle`); True unless it never did."""

        def decide(
            slots: list[Slot], starts: list[datetime]
        ) -> tuple[list[PolicyCheck], list[Slot], list[datetime]] | None:
            mine = next((s for s in slots if s.node == node), None)
            if mine is None or (mine.episode == episode and mine.until >= until):
                return None
            new = replace(mine, episode=episode, until=max(until, mine.until))
            return [], [new if s.node == node else s for s in slots], starts

        return await self.settle(decide, op="retag", node=node)

    async def release(self, *, node: str, now: datetime, action_id: str | None = None) -> bool:
        """Give the node's slot back; with `action_id`, only the slot that action took (one the node's slot
        has become since — another action's — stays). Retried until it lands (`settle`): True unless it
        never did."""

        def decide(
            slots: list[Slot], starts: list[datetime]
        ) -> tuple[list[PolicyCheck], list[Slot], list[datetime]] | None:
            def mine(s: Slot) -> bool:
                return s.node == node and (action_id is None or s.action_id == action_id)

            if not any(mine(s) for s in slots):
                return None
            # other slots stay, expired ones too: those are given back with a record (`expire_slot`)
            keep = [s for s in slots if not mine(s)]
            return [], keep, [t for t in starts if now - t < timedelta(seconds=60)]

        return await self.settle(decide, op="release", node=node)
