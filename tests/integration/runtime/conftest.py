"""Fixtures of the runtime's integration tests."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

import pytest
from nats.js.client import JetStreamContext
from nats.js.errors import NotFoundError
from nats.js.kv import KeyValue

from nodeheal.runtime.settings import NatsSettings
from tests.support.broker import ScratchBucket


@pytest.fixture
async def scratch_bucket(js: JetStreamContext, nats_settings: NatsSettings) -> AsyncIterator[ScratchBucket]:
    """Makes a KV bucket (history 1) under this test's unique prefix, `<prefix>-<suffix>`; every bucket made is
    deleted after the test (one the test deleted itself is passed over)."""
    made: list[str] = []

    async def make(suffix: str) -> KeyValue:
        name = f"{nats_settings.bucket_prefix}-{suffix}"
        kv = await js.create_key_value(bucket=name, history=1)
        made.append(name)
        return kv

    yield make
    for name in made:
        with contextlib.suppress(NotFoundError):
            await js.delete_key_value(name)
