"""The NATS permission matrix of deploy/nats/natsauth.py, proved on a real nats-server started with
the generated decentralized-auth configuration (operator, account, one scoped signing key per role,
the agent's permissions templated on its node).

Every "may" is shown by doing it (a PubAck from the right stream, a fetched and acknowledged
message, a KV write, a command answered); every "must not" by the server refusing it *and* the
target stream not having grown."""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import os
import sys
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from subprocess import PIPE
from types import ModuleType
from typing import Any

import nats
import nats.js.errors
import pytest
from nats.aio.client import Client
from nats.errors import NoRespondersError
from nats.js.client import JetStreamContext

from nodeheal.runtime.jetstream import ensure_pull_consumer, kv_keys
from nodeheal.runtime.provision import apply_topology
from nodeheal.runtime.settings import NatsSettings
from nodeheal.schemas.streams import Topology
from nodeheal.schemas.subjects import (
    anomaly_subject,
    audit_subject,
    cloud_subject,
    cmd_subject,
    crash_subject,
    diagnosis_subject,
    finding_subject,
    probe_subject,
    prober_probe_subject,
    prober_results_subject,
)
from nodeheal.sim.embedded import EmbeddedNats
from tests.integration.deploy.natsauth_loader import load_natsauth

pytestmark = pytest.mark.nats

CLUSTER = "prod-eu"
NODE_A = "ip-10-0-1-5.ec2.internal"  # dots: the escaped token carries `_2E`, the template must keep its case
NODE_B = "worker-b"
REFUSAL_TIMEOUT_S = 1.0


@dataclass
class Secured:
    url: str
    natsauth: ModuleType
    bundle: Any
    workdir: Path
    settings: NatsSettings

    @property
    def topo(self) -> Topology:
        return self.settings.topology()


@dataclass
class Session:
    role: str
    nc: Client
    js: JetStreamContext
    errors: list[str] = field(default_factory=list)
    _changed: asyncio.Event = field(default_factory=asyncio.Event)

    async def refused(self, subject: str, *, kind: str = "publish") -> str:
        """Wait until the server reports a permissions violation of `kind` for `subject`."""
        needle = f'permissions violation for {"subscription" if kind == "subscribe" else "publish"} to "{subject}"'

        async def seen() -> str:
            while True:
                for err in self.errors:
                    if needle.lower() in err.lower():
                        return err
                self._changed.clear()
                await self._changed.wait()

        return await asyncio.wait_for(seen(), timeout=10)


@pytest.fixture(scope="module")
def secured(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Secured]:
    natsauth = load_natsauth()
    settings = NatsSettings()  # the production names: this server belongs to this module alone
    layout = natsauth.Layout(
        prefix=settings.prefix, stream_prefix=settings.stream_prefix, bucket_prefix=settings.bucket_prefix
    )
    bundle = natsauth.build(layout)
    workdir = tmp_path_factory.mktemp("natsauth")
    conf = workdir / "auth.conf"
    conf.write_text(bundle.server_config())
    with EmbeddedNats(config_file=str(conf), log_file=str(workdir / "nats.log")) as server:
        yield Secured(
            url=server.url,
            natsauth=natsauth,
            bundle=bundle,
            workdir=workdir,
            settings=settings.model_copy(update={"url": server.url}),
        )


async def login(secured: Secured, role: str, *, node: str | None = None, creds: str | None = None) -> Session:
    if creds is None:
        creds = secured.bundle.user_creds(role, cluster=CLUSTER if node else None, node=node)
    path = secured.workdir / f"{role}-{node or 'svc'}.creds"
    path.write_text(creds)
    errors: list[str] = []
    changed = asyncio.Event()

    async def on_error(exc: Exception) -> None:
        errors.append(str(exc))
        changed.set()

    nc = await nats.connect(
        secured.url,
        user_credentials=str(path),
        inbox_prefix=(
            secured.natsauth.agent_inbox_prefix(CLUSTER, node, role)
            if role in secured.natsauth.NODE_ROLES
            else secured.natsauth.inbox_prefix(role)
        ),
        error_cb=on_error,
        allow_reconnect=False,
        name=f"pytest-{role}",
    )
    return Session(role=role, nc=nc, js=nc.jetstream(timeout=REFUSAL_TIMEOUT_S), errors=errors, _changed=changed)


