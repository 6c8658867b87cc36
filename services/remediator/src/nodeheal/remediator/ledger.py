"""The shared disruption ledger: which nodes hold a blast-radius slot, and recent disruptive starts.

One key (`ledger.disruptions`) in `nodeheal-control`, changed only by compare-and-set, so two replicas
can never both take the last slot of a budget: the policy is computed on what was read, and the write
with `last=revision` decides. A slot of a crashed holder expires at its `until` (conservative: the
budget stays used a little longer, never shorter): it no longer counts, and stays in the ledger until
the maintenance loop gives it back with an AUDIT record (`Remediator.expire_slot`).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import replace
from datetime import datetime, timedelta

from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError
from nats.js.kv import KeyValue

from nodeheal.remediator.policy import Slot
from nodeheal.schemas.audit import PolicyCheck

LEDGER_KEY = "ledger.disruptions"


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
    def __init__(self, kv: KeyValue, *, attempts: int = 20) -> None:
        self.kv = kv
        self.attempts = attempts

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

    async def slot_of(self, node: str) -> Slot | None:
        slots, _, _ = await self.read()
        return next((s for s in slots if s.node == node), None)

    async def retag(self, *, node: str, episode: str, until: datetime) -> None:
        """The node's slot now belongs to `episode` (a hand-over to the cloud maintenance), held until `until`."""

        def decide(
            slots: list[Slot], starts: list[datetime]
        ) -> tuple[list[PolicyCheck], list[Slot], list[datetime]] | None:
            mine = next((s for s in slots if s.node == node), None)
            if mine is None or (mine.episode == episode and mine.until >= until):
                return None
            new = replace(mine, episode=episode, until=max(until, mine.until))
            return [], [new if s.node == node else s for s in slots], starts

        await self.transact(decide)

    async def release(self, *, node: str, now: datetime) -> None:
        def decide(
            slots: list[Slot], starts: list[datetime]
        ) -> tuple[list[PolicyCheck], list[Slot], list[datetime]] | None:
            if not any(s.node == node for s in slots):
                return None
            # other nodes' slots stay, expired ones too: those are given back with a record (`expire_slot`)
            keep = [s for s in slots if s.node != node]
            return [], keep, [t for t in starts if now - t < timedelta(seconds=60)]

        await self.transact(decide)
