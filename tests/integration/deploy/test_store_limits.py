"""One stream filling up never stops another: on a real nats-server with a small JetStream store, the
production authorization (deploy/nats/natsauth.py) and the production topology scaled down (same
streams, same limits, smaller caps), a flood into the DLQ and into PROBES leaves AUDIT and PROBES
writable, and the account refuses any stream that would take space it has not been given."""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator
from pathlib import Path

import nats
import nats.js.errors
import pytest
from nats.aio.client import Client

from nodeheal.runtime.provision import apply_stream, apply_topology
from nodeheal.runtime.settings import NatsSettings
from nodeheal.schemas.streams import MIB, StreamSpec, Topology, reserved_bytes
from nodeheal.schemas.subjects import audit_subject, probe_subject, prober_probe_subject
from nodeheal.sim.embedded import EmbeddedNats
from tests.integration.deploy.natsauth_loader import load_natsauth

pytestmark = pytest.mark.nats

STORE = 40 * MIB
CAP = 4 * MIB
CLUSTER = "c1"


def scaled_down(topo: Topology) -> Topology:
    return Topology(
        streams=tuple(dataclasses.replace(s, max_bytes=CAP) for s in topo.streams),
        buckets=tuple(dataclasses.replace(b, max_bytes=1 * MIB) for b in topo.buckets),
    )


@pytest.fixture
async def connect(tmp_path: Path) -> AsyncIterator[tuple[dict[str, Client], Topology]]:
    natsauth = load_natsauth()
    bundle = natsauth.build()
    conf = tmp_path / "nats.conf"
    conf.write_text(bundle.server_config() + f"jetstream {{ max_file_store: {STORE} }}\n")
    topo = scaled_down(NatsSettings().topology())
    assert reserved_bytes(topo) < STORE
    clients: dict[str, Client] = {}
    with EmbeddedNats(config_file=str(conf), log_file=str(tmp_path / "nats.log")) as server:
        try:
            for role, node in (
                ("admin", None),
                ("ingest", None),
                ("prober", None),
                ("remediator", None),
                ("agent", "n1"),
            ):
                creds = tmp_path / f"{role}.creds"
                creds.write_text(bundle.user_creds(role, cluster=CLUSTER if node else None, node=node))
                inbox = natsauth.agent_inbox_prefix(CLUSTER, node) if node else natsauth.inbox_prefix(role)
                clients[role] = await nats.connect(
                    server.url, user_credentials=str(creds), inbox_prefix=inbox, allow_reconnect=False
                )
            await apply_topology(clients["admin"].jetstream(), topo)
            yield clients, topo
        finally:
            for nc in clients.values():
                await nc.close()


async def stream_bytes(admin: Client, name: str) -> tuple[int, int]:
    info = await admin.jetstream().stream_info(name)
    return int(info.state.bytes), int(info.state.messages)


async def test_a_full_dlq_and_a_full_probes_stream_leave_audit_and_probes_writable(
    connect: tuple[dict[str, Client], Topology],
) -> None:
    clients, topo = connect
    admin = clients["admin"]
    dlq, probes, audit = (topo.stream(n).name for n in ("DLQ", "PROBES", "AUDIT"))

    # the webhook's flood, as far as its role can go: 3x the DLQ's cap of large dead letters
    ingest = clients["ingest"].jetstream()
    letter = b"x" * (200 * 1024)
    for i in range(3 * CAP // len(letter)):
        await ingest.publish("nodeheal.dlq.cloud-events-ingest", letter, headers={"Nats-Msg-Id": f"d{i}"})
    # a probe storm: 3x the cap of PROBES from the prober
    prober = clients["prober"].jetstream()
    for i in range(3 * CAP // len(letter)):
        await prober.publish(prober_probe_subject(CLUSTER, f"n{i}"), letter)

    for name in (dlq, probes):
        size, count = await stream_bytes(admin, name)
        assert size <= CAP, (name, size)  # the oldest went, the stream stayed in its share
        assert count > 0

    # AUDIT and an agent's probes are still stored
    ack = await clients["remediator"].jetstream().publish(audit_subject(CLUSTER, "n1"), b'{"phase": "started"}')
    assert ack.stream == audit
    ack = await clients["agent"].jetstream().publish(probe_subject(CLUSTER, "n1"), b'{"probe": 1}')
    assert ack.stream == probes
    assert (await admin.jetstream().get_last_msg(probes, probe_subject(CLUSTER, "n1"))).data == b'{"probe": 1}'


async def test_the_store_cannot_be_overcommitted(connect: tuple[dict[str, Client], Topology]) -> None:
    """A stream whose cap does not fit next to the others' is refused when it is created, not when the
    store runs out under AUDIT's writes."""
    clients, topo = connect
    js = clients["admin"].jetstream()
    room = STORE - reserved_bytes(topo)
    hog = StreamSpec(name="HOG", subjects=("hog.>",), description="too big", max_age_s=600.0, max_bytes=room + MIB)
    with pytest.raises(nats.js.errors.APIError, match="insufficient storage resources"):
        await apply_stream(js, hog)
    fits = dataclasses.replace(hog, name="FITS", subjects=("fits.>",), max_bytes=room - MIB)
    assert (await apply_stream(js, fits)).action == "created"