@pytest.fixture(scope="module")
async def sessions(secured: Secured) -> AsyncIterator[dict[str, Session]]:
    out: dict[str, Session] = {}
    out["admin"] = await login(secured, "admin")
    await apply_topology(out["admin"].nc.jetstream(), secured.topo)
    for role in ("ingest", "prober", "inventory", "detector", "diagnoser", "remediator", "reader"):
        out[role] = await login(secured, role)
    out["agent-a"] = await login(secured, "agent", node=NODE_A)
    out["agent-b"] = await login(secured, "agent", node=NODE_B)
    yield out
    for session in out.values():
        with contextlib.suppress(Exception):
            await session.nc.close()


async def stored(sessions: dict[str, Session], stream: str) -> int:
    info = await sessions["admin"].nc.jetstream().stream_info(stream)
    return int(info.state.messages)


P = NatsSettings().prefix
WRITES = [
    ("ingest", cloud_subject(CLUSTER, NODE_B, prefix=P), "CLOUD"),
    ("prober", prober_probe_subject(CLUSTER, NODE_B, prefix=P), "PROBES"),
    ("prober", prober_results_subject(CLUSTER, 0, 0, prefix=P), "PROBES"),  # a batch of its results
    ("agent-a", probe_subject(CLUSTER, NODE_A, prefix=P), "PROBES"),
    ("agent-b", probe_subject(CLUSTER, NODE_B, prefix=P), "PROBES"),
    ("detector", anomaly_subject(CLUSTER, NODE_A, prefix=P), "ANOMALIES"),
    ("diagnoser", diagnosis_subject(CLUSTER, NODE_A, prefix=P), "DIAGNOSES"),
    ("diagnoser", finding_subject(prefix=P), "DIAGNOSES"),
    ("remediator", audit_subject(CLUSTER, NODE_A, prefix=P), "AUDIT"),
    ("detector", f"{P}.dlq.detector", "DLQ"),
    ("agent-a", f"{P}.dlq.node-agent", "DLQ"),
    ("agent-a", crash_subject(CLUSTER, NODE_A, prefix=P), "CRASHES"),
    ("ingest", f"{P}.dlq.cloud-events-ingest", "DLQ"),
]


@pytest.mark.parametrize(("who", "subject", "stream"), WRITES)
async def test_each_writer_gets_a_puback_from_its_own_stream(
    secured: Secured, sessions: dict[str, Session], who: str, subject: str, stream: str
) -> None:
    before = len(sessions[who].errors)
    ack = await sessions[who].js.publish(subject, b"{}", timeout=5)
    assert ack.stream == secured.topo.stream(stream).name
    assert sessions[who].errors[before:] == []


