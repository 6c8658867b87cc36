"""Dedup of cloud-event transitions (reference §6.4), pure.

Transition key `(cloud, provider_event_id, phase)`: a transition already seen is a duplicate.
Entity key `(cloud, provider_event_id)`: once an entity has reached a terminal phase, a later
non-terminal report (a slower channel: CMS push racing the API poll) is stale and never overwrites
it. Bounded: the least recently touched entities are forgotten first.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Literal

from nodeheal.schemas.cloud import TERMINAL_PHASES, CloudSystemEvent

Verdict = Literal["new", "duplicate", "stale"]


@dataclass(slots=True)
class _Entity:
    phases: set[str] = field(default_factory=set)
    terminal: str | None = None


@dataclass(slots=True)
class TransitionLedger:
    max_entities: int = 200_000
    _entities: OrderedDict[tuple[str, str], _Entity] = field(default_factory=OrderedDict)

    def verdict(self, *, cloud: str, provider_event_id: str, phase: str) -> Verdict:
        """What `record` would say, without recording."""
        entity = self._entities.get((cloud, provider_event_id))
        if entity is None:
            return "new"
        if phase in entity.phases:
            return "duplicate"
        if entity.terminal is not None and phase not in TERMINAL_PHASES:
            return "stale"
        return "new"

    def record(self, *, cloud: str, provider_event_id: str, phase: str) -> Verdict:
        verdict = self.verdict(cloud=cloud, provider_event_id=provider_event_id, phase=phase)
        key = (cloud, provider_event_id)
        entity = self._entities.get(key)
        if entity is None:
            entity = self._entities[key] = _Entity()
            while len(self._entities) > self.max_entities:
                self._entities.popitem(last=False)
        else:
            self._entities.move_to_end(key)
        if verdict == "new":
            entity.phases.add(phase)
            if phase in TERMINAL_PHASES and entity.terminal is None:
                entity.terminal = phase
        return verdict

    def admit(self, event: CloudSystemEvent) -> Verdict:
        return self.record(cloud=event.cloud, provider_event_id=event.provider_event_id, phase=event.phase)

    def open_events(self, cloud: str) -> list[str]:
        """Event ids of `cloud` seen in a non-terminal phase and not yet closed (for reconciliation)."""
        return [eid for (c, eid), e in self._entities.items() if c == cloud and e.terminal is None]

    def __len__(self) -> int:
        return len(self._entities)
