"""Clocks the emulated clouds run on: the wall clock for a live demo, a manual clock for tests.

Every emulated world reads time only through a ``Clock`` so that a test can move an event past its
``NotBefore`` with ``ManualClock.advance`` instead of sleeping. Times are always timezone-aware UTC.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Protocol


class Clock(Protocol):
    """Anything with ``now()`` returning an aware UTC datetime."""

    def now(self) -> datetime: ...


class SystemClock:
    """The real wall clock (UTC)."""

    def now(self) -> datetime:
        return datetime.now(UTC)


class ManualClock:
    """A clock that only moves when told to; starts at ``start`` (default: the current UTC second)."""

    def __init__(self, start: datetime | None = None) -> None:
        initial = start if start is not None else datetime.now(UTC).replace(microsecond=0)
        if initial.tzinfo is None:
            raise ValueError(f"ManualClock start must be timezone-aware UTC, got naive {initial.isoformat()}")
        self._now = initial.astimezone(UTC)

    def now(self) -> datetime:
        return self._now

    def advance(self, delta: timedelta) -> datetime:
        """Move forward by ``delta`` (never backwards) and return the new time."""
        if delta < timedelta(0):
            raise ValueError(f"a clock only moves forward; got delta={delta}")
        self._now += delta
        return self._now

    def set(self, when: datetime) -> datetime:
        """Jump to ``when`` (must not be earlier than the current time)."""
        if when.tzinfo is None:
            raise ValueError(f"time must be timezone-aware UTC, got naive {when.isoformat()}")
        target = when.astimezone(UTC)
        if target < self._now:
            raise ValueError(f"a clock only moves forward; now={self._now.isoformat()} target={target.isoformat()}")
        self._now = target
        return self._now