REFUSED = [
    # only the remediator writes AUDIT: not the other services, not a node, not even the admin
    ("detector", audit_subject(CLUSTER, NODE_A, prefix=P), "AUDIT"),
    ("diagnoser", audit_subject(CLUSTER, NODE_A, prefix=P), "AUDIT"),
    ("ingest", audit_subject(CLUSTER, NODE_A, prefix=P), "AUDIT"),
    ("prober", audit_subject(CLUSTER, NODE_A, prefix=P), "AUDIT"),
    ("inventory", audit_subject(CLUSTER, NODE_A, prefix=P), "AUDIT"),
    ("agent-a", audit_subject(CLUSTER, NODE_A, prefix=P), "AUDIT"),
    ("admin", audit_subject(CLUSTER, NODE_A, prefix=P), "AUDIT"),
    # each service writes only its own kind of message
    ("ingest", anomaly_subject(CLUSTER, NODE_A, prefix=P), "ANOMALIES"),
    ("detector", probe_subject(CLUSTER, NODE_A, prefix=P), "PROBES"),
    ("detector", diagnosis_subject(CLUSTER, NODE_A, prefix=P), "DIAGNOSES"),
    ("diagnoser", anomaly_subject(CLUSTER, NODE_A, prefix=P), "ANOMALIES"),
    ("remediator", diagnosis_subject(CLUSTER, NODE_A, prefix=P), "DIAGNOSES"),
    ("prober", cloud_subject(CLUSTER, NODE_A, prefix=P), "CLOUD"),
    # the prober cannot speak as an agent (agent-kind probe subject), nor an agent as the prober
    ("prober", probe_subject(CLUSTER, NODE_A, prefix=P), "PROBES"),
    ("agent-a", prober_probe_subject(CLUSTER, NODE_A, prefix=P), "PROBES"),
    # an agent cannot publish a prober batch (speaking for other nodes), neither on the prober's subject nor
    # with the batch's routing token on the agents' kind; nor can another service
    ("agent-a", prober_results_subject(CLUSTER, 0, 0, prefix=P), "PROBES"),
    ("agent-a", prober_results_subject(CLUSTER, 0, 0, prefix=P).replace(".prober.", ".probe."), "PROBES"),
    ("detector", prober_results_subject(CLUSTER, 0, 0, prefix=P), "PROBES"),
    ("ingest", prober_results_subject(CLUSTER, 0, 0, prefix=P), "PROBES"),
    # each role dead-letters under its own name only (the DLQ's per-subject cap is per role)
    ("ingest", f"{P}.dlq.detector", "DLQ"),
    ("detector", f"{P}.dlq.cloud-events-ingest", "DLQ"),
    # a node speaks only for itself
    ("agent-a", probe_subject(CLUSTER, NODE_B, prefix=P), "PROBES"),
    ("agent-a", probe_subject("other-cluster", NODE_A, prefix=P), "PROBES"),
    ("agent-a", cloud_subject(CLUSTER, NODE_A, prefix=P), "CLOUD"),
    ("agent-a", f"{P}.dlq.detector", "DLQ"),
    ("agent-a", crash_subject(CLUSTER, NODE_B, prefix=P), "CRASHES"),
    ("detector", crash_subject(CLUSTER, NODE_A, prefix=P), "CRASHES"),
    # the read-only role publishes nothing of its own
    ("reader", audit_subject(CLUSTER, NODE_A, prefix=P), "AUDIT"),
    ("reader", probe_subject(CLUSTER, NODE_A, prefix=P), "PROBES"),
    ("reader", cloud_subject(CLUSTER, NODE_A, prefix=P), "CLOUD"),
    ("reader", diagnosis_subject(CLUSTER, NODE_A, prefix=P), "DIAGNOSES"),
    ("reader", f"{P}.dlq.reader", "DLQ"),
]


@pytest.mark.parametrize(("who", "subject", "stream"), REFUSED)
async def test_refused_publishes_never_reach_a_stream(
    secured: Secured, sessions: dict[str, Session], who: str, subject: str, stream: str
) -> None:
    name = secured.topo.stream(stream).name
    before = await stored(sessions, name)
    with pytest.raises(TimeoutError):
        await sessions[who].js.publish(subject, b"{}", timeout=REFUSAL_TIMEOUT_S)
    await sessions[who].refused(subject)
    assert await stored(sessions, name) == before


async def test_detector_consumes_its_inputs_and_nothing_else(secured: Secured, sessions: dict[str, Session]) -> None:
    detector, prober = sessions["detector"], sessions["prober"]
    errors_before = len(detector.errors)
    probes = secured.topo.stream("PROBES").name
    await ensure_pull_consumer(detector.js, stream=probes, durable="detector-perm", filter_subjects=[f"{P}.prober.*.*"])
    ack = await prober.js.publish(prober_probe_subject(CLUSTER, "n-consume", prefix=P), b'{"probe": 1}', timeout=5)
    batch = await prober.js.publish(prober_results_subject(CLUSTER, 0, 0, prefix=P), b'{"batch": 1}', timeout=5)

    sub = await detector.js.pull_subscribe_bind("detector-perm", stream=probes)
    seen: list[int] = []
    while ack.seq not in seen or batch.seq not in seen:  # a prober probe and a prober batch
        for msg in await sub.fetch(50, timeout=5):
            seen.append(msg.metadata.sequence.stream)
            await msg.ack_sync(timeout=5)
    info = await detector.js.consumer_info(probes, "detector-perm")
    assert info.ack_floor.stream_seq >= ack.seq
    assert detector.errors[errors_before:] == []

    diagnoses = secured.topo.stream("DIAGNOSES").name  # not an input of the detector
    with pytest.raises(TimeoutError):
        await ensure_pull_consumer(detector.js, stream=diagnoses, durable="detector-snoop")
    await detector.refused(f"$JS.API.CONSUMER.INFO.{diagnoses}.detector-snoop")


