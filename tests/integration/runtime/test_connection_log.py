"""A service's NATS connection through a server restart says so in two log lines — one when it drops, one when
it is back — not a traceback per failed reconnect attempt (nats-py's default: `nats: encountered error` with the
exception, every 0.5 s while the server is away, in every service process); and the service's own close is no
disconnect to report."""

from __future__ import annotations

import asyncio
import logging

import pytest

from nodeheal.runtime.connect import connect
from nodeheal.runtime.service import make_broker
from nodeheal.runtime.settings import NatsSettings
from nodeheal.sim.embedded import EmbeddedNats

pytestmark = pytest.mark.nats


@pytest.mark.parametrize("opened_by", ["connect", "faststream"])
async def test_a_server_restart_is_two_lines_in_a_services_log(
    caplog: pytest.LogCaptureFixture, opened_by: str
) -> None:
    """`connect()` (the services' own connections) and `make_broker` (faststream's, the consumers')."""
    server = EmbeddedNats().start()
    port, store = server.port, server.store_dir
    caplog.set_level(logging.INFO)
    broker = None
    if opened_by == "connect":
        nc = await connect(NatsSettings(url=server.url), name="svc-under-test")
    else:
        broker = make_broker(NatsSettings(url=server.url), name="svc-under-test")
        nc = await broker.connect()
    again: EmbeddedNats | None = None
    try:
        server.stop()
        await asyncio.sleep(3.0)  # six reconnect attempts fail
        again = EmbeddedNats(port=port, store_dir=store).start()
        for _ in range(100):
            if nc.is_connected:
                break
            await asyncio.sleep(0.1)
        assert nc.is_connected
    finally:
        if broker is not None:
            await broker.stop()
        else:
            await nc.close()
        if again is not None:
            again.stop()
    said = [r for r in caplog.records if r.name.startswith(("nats", "nodeheal.runtime.connect"))]
    lines = [(r.name, r.levelname, r.getMessage()) for r in said]
    assert [m for _, _, m in lines if "svc-under-test" in m and "disconnected" in m] != []
    assert len([m for _, _, m in lines if "disconnected" in m]) == 1, lines  # not again at the close
    assert len([m for _, _, m in lines if "reconnected" in m]) == 1, lines
    assert not [r for r in said if r.exc_info], lines  # no traceback
    assert len(said) <= 4, lines  # dropped, one line per distinct error while away, back
