"""The end of a KV watch's initial values, confirmed by the server.

nats-py sends its end-of-initial-values marker (`None`) when the watch consumer's info reports nothing pending
and the client has received nothing yet. Under load the server can answer that info request before the records
it already counts as sent reach the client: the marker then comes *before* them, and a reader that stops (or
declares itself loaded) at the marker sees a bucket that is not empty as empty. It was seen once in CI: a prober
that declared its inventory loaded with no node in it. Here the server's own count decides: if it has sent a
record the client has not yet handed over, the initial values end with that record (its `delta`, the number of
records still pending behind it, is 0)."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator

from nats.js.kv import KeyValue

log = logging.getLogger("nodeheal.runtime.kvwatch")


async def caught_up(watcher: KeyValue.KeyWatcher, handed_over: int) -> bool:
    """Whether the client has handed over (`handed_over`: how many records it has) every record the server has
    sent this watch: the consumer's delivered count, not its stream position (on a pattern that matches nothing
    the position starts at the stream's end with nothing sent)."""
    sub = getattr(watcher, "_sub", None)  # nats-py keeps the watch's push subscription here
    if sub is None:
        return True
    try:
        info = await sub.consumer_info()
    except Exception as exc:  # no answer: keep nats-py's word rather than never being loaded
        log.warning("could not confirm the end of a KV watch's initial values", extra={"error": str(exc)})
        return True
    sent = info.delivered.consumer_seq if info.delivered is not None else 0
    return (sent or 0) <= handed_over


class Loaded:
    """The place in a watch where its initial values end (`follow`)."""

    def __repr__(self) -> str:
        return "LOADED"


LOADED = Loaded()


async def follow(watcher: KeyValue.KeyWatcher) -> AsyncIterator[KeyValue.Entry | Loaded]:
    """Every record of a watch, with `LOADED` once, right after the last of the records it held when it started
    (confirmed by the server: `caught_up`). Delete markers are records too: a watch made with nats-py's
    `ignore_deletes=True` drops them before they are handed over, and would never be confirmed — do not use one."""
    handed_over = 0
    loaded = False
    async for entry in watcher:
        if entry is None:  # nats-py's end-of-initial-values marker: believed only when the server agrees
            if not loaded and await caught_up(watcher, handed_over):
                loaded = True
                yield LOADED
            continue
        handed_over += 1
        yield entry
        if not loaded and entry.delta == 0:  # nothing pending behind it on the server
            loaded = True
            yield LOADED


async def initial_values(watcher: KeyValue.KeyWatcher) -> AsyncIterator[KeyValue.Entry]:
    """The records a watch holds when it starts, each once, ending after the last (`follow`'s `LOADED`; the watch
    stays open: stop it)."""
    async for item in follow(watcher):
        if isinstance(item, Loaded):
            return
        yield item


async def last_values(kv: KeyValue, pattern: str) -> list[KeyValue.Entry]:
    """The last value of every key of `kv` matching `pattern` (keys whose last entry is a delete or purge left
    out): one KV watch's initial values, instead of a listing and a `get` per key (at 50,000 keys the gets took
    25 s, the watch 3 s: docs/BENCHMARKS.md, `nodeheal bench inventory`)."""
    watcher = await kv.watch(pattern)
    try:
        return [e async for e in initial_values(watcher) if e.operation is None and e.value]
    finally:
        await watcher.stop()  # type: ignore[no-untyped-call]