async def test_remediator_consumes_diagnoses(secured: Secured, sessions: dict[str, Session]) -> None:
    remediator, diagnoser = sessions["remediator"], sessions["diagnoser"]
    errors_before = len(remediator.errors)
    diagnoses = secured.topo.stream("DIAGNOSES").name
    await ensure_pull_consumer(remediator.js, stream=diagnoses, durable="remediator-perm")
    ack = await diagnoser.js.publish(diagnosis_subject(CLUSTER, "n-diag", prefix=P), b"{}", timeout=5)
    sub = await remediator.js.pull_subscribe_bind("remediator-perm", stream=diagnoses)
    seen: list[int] = []
    while ack.seq not in seen:
        for msg in await sub.fetch(50, timeout=5):
            seen.append(msg.metadata.sequence.stream)
            await msg.ack_sync(timeout=5)
    assert remediator.errors[errors_before:] == []


async def test_key_value_buckets_follow_the_roles(secured: Secured, sessions: dict[str, Session]) -> None:
    bucket = secured.settings.bucket_prefix
    inventory_kv = await sessions["inventory"].js.key_value(f"{bucket}-inventory")
    await inventory_kv.put("node.n-kv", b'{"zone": "eu-1a"}')

    prober_kv = await sessions["prober"].js.key_value(f"{bucket}-inventory")
    entry = await prober_kv.get("node.n-kv")
    assert entry.value == b'{"zone": "eu-1a"}'
    with pytest.raises(TimeoutError):
        await prober_kv.put("node.n-kv", b"forged")
    await sessions["prober"].refused(f"$KV.{bucket}-inventory.node.n-kv")
    # the key listing the services use at start (runtime.jetstream.kv_keys) works under a reader's role
    assert await kv_keys(prober_kv, pattern="node.>") == ["node.n-kv"]

    leases = await sessions["remediator"].js.key_value(f"{bucket}-leases")
    revision = await leases.create("n-kv", b"remediator-0")
    assert await leases.update("n-kv", b"remediator-0", last=revision) > revision

    with pytest.raises(TimeoutError):
        await sessions["detector"].js.key_value(f"{bucket}-leases")
    await sessions["detector"].refused(f"$JS.API.STREAM.INFO.KV_{bucket}-leases")

    control = await sessions["remediator"].js.key_value(f"{bucket}-control")
    await control.create("storm.zone.eu-1a", b"7/20")  # its own bookkeeping: ledger and storm markers
    await control.put("ledger.disruptions", b"{}")
    await control.delete("storm.zone.eu-1a")
    # the pause switch and approvals are for people (admin), never for the remediator itself
    with pytest.raises(TimeoutError):
        await control.put("pause", b"false")
    await sessions["remediator"].refused(f"$KV.{bucket}-control.pause")
    with pytest.raises(TimeoutError):
        await control.put("approval.a-1", b"{}")
    await sessions["remediator"].refused(f"$KV.{bucket}-control.approval.a-1")
    admin_control = await sessions["admin"].js.key_value(f"{bucket}-control")
    await admin_control.put("pause", b'{"paused": true}')

    # the read-only role reads the inventory and the control bucket, and writes neither
    reader_inventory = await sessions["reader"].js.key_value(f"{bucket}-inventory")
    assert (await reader_inventory.get("node.n-kv")).value == b'{"zone": "eu-1a"}'
    reader_control = await sessions["reader"].js.key_value(f"{bucket}-control")
    assert (await reader_control.get("pause")).value == b'{"paused": true}'
    with pytest.raises(TimeoutError):
        await reader_control.put("pause", b"false")
    await sessions["reader"].refused(f"$KV.{bucket}-control.pause")
    with pytest.raises(TimeoutError):
        await sessions["reader"].js.key_value(f"{bucket}-leases")
    await sessions["reader"].refused(f"$JS.API.STREAM.INFO.KV_{bucket}-leases")


