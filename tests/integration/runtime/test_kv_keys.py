"""`kv_keys` lists a bucket's keys from the stream's subject index (not nats-py's `KeyValue.keys()`,
whose ordered consumer can report "no keys" while its first message is still in flight: a diagnoser
restart in CI then read back no crash history). On a real nats-server."""

from __future__ import annotations

import asyncio

import pytest
from nats.js.client import JetStreamContext
from nats.js.errors import NotFoundError

from nodeheal.runtime.jetstream import kv_keys
from nodeheal.runtime.settings import NatsSettings
from tests.support.broker import ScratchBucket, publish_all

pytestmark = pytest.mark.nats


async def test_lists_the_keys_of_a_pattern_including_deleted_ones(
    js: JetStreamContext, nats_settings: NatsSettings, scratch_bucket: ScratchBucket
) -> None:
    kv = await scratch_bucket("keys")
    assert await kv_keys(kv) == []  # an empty bucket: no keys, no error
    for key in ("node.c1.a", "node.c1.b", "node.c2.a", "crash.c1.a"):
        await kv.put(key, b"{}")
    await kv.put("node.c1.a", b'{"again": 1}')  # a key written twice is listed once
    await kv.delete("node.c1.b")
    assert await kv_keys(kv, pattern="node.>") == ["node.c1.a", "node.c1.b", "node.c2.a"]
    assert await kv_keys(kv, pattern="node.c1.*") == ["node.c1.a", "node.c1.b"]
    assert await kv_keys(kv, pattern="crash.>") == ["crash.c1.a"]
    await js.delete_key_value(f"{nats_settings.bucket_prefix}-keys")
    with pytest.raises(NotFoundError):
        await kv_keys(kv)


async def test_many_keys_are_all_listed_at_once_after_their_writes(
    js: JetStreamContext, nats_settings: NatsSettings, scratch_bucket: ScratchBucket
) -> None:
    """Every key written is listed right after its PubAck, read by many listings at the same time
    (what a loaded start looks like): never fewer."""
    kv = await scratch_bucket("many")
    bucket_subject = f"$KV.{nats_settings.bucket_prefix}-many."
    await publish_all(js, [(f"{bucket_subject}crash.c.n{i:04d}", b"[]") for i in range(2000)])
    listings = await asyncio.gather(*(kv_keys(kv, pattern="crash.>") for _ in range(20)))
    assert all(len(keys) == 2000 for keys in listings)
    assert listings[0] == [f"crash.c.n{i:04d}" for i in range(2000)]
