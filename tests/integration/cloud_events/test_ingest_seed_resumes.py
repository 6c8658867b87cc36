"""The ingest's ledger seed reads CLOUD to its end at start; a nats-server that dies and comes back in the
middle of it is waited out and the read goes on after the last event recorded: every stored transition is
in the ledger (so none is published again). Before, the fetch that timed out during the restart was taken
for the end of the stream and the start went on with part of the ledger.

The server runs with the deployed per-role authorization and the seed reads under the `ingest` role, as deployed (the
admin provisions and stands in for the central ingest's earlier publishes); no permission violation logged."""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from nodeheal.cloud_events.ingest.sink import seed_ledger
from nodeheal.cloud_events.normalize import TransitionLedger
from nodeheal.runtime.connect import connect
from nodeheal.runtime.provision import apply_topology
from nodeheal.runtime.settings import NatsSettings
from nodeheal.runtime.startup import StartWait, start_wait
from nodeheal.schemas.subjects import cloud_subject
from nodeheal.sim.embedded import EmbeddedNats
from tests.integration.deploy.natsauth_loader import role_nats, violations, write_auth
from tests.support.broker import publish_all

pytestmark = pytest.mark.nats

EVENTS = 6000  # more than the read asks for ahead (two batches of 2,000): the rest comes after the restart


async def test_a_seed_cut_by_a_server_restart_records_every_stored_transition(tmp_path: Path) -> None:
    write_auth(tmp_path, "ingest")
    server = EmbeddedNats(
        store_dir=str(tmp_path / "store"), config_file=str(tmp_path / "auth.conf"), log_file=str(tmp_path / "nats.log")
    ).start()
    recorded: list[str] = []

    class RestartingLedger(TransitionLedger):
        """The real ledger; the server restarts while the 500th event is recorded."""

        def record(
            self, *, cloud: str, provider_event_id: str, phase: str, not_before: Any = None, channel: Any = None
        ):  # type: ignore[no-untyped-def]
            recorded.append(provider_event_id)
            if len(recorded) == 500:
                server.stop()  # SIGTERM: a SIGKILL may lose the newest stored messages (sync_interval)
                server.start()
            return super().record(
                cloud=cloud, provider_event_id=provider_event_id, phase=phase, not_before=not_before, channel=channel
            )

    try:
        nats = NatsSettings(url=server.url, creds_file=str(tmp_path / "admin.creds"))
        admin = await connect(nats, name="pytest-admin")
        nc = await connect(role_nats(tmp_path, server.url, "ingest"), name="cloud-events-ingest")
        try:
            await apply_topology(admin.jetstream(), nats.topology())
            js = nc.jetstream()
            bodies = [
                json.dumps({"cloud": "alibaba", "provider_event_id": f"e-{i}", "phase": "scheduled"}).encode()
                for i in range(EVENTS)
            ]
            await publish_all(
                admin.jetstream(),
                [(cloud_subject("c1", f"n{i % 9}", prefix=nats.prefix), b) for i, b in enumerate(bodies)],
            )
            ledger = RestartingLedger()
            with start_wait(StartWait(service="cloud-events-ingest", patience_s=90.0)):
                count = await seed_ledger(
                    js,
                    stream=f"{nats.stream_prefix}CLOUD",
                    prefix=nats.prefix,
                    ledger=ledger,
                    lookback=timedelta(hours=1),
                )
        finally:
            await nc.close()
            await admin.close()
    finally:
        server.stop()
    assert violations(tmp_path) == []
    assert recorded == [f"e-{i}" for i in range(EVENTS)]  # each once, in order
    assert count == EVENTS and len(ledger) == EVENTS
    assert ledger.verdict(cloud="alibaba", provider_event_id=f"e-{EVENTS - 1}", phase="scheduled") != "new"