async def test_an_agent_answers_only_its_own_node(secured: Secured, sessions: dict[str, Session]) -> None:
    agent_a, remediator = sessions["agent-a"], sessions["remediator"]
    own = cmd_subject(CLUSTER, NODE_A, prefix=P)
    other = cmd_subject(CLUSTER, NODE_B, prefix=P)

    async def answer(msg: Any) -> None:
        await msg.respond(b"done by " + NODE_A.encode())

    await agent_a.nc.subscribe(own, cb=answer)
    await agent_a.nc.subscribe(other, cb=answer)  # the server refuses this one
    await agent_a.refused(other, kind="subscribe")

    reply = await remediator.nc.request(own, b'{"action": "restart_service"}', timeout=5)
    assert reply.data == b"done by " + NODE_A.encode()
    with pytest.raises(NoRespondersError):
        await remediator.nc.request(other, b'{"action": "reboot"}', timeout=2)

    # nor can a node forge replies into the remediator's inbox or listen to it
    await agent_a.nc.publish("_INBOX.remediator.forged", b"done")
    await agent_a.refused("_INBOX.remediator.forged")
    await agent_a.nc.subscribe("_INBOX.remediator.>")
    await agent_a.refused("_INBOX.remediator.>", kind="subscribe")
    # and only the remediator sends commands
    await sessions["detector"].nc.publish(own, b'{"action": "reboot"}')
    await sessions["detector"].refused(own)


async def test_operator_workflow_init_then_mint_an_agent(secured: Secured, tmp_path: Path) -> None:
    """`init` writes keys and creds; `mint-agent` and `mint-ingest-node` later make a node's creds from their
    role keys, and those work against a server configured by *that* init (no `.creds` of a per-node role is
    written by `init`)."""
    natsauth = secured.natsauth
    out = tmp_path / "auth"
    assert natsauth.main(["init", "--out", str(out)]) == 0
    assert natsauth.main(["init", "--out", str(out)]) == 2  # never overwrites keys
    assert not (out / "agent.creds").exists() and not (out / "ingest-node.creds").exists()
    minted: dict[str, str] = {}
    for role in ("agent", "ingest-node"):
        buf = io.StringIO()
        with contextlib.redirect_stdout(buf):
            args = [f"mint-{role}", "--keys", str(out / "keys"), "--cluster", CLUSTER, "--node", "n-1"]
            assert natsauth.main(args) == 0
        minted[role] = buf.getvalue()
    with EmbeddedNats(config_file=str(out / "auth.conf")) as server:
        own = Secured(url=server.url, natsauth=natsauth, bundle=None, workdir=tmp_path, settings=secured.settings)
        agent = await login(own, "agent", node="n-1", creds=minted["agent"])
        ingest = await login(own, "ingest-node", node="n-1", creds=minted["ingest-node"])
        admin = await login(own, "admin", creds=(out / "admin.creds").read_text())
        try:
            await apply_topology(admin.nc.jetstream(), own.topo)
            ack = await agent.js.publish(probe_subject(CLUSTER, "n-1", prefix=P), b"{}", timeout=5)
            assert ack.stream == own.topo.stream("PROBES").name
            ack = await ingest.js.publish(cloud_subject(CLUSTER, "n-1", prefix=P), b"{}", timeout=5)
            assert ack.stream == own.topo.stream("CLOUD").name
            await ingest.nc.publish(cloud_subject(CLUSTER, "n-2", prefix=P), b"{}")  # another node's: refused
            await ingest.refused(cloud_subject(CLUSTER, "n-2", prefix=P))
        finally:
            await agent.nc.close()
            await ingest.nc.close()
            await admin.nc.close()


