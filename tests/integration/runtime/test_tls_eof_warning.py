"""A TLS connection whose nats-server is SIGKILLed: asyncio logs "returning true from eof_received() has
no effect when using ssl" for it (the chaos demo printed the line 303 times on the operator's terminal).
`runtime.connect` drops that one line and nothing else asyncio says."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import pytest

from nodeheal.runtime.connect import connect
from nodeheal.runtime.settings import NatsSettings
from nodeheal.sim.bench.secure import self_signed_tls
from nodeheal.sim.embedded import EmbeddedNats

pytestmark = pytest.mark.nats


class _Kept(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.name == "asyncio":
            self.messages.append(record.getMessage())


async def test_a_killed_tls_server_leaves_no_eof_received_noise_and_other_asyncio_lines_pass(tmp_path: Path) -> None:
    ca, cert, key = self_signed_tls(tmp_path)
    conf = tmp_path / "nats.conf"
    conf.write_text(f'tls {{\n  cert_file: "{cert}"\n  key_file: "{key}"\n}}\n')
    kept = _Kept()
    logging.getLogger().addHandler(kept)
    try:
        with EmbeddedNats(config_file=str(conf), log_file=str(tmp_path / "nats.log")) as server:
            clients = [
                await connect(NatsSettings(url=server.url, tls_ca_file=str(ca)), name=f"tls-{i}") for i in range(5)
            ]
            for nc in clients:
                await nc.flush()
            server.kill()
            await asyncio.sleep(1.0)  # the clients see EOF and start reconnecting
            logging.getLogger("asyncio").warning("some other asyncio warning")
            for nc in clients:
                await nc.close()
    finally:
        logging.getLogger().removeHandler(kept)
    assert not [m for m in kept.messages if "eof_received" in m], kept.messages
    assert "some other asyncio warning" in kept.messages
