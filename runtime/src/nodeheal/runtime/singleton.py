"""One process of a service at a time, decided by compare-and-set on one KV key.

A service whose state lives in its memory (the diagnoser: held node_down verdicts, open episodes, a rack's dark
nodes) must never run twice on one durable: a rolling update's surge pod, a pod left running on a partitioned
node after its replacement started, or a `kubectl scale` would split the messages between two states, and what
one acknowledged the other never sees (a node_down held by the process that was then stopped was never
diagnosed). `Singleton.acquire` waits until the key is ours: created when absent or deleted (a clean stop
deletes it), or taken over by compare-and-set when its holder has not renewed it for `ttl_s` — measured on this
process's own monotonic clock from the first time it saw that revision, so clocks of two machines never compare.
A holder of the same `instance` (the pod's name: a container restarted after a SIGKILL or an OOM kill, whose
earlier process is gone with its container) is taken over at once: a crash-looping process is back in seconds,
not after `ttl_s` (episodes that fired and ended inside that wait were never diagnosed). Another pod — a rollout's
surge pod, the replacement of a pod on a partitioned node — waits.
`keep` renews it every `renew_s` by compare-and-set and raises `SingletonLostError` when another process wrote
the key, or when no renewal succeeded for half of `ttl_s` (a waiter takes over only after `ttl_s` of silence): the
holder stops before anyone else can start.
"""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
import time
from dataclasses import dataclass, field

from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError
from nats.js.kv import KeyValue

from nodeheal.runtime.consumer import describe

log = logging.getLogger("nodeheal.runtime.singleton")


class SingletonLostError(RuntimeError):
    """Another process holds the key now (or may): stop consuming at once."""


@dataclass(slots=True)
class Singleton:
    kv: KeyValue
    key: str
    holder: str
    instance: str | None = None
    """the pod (or machine) this process runs in: a holder of the same one is a dead predecessor"""
    ttl_s: float = 30.0
    renew_s: float = 5.0
    revision: int | None = None
    token: str = field(default_factory=lambda: secrets.token_hex(8))
    waiting_for: str | None = None
    """while `acquire` waits: who holds the key (readiness says it)"""

    def _value(self) -> bytes:
        body = {"holder": self.holder, "instance": self.instance, "token": self.token, "renewed_at": time.time()}
        return json.dumps(body).encode()

    async def acquire(self) -> None:
        """Return once the key is ours (waits as long as another process keeps renewing it)."""
        seen: tuple[int, float] | None = None  # (revision, monotonic time it was first seen)
        while True:
            try:
                self.revision = await self.kv.create(self.key, self._value())
                self.waiting_for = None
                log.info("singleton taken", extra={"key": self.key, "holder": self.holder})
                return
            except KeyWrongLastSequenceError:
                pass
            try:
                entry = await self.kv.get(self.key)
            except KeyNotFoundError:
                continue  # released meanwhile: create it
            revision = int(entry.revision or 0)
            try:
                held = json.loads(entry.value or b"{}")
                other, other_instance, other_token = (
                    str(held.get("holder", "?")),
                    held.get("instance"),
                    held.get("token"),
                )
            except (ValueError, AttributeError):
                other, other_instance, other_token = "?", None, None
            now = time.monotonic()
            # (not by pid: in a container the process is often pid 1 each time)
            if self.instance is not None and other_instance == self.instance and other_token != self.token:
                # our own pod's earlier process (a container restart): gone, take it at once
                try:
                    self.revision = await self.kv.update(self.key, self._value(), last=revision)
                except KeyWrongLastSequenceError:
                    continue
                self.waiting_for = None
                log.info("singleton taken over from this pod's earlier process", extra={"previous": other})
                return
            if seen is None or seen[0] != revision:
                if seen is None:
                    log.warning(
                        "another process of this service holds its singleton; waiting until it stops or goes "
                        f"silent for {self.ttl_s:.0f} s",
                        extra={"key": self.key, "holder": other},
                    )
                seen = (revision, now)
                self.waiting_for = other
            elif now - seen[1] >= self.ttl_s:
                try:
                    self.revision = await self.kv.update(self.key, self._value(), last=revision)
                except KeyWrongLastSequenceError:
                    seen = None
                    continue
                self.waiting_for = None
                log.warning(
                    "singleton taken over from a holder silent for its ttl",
                    extra={"key": self.key, "previous": other, "ttl_s": self.ttl_s},
                )
                return
            await asyncio.sleep(min(1.0, self.renew_s))

    async def keep(self) -> None:
        """Renew until lost: raises `SingletonLostError` (never returns)."""
        last_ok = time.monotonic()
        while True:
            await asyncio.sleep(self.renew_s)
            try:
                self.revision = await self.kv.update(self.key, self._value(), last=self.revision)
                last_ok = time.monotonic()
            except KeyWrongLastSequenceError as exc:
                raise SingletonLostError(f"another process took the singleton {self.key}") from exc
            except Exception as exc:
                silent = time.monotonic() - last_ok
                if silent >= self.ttl_s / 2:
                    raise SingletonLostError(
                        f"the singleton {self.key} was not renewed for {silent:.0f} s ({describe(exc)}); "
                        "another process may take it over"
                    ) from exc
                log.warning("singleton renewal failed; retrying", extra={"key": self.key, "error": describe(exc)})

    async def release(self) -> None:
        """Give the key back (a clean stop): the next process starts at once."""
        if self.revision is None:
            return
        try:
            await self.kv.delete(self.key, last=self.revision)
        except Exception as exc:  # lost or expired: nothing to give back
            log.info("singleton not released", extra={"key": self.key, "error": describe(exc)})
        self.revision = None