async def test_a_service_cannot_create_update_delete_or_read_another_services_durable(
    secured: Secured, sessions: dict[str, Session]
) -> None:
    """The detector reads ANOMALIES (to restore what was firing) but must not touch the diagnoser's durable
    there: not delete it (a recreated durable replays 30 days as new), not rewrite its filter, not fetch
    its messages, not acknowledge them. Its own named consumers on the same stream work."""
    detector, diagnoser, admin = sessions["detector"], sessions["diagnoser"], sessions["admin"]
    anomalies = secured.topo.stream("ANOMALIES").name
    mine = f"{P}.anomaly.*.*"
    await ensure_pull_consumer(diagnoser.js, stream=anomalies, durable="diagnoser", filter_subjects=[mine])
    before = await admin.js.consumer_info(anomalies, "diagnoser")

    with pytest.raises(TimeoutError):  # nats-py's own call, as a compromised detector would make it
        await detector.js.delete_consumer(anomalies, "diagnoser")
    await detector.refused(f"$JS.API.CONSUMER.DELETE.{anomalies}.diagnoser")
    with pytest.raises(TimeoutError):
        await detector.js.add_consumer(anomalies, durable_name="diagnoser", filter_subject=f"{P}.anomaly.x.y")
    await detector.refused(f"$JS.API.CONSUMER.DURABLE.CREATE.{anomalies}.diagnoser")
    forged = {"stream_name": anomalies, "config": {"name": "diagnoser", "filter_subject": f"{P}.anomaly.x.y"}}
    for subject in (
        f"$JS.API.CONSUMER.CREATE.{anomalies}.diagnoser.{P}.anomaly.x.y",  # the named create
        f"$JS.API.CONSUMER.CREATE.{anomalies}",  # the legacy create: takes the name from the body
        f"$JS.API.CONSUMER.MSG.NEXT.{anomalies}.diagnoser",  # steal its messages
        f"$JS.ACK.{anomalies}.diagnoser.1.1.1.0.0",  # acknowledge them unseen
    ):
        await detector.nc.publish(subject, json.dumps(forged).encode(), reply=detector.nc.new_inbox())
        await detector.refused(subject)

    after = await admin.js.consumer_info(anomalies, "diagnoser")
    assert after.config.filter_subjects == before.config.filter_subjects == [mine] or (
        after.config.filter_subject == before.config.filter_subject == mine
    )
    assert after.created == before.created

    # its own consumers on the same stream: a durable and a named ephemeral (the replay at start)
    await ensure_pull_consumer(detector.js, stream=anomalies, durable="detector-restore-perm", filter_subjects=[mine])
    info = await detector.js.add_consumer(anomalies, name="detector-replay-perm", inactive_threshold=30.0)
    assert await detector.js.delete_consumer(anomalies, info.name)
    assert await detector.js.delete_consumer(anomalies, "detector-restore-perm")


async def test_every_agent_has_its_own_inbox(secured: Secured, sessions: dict[str, Session]) -> None:
    """Agents get PubAcks on `_INBOX.agent.<cluster>.<node>`: one node can neither read another's replies
    nor forge them (a forged PubAck would make the other agent drop a probe it believes stored)."""
    agent_a, agent_b = sessions["agent-a"], sessions["agent-b"]
    natsauth = secured.natsauth
    b_inbox = natsauth.agent_inbox_prefix(CLUSTER, NODE_B)
    assert agent_b.nc._inbox_prefix.decode() == b_inbox  # what the agent connected with
    await agent_a.nc.subscribe(f"{b_inbox}.>")
    await agent_a.refused(f"{b_inbox}.>", kind="subscribe")
    await agent_a.nc.subscribe("_INBOX.agent.>")
    await agent_a.refused("_INBOX.agent.>", kind="subscribe")
    await agent_a.nc.publish(f"{b_inbox}.forged.1", b'{"stream": "PROBES", "seq": 1}')
    await agent_a.refused(f"{b_inbox}.forged.1")
    # and each still gets its own PubAcks
    ack = await agent_b.js.publish(probe_subject(CLUSTER, NODE_B, prefix=P), b"{}", timeout=5)
    assert ack.stream == secured.topo.stream("PROBES").name


async def test_no_stream_without_its_own_byte_cap(secured: Secured, sessions: dict[str, Session]) -> None:
    """The account refuses a stream without max_bytes, even from the admin: every stream's share of the
    store is fixed when it is created (the caps of the production topology are all set)."""
    admin = sessions["admin"].nc.jetstream()
    with pytest.raises(nats.js.errors.BadRequestError, match="max bytes"):
        await admin.add_stream(name="UNCAPPED", subjects=["uncapped.>"])
    assert all(spec.max_bytes > 0 for spec in secured.topo.streams)
    assert all(spec.max_bytes > 0 for spec in secured.topo.buckets)


async def test_the_reader_role_runs_the_read_only_cli(secured: Secured, sessions: dict[str, Session]) -> None:
    """`nodeheal audit tail` (its default reader and `--durable`), `replay` and `fleet` with the `reader`
    role's credentials, as an audit subscriber would run them: no admin credential needed. The reader
    cannot touch a service's durable on the stream it reads."""
    from click.testing import CliRunner

    from nodeheal.cli.main import cli
    from nodeheal.runtime.jetstream import publish_model
    from tests.unit.replay.factories import record

    remediator, reader, admin = sessions["remediator"], sessions["reader"], sessions["admin"]
    creds = secured.workdir / "reader.creds"
    creds.write_text(secured.bundle.user_creds("reader"))
    node = "n-reader"
    for r in (
        record(node, t=1, phase="intent", action_id="act-r1"),
        record(node, t=2, phase="started", action_id="act-r1"),
    ):
        await publish_model(remediator.js, audit_subject(r.cluster, node, prefix=P), r, msg_id=r.id)

    async def cli_as_reader(*args: str) -> str:
        env = {"NATS_URL": secured.url, "NATS_CREDS": str(creds), "NATS_CA": ""}
        result = await asyncio.to_thread(CliRunner().invoke, cli, list(args), env=env)
        assert result.exit_code == 0, (args, result.output)
        return result.stdout

    lines = (await cli_as_reader("audit", "tail", "--node", node)).splitlines()
    assert [line.split()[3] for line in lines] == ["intent", "started"], lines
    first = (await cli_as_reader("audit", "tail", "--node", node, "--durable", "ops-team")).splitlines()
    assert len(first) == 2
    last = record(node, t=3, phase="succeeded", action_id="act-r1")
    await publish_model(remediator.js, audit_subject(last.cluster, node, prefix=P), last, msg_id=last.id)
    again = (await cli_as_reader("audit", "tail", "--node", node, "--durable", "ops-team")).splitlines()
    assert len(again) == 1 and " succeeded " in again[0], again  # resumed after what it printed

    report = json.loads(await cli_as_reader("replay", "--since", "30d", "--node", node, "--json"))
    assert report["counts"]["audit_records"] == 3, report["counts"]  # the node's audit history was read
    fleet = json.loads(await cli_as_reader("fleet", "--since", "30d", "--json"))
    assert isinstance(fleet, dict)
    audit = secured.topo.stream("AUDIT").name
    # the default reader left nothing behind on the server: only the durable it was asked for remains
    names = [c.name async for c in _consumers(admin.js, audit)]
    assert "ops-team" in names
    assert not [n for n in names if n not in ("ops-team", "detector", "diagnoser")], names

    # the plain nats-py subscriber of docs/audit.md, as written there, under the same credential
    doc = (Path(__file__).parents[3] / "docs" / "audit.md").read_text()
    script = doc.split("## The same with plain nats-py", 1)[1].split("```python\n", 1)[1].split("```\n", 1)[0]
    (secured.workdir / "audit_example.py").write_text(script)
    env = {**os.environ, "NATS_URL": secured.url, "NATS_CREDS": str(creds), "NODE": node}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, str(secured.workdir / "audit_example.py"), env=env, stdout=PIPE, stderr=PIPE
    )
    out, err = await asyncio.wait_for(proc.communicate(), timeout=60)
    assert proc.returncode == 0, err.decode()
    assert [line.split()[3] for line in out.decode().splitlines()] == ["intent", "started", "succeeded"], out

    # a service's durable on AUDIT stays the service's
    await ensure_pull_consumer(sessions["diagnoser"].js, stream=audit, durable="diagnoser")
    with pytest.raises(TimeoutError):
        await reader.js.delete_consumer(audit, "diagnoser")
    await reader.refused(f"$JS.API.CONSUMER.DELETE.{audit}.diagnoser")


async def _consumers(js: JetStreamContext, stream: str) -> AsyncIterator[Any]:
    for info in await js.consumers_info(stream):
        yield info


async def test_a_push_consumer_delivering_to_a_nodes_command_subject_runs_nothing(
    secured: Secured, sessions: dict[str, Session], tmp_path: Path
) -> None:
    """NATS permissions cannot check where JetStream delivers: a role allowed to create a consumer (here the
    detector, alone) can store a command-shaped body on its own subject and create a push consumer whose deliver
    subject is another node's command subject. The real agent of that node, under its own credentials, must not
    run it (before: it restarted the kubelet and saved the forged lease fence, refusing the real remediator's
    commands for good). It is dead-lettered; the remediator's own request is still answered and run."""
    from datetime import UTC, datetime, timedelta

    from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
    from pydantic import ValidationError

    from nodeheal.agent.app import NodeAgent
    from nodeheal.agent.settings import AgentSettings, CleanSettings
    from nodeheal.schemas.commands import NodeCommand, NodeCommandResult
    from nodeheal.schemas.dlq import DeadLetter
    from nodeheal.schemas.subjects import dlq_subject
    from tests.unit.cloud_events.agent_fakenode import make_fake_node

    fake = make_fake_node(tmp_path, mounts=[("/dev/vda1", "/", "ext4", "rw,relatime")])
    fake.set_unit("kubelet.service", "failed", restarts=2)
    creds = tmp_path / "agent-b.creds"
    creds.write_text(secured.bundle.user_creds("agent", cluster=CLUSTER, node=NODE_B))
    settings = AgentSettings(
        nats=secured.settings.model_copy(update={"creds_file": str(creds), "inbox_prefix": "_INBOX.agent"}),
        cluster=CLUSTER,
        node_name=NODE_B,
        host_root=fake.root,
        services=["kubelet"],
        systemctl_command=[fake.systemctl],
        state_dir=tmp_path / "agent-state",
        interval_s=5.0,
        kernel_log="off",
        clean=CleanSettings(allowed_dirs=["/var/log/pods"], image_prune_command=[]),
    )
    agent = NodeAgent(settings)
    await agent.start()
    try:
        forged = NodeCommand(
            cluster=CLUSTER,
            node=NODE_B,
            command="restart_service",
            target="kubelet",
            action_id="forged-1",
            lease_revision=10**12,
            lease_epoch=10**17,
            expires_at=datetime.now(tz=UTC) + timedelta(minutes=5),
        )
        detector = sessions["detector"]
        stored_on = anomaly_subject(CLUSTER, "forged-carrier", prefix=P)
        await detector.js.publish(stored_on, forged.to_json(), timeout=5)
        anomalies = secured.topo.stream(f"{secured.settings.stream_prefix}ANOMALIES").name
        await detector.js.add_consumer(
            anomalies,
            config=ConsumerConfig(
                name="forged-push",  # a named create: what the role's consumer permissions allow
                deliver_subject=cmd_subject(CLUSTER, NODE_B, prefix=P),
                filter_subject=stored_on,
                deliver_policy=DeliverPolicy.LAST,
                ack_policy=AckPolicy.NONE,
            ),
            timeout=5,
        )
        admin = sessions["admin"].nc.jetstream()
        dlq = secured.topo.stream(f"{secured.settings.stream_prefix}DLQ").name

        async def refused_letter() -> DeadLetter:
            while True:
                assert fake.restarts_logged() == [], "the forged command ran"
                # the subject's last message may be another test's (`{}`, not a letter) until ours arrives
                with contextlib.suppress(nats.js.errors.NotFoundError, ValidationError):
                    msg = await admin.get_last_msg(dlq, dlq_subject(settings.dlq_service, prefix=P))
                    letter = DeadLetter.model_validate_json(msg.data)
                    if letter.subject == stored_on:
                        return letter
                await asyncio.sleep(0.1)

        letter = await asyncio.wait_for(refused_letter(), timeout=10)
        assert "not published on this node's command subject" in letter.reason
        assert fake.restarts_logged() == []
        assert agent.executor.executed == 0
        assert not (tmp_path / "agent-state" / "lease-fence.json").exists()

        genuine = forged.model_copy(update={"action_id": "genuine-1", "lease_revision": 3, "lease_epoch": 1})
        reply = await sessions["remediator"].nc.request(
            cmd_subject(CLUSTER, NODE_B, prefix=P), genuine.to_json(), timeout=30
        )
        result = NodeCommandResult.model_validate_json(reply.data)
        assert result.ok, result.detail
        assert fake.restarts_logged() == ["kubelet.service"]
    finally:
        await agent.stop()
