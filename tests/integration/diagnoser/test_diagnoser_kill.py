"""SIGKILL the diagnoser process at its worst moments and restart it (issue 14 items 2 and 3).

`python -m nodeheal.diagnoser` runs as its own process with the production per-role NATS
credentials of deploy/nats/natsauth.py on a real nats-server with that authorization;
`NODEHEAL_TEST_KILL_AT` makes it SIGKILL itself at a hook point; a second process without the
variable is started on the same streams. What a user would see is read from the streams and the
restarted process's /metrics: every fault diagnosed, a dark rack a partition (not crashes), downtime
after our own reboot planned (not a crash), an open episode's resolution published, no fleet finding
raised twice, no diagnosis said twice — and the server logs no permission violation."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import urllib.request
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import nats
import pytest
from nats.aio.client import Client

from nodeheal.runtime.jetstream import publish_model
from nodeheal.runtime.provision import apply_topology
from nodeheal.runtime.settings import NatsSettings
from nodeheal.schemas import Anomaly, Diagnosis, NodeInventory, RemediationRecord
from nodeheal.schemas.finding import FleetFinding
from nodeheal.schemas.inventory import inventory_key
from nodeheal.schemas.subjects import anomaly_subject, audit_subject, crash_subject, finding_subject, wildcard
from nodeheal.sim.embedded import EmbeddedNats, free_port
from tests.integration.deploy.natsauth_loader import load_natsauth
from tests.integration.diagnoser.test_diagnoser_service import read_stream
from tests.unit.diagnoser.scenarios import CLUSTER, anomaly, inventory
from tests.unit.diagnoser.test_crash_counting import report as soft_lockup_report

pytestmark = [pytest.mark.nats, pytest.mark.slow]


@dataclass
class Broker:
    url: str
    nc: Client
    remediator: Client  # audit records are the remediator's to write
    settings: NatsSettings
    dir: Path
    log: Path

    def env(self, **extra: str) -> dict[str, str]:
        natsauth = load_natsauth()
        creds = self.dir / "diagnoser.creds"  # written with the server's configuration
        base = {k: v for k, v in os.environ.items() if not k.startswith("NODEHEAL_") and k != "NATS_URL"}
        p = "NODEHEAL_DIAGNOSER_"
        return base | {
            f"{p}NATS__URL": self.url,
            f"{p}NATS__CREDS_FILE": str(creds),
            f"{p}NATS__INBOX_PREFIX": natsauth.inbox_prefix("diagnoser"),
            f"{p}CLUSTER": CLUSTER,
            f"{p}HTTP_HOST": "127.0.0.1",
            f"{p}LOG_FORMAT": "json",
            f"{p}TICK_S": "0.1",
            f"{p}FETCH_TIMEOUT_S": "0.3",
            f"{p}NODE_DOWN_HOLD_S": "1",
            f"{p}DOMAIN_QUIET_S": "2",
            f"{p}CORRELATION_INTERVAL_S": "0.3",
            # a process started after a SIGKILL takes the singleton over once it is this long unrenewed (30 s in
            # production): every restart here goes through that take-over, under the role's own credential
            f"{p}SINGLETON_TTL_S": "3",
            **{p + k: v for k, v in extra.items()},
        }


@pytest.fixture
async def broker(tmp_path: Path) -> AsyncIterator[Broker]:
    """A nats-server running the production authorization; the layout provisioned by the admin user."""
    natsauth = load_natsauth()
    bundle = natsauth.build()
    (tmp_path / "auth.conf").write_text(bundle.server_config())
    (tmp_path / "admin.creds").write_text(bundle.user_creds("admin"))
    (tmp_path / "diagnoser.creds").write_text(bundle.user_creds("diagnoser"))
    log = tmp_path / "nats.log"
    with EmbeddedNats(config_file=str(tmp_path / "auth.conf"), log_file=str(log)) as server:
        (tmp_path / "remediator.creds").write_text(bundle.user_creds("remediator"))
        nc = await nats.connect(server.url, user_credentials=str(tmp_path / "admin.creds"))
        remediator = await nats.connect(
            server.url,
            user_credentials=str(tmp_path / "remediator.creds"),
            inbox_prefix=natsauth.inbox_prefix("remediator").encode(),
        )
        settings = NatsSettings(url=server.url)
        await apply_topology(nc.jetstream(), settings.topology())
        try:
            yield Broker(url=server.url, nc=nc, remediator=remediator, settings=settings, dir=tmp_path, log=log)
        finally:
            await remediator.close()
            await nc.close()
    assert [line for line in log.read_text().splitlines() if "Violation" in line] == []


class Diagnoser:
    """One diagnoser process."""

    def __init__(
        self,
        broker: Broker,
        name: str,
        *,
        kill_at: str | None = None,
        hooks: dict[str, str] | None = None,
        **settings: str,
    ) -> None:
        self.port = free_port()
        self.log = broker.dir / f"{name}.log"
        env = broker.env(HTTP_PORT=str(self.port), **settings) | (hooks or {})
        if kill_at is not None:
            env["NODEHEAL_TEST_KILL_AT"] = kill_at
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "nodeheal.diagnoser"], env=env, stdout=self.log.open("wb"), stderr=subprocess.STDOUT
        )

    def _get(self, path: str) -> str | None:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}", timeout=2) as response:
                return str(response.read().decode())
        except OSError:
            return None

    async def ready(self) -> None:
        deadline = asyncio.get_running_loop().time() + 60
        while self._get("/readyz") is None:
            assert self.proc.poll() is None, self.log.read_text()[-3000:]
            assert asyncio.get_running_loop().time() < deadline, "diagnoser never became ready"
            await asyncio.sleep(0.2)

    async def killed(self, timeout_s: float = 60) -> None:
        """Wait until the process SIGKILLed itself at its hook point."""
        deadline = asyncio.get_running_loop().time() + timeout_s
        while self.proc.poll() is None:
            assert asyncio.get_running_loop().time() < deadline, "the kill point was never reached"
            await asyncio.sleep(0.1)
        assert self.proc.returncode == -9, self.log.read_text()[-3000:]
        assert "test kill point reached" in self.log.read_text()

    def metric(self, name: str, **labels: str) -> float:
        text = self._get("/metrics") or ""
        total = 0.0
        for line in text.splitlines():
            if not line.startswith(name + "{") and not line.startswith(name + " "):
                continue
            if all(f'{k}="{v}"' in line for k, v in labels.items()):
                total += float(line.rsplit(" ", 1)[1])
        return total

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()


async def put_inventory(broker: Broker, racks: dict[str, list[str]]) -> None:
    kv = await broker.nc.jetstream().key_value("nodeheal-inventory")
    for rack, nodes in racks.items():
        for node in nodes:
            record: NodeInventory = inventory(node, rack=rack, zone=f"z-{rack}")
            await kv.put(inventory_key(CLUSTER, node), record.to_json())


async def send(broker: Broker, item: Anomaly | RemediationRecord) -> None:
    js = broker.nc.jetstream()
    p = broker.settings.prefix
    if isinstance(item, Anomaly):
        await publish_model(js, anomaly_subject(item.cluster, item.node, prefix=p), item, msg_id=item.id)
    else:
        subject = audit_subject(item.cluster, item.node, prefix=p)
        await publish_model(broker.remediator.jetstream(), subject, item, msg_id=item.id)


async def diagnoses(broker: Broker) -> list[Diagnosis]:
    raw = await read_stream(broker.nc, "DIAGNOSES", wildcard("diagnosis", prefix=broker.settings.prefix))
    return [Diagnosis.model_validate_json(b) for b in raw]


async def findings(broker: Broker) -> list[FleetFinding]:
    raw = await read_stream(broker.nc, "DIAGNOSES", finding_subject(prefix=broker.settings.prefix))
    return [FleetFinding.model_validate_json(b) for b in raw]


async def until(broker: Broker, check: object, *, timeout_s: float = 40) -> list[Diagnosis]:
    deadline = asyncio.get_running_loop().time() + timeout_s
    seen: list[Diagnosis] = []
    while asyncio.get_running_loop().time() < deadline:
        seen = await diagnoses(broker)
        if check(seen):  # type: ignore[operator]
            return seen
        await asyncio.sleep(0.3)
    raise AssertionError(f"not reached; saw {[(d.node, d.cause, d.resolved) for d in seen]}")


def by_node(seen: list[Diagnosis]) -> dict[str, list[Diagnosis]]:
    out: dict[str, list[Diagnosis]] = {}
    for d in seen:
        out.setdefault(d.node, []).append(d)
    return out


async def test_killed_inside_the_node_down_hold_then_right_after_publishing(broker: Broker) -> None:
    rack = [f"d{i}" for i in range(8)]
    await put_inventory(broker, {"rk": rack, "rs": ["solo", "s1", "s2", "s3"], "ro": ["own", "o1"], "re": ["ep", "e1"]})
    t = datetime.now(tz=UTC)
    # 1. killed while node_down verdicts are held (their anomalies acknowledged), after fleet findings
    #    (3 of 8 dark is a rack down_spike: >= 30 % and >= 3 nodes)
    first = Diagnoser(broker, "first", kill_at="in_node_down_hold:5")
    try:
        await first.ready()
        # an open episode, diagnosed before the kill
        await send(broker, anomaly("ep", "service_down", subject="containerd", at=t))
        await until(broker, lambda seen: any(d.node == "ep" for d in seen))
        # our own reboot of "own", then the downtime it causes
        await send(
            broker,
            RemediationRecord(
                cluster=CLUSTER, node="own", action_id="a-own", action="reboot", phase="started",
                reason="kernel fault", actor="remediator", time=t,
            ),
        )  # fmt: skip
        # rack rk starts going dark (3 of 8: not a partition yet, held while it may be), a lone node
        # elsewhere crashes
        later = datetime.now(tz=UTC)
        for i, node in enumerate(rack[:3]):
            await send(broker, anomaly(node, "node_down", at=later + timedelta(milliseconds=150 * i)))
        await send(broker, anomaly("own", "node_down", at=later + timedelta(seconds=1)))
        await send(broker, anomaly("solo", "node_down", at=later))
        await first.killed()
    finally:
        first.stop()
    info = await broker.nc.jetstream().consumer_info("ANOMALIES", "diagnoser")
    acked = 6 - (info.num_pending or 0) - (info.num_ack_pending or 0)
    assert acked >= 2, "the kill came before any node_down was acknowledged: not the worst moment"
    assert [d.node for d in await diagnoses(broker)] == ["ep"]  # none of the held verdicts was said
    raised = [f for f in await findings(broker) if not f.cleared]
    assert sorted((f.kind, f.dimension, f.value) for f in raised) == [
        ("down_spike", "node_pool", "pool-a"),
        ("down_spike", "rack", "rk"),
        ("down_spike", "zone", "z-rk"),
    ]
    # while the diagnoser is down, the open episode's fault clears and the rack keeps going dark
    await send(broker, anomaly("ep", "service_down", subject="containerd", status="resolved", at=datetime.now(tz=UTC)))
    for node in rack[3:6]:
        await send(broker, anomaly(node, "node_down", at=datetime.now(tz=UTC)))

    # 2. restarted, and killed again right after its first diagnosis is stored (inputs not yet acked)
    second = Diagnoser(broker, "second", kill_at="after_publish_diagnosis")
    try:
        await second.killed()  # during its start: the held verdicts are judged right after the rebuild
    finally:
        second.stop()
    before_third = await diagnoses(broker)
    assert len(before_third) >= 2

    # 3. restarted for good
    third = Diagnoser(broker, "third")
    try:
        await third.ready()

        def complete(seen: list[Diagnosis]) -> bool:
            nodes = by_node(seen)
            return all(n in nodes for n in [*rack[:6], "solo", "own"]) and any(d.resolved for d in nodes.get("ep", []))

        await until(broker, complete)
        await asyncio.sleep(1.5)  # a second diagnosis or a re-raised finding would be out by now
        seen = await diagnoses(broker)
        said_by_third = third.metric("nodeheal_diagnoser_diagnoses_total")
        findings_by_third = third.metric("nodeheal_diagnoser_findings_total")
    finally:
        third.stop()
    nodes = by_node(seen)
    assert {n: [d.cause for d in nodes[n]] for n in rack[:6]} == {n: ["rack_partition"] for n in rack[:6]}
    assert all([r.action for r in nodes[n][0].recommended] == ["escalate"] for n in rack[:6])
    assert [d.cause for d in nodes["solo"]] == ["node_crash"]
    assert [d.cause for d in nodes["own"]] == ["planned_reboot"]
    ep = nodes["ep"]
    assert [(d.cause, d.resolved) for d in ep] == [("container_runtime_down", False), ("container_runtime_down", True)]
    assert ep[1].anomaly_ids == ep[0].anomaly_ids  # the same episode, resolved once
    assert len(seen) == 10  # one verdict per fault, one resolution
    # the last process said only what was not said before it, and raised no finding again: each of the three
    # was raised once and, as the rack went on going dark while the diagnoser was away, said once more with
    # the later nodes (by whichever restarted process ran its correlation first)
    assert said_by_third == float(10 - len(before_third))
    said: dict[tuple[str, str, str], list[FleetFinding]] = {}
    for finding in await findings(broker):
        said.setdefault((finding.kind, finding.dimension, finding.value), []).append(finding)
    assert sorted(said) == sorted((f.kind, f.dimension, f.value) for f in raised)
    assert all(len(v) == 2 and v[0].finding_id == v[1].finding_id and not v[1].cleared for v in said.values())
    assert {n.rsplit("/", 1)[-1] for n in said[("down_spike", "rack", "rk")][1].affected_nodes} == set(rack[:6])
    assert findings_by_third in (0.0, 3.0)


async def test_killed_inside_the_crash_report_wait(broker: Broker) -> None:
    """A first verdict of `unexplained_reboot` waits `CRASH_REPORT_WAIT_S` for the crash report of that boot,
    counted from the anomaly's own time. SIGKILLed inside that wait (the reboot anomalies acknowledged, no
    verdict said), the restarted diagnoser rebuilds the wait: the crash report that came while it was away names
    the crash, the node that sent none is unexplained once the wait is over — each said once."""
    wait_s = 15.0  # long enough that the restart (a few seconds) lands inside it, even on a loaded machine
    await put_inventory(broker, {"rk": ["k", "u"]})
    t = datetime.now(tz=UTC)
    first = Diagnoser(broker, "first", kill_at="in_node_down_hold", CRASH_REPORT_WAIT_S=str(wait_s))
    try:
        await first.ready()
        await send(broker, anomaly("k", "unexpected_reboot", at=t))
        await send(broker, anomaly("u", "unexpected_reboot", at=t))
        await first.killed()
    finally:
        first.stop()
    info = await broker.nc.jetstream().consumer_info("ANOMALIES", "diagnoser")
    assert (info.num_pending or 0) + (info.num_ack_pending or 0) < 2, "no reboot acknowledged: not inside the wait"
    assert await diagnoses(broker) == []
    # the agent's crash report of k's boot arrives while the diagnoser is away
    subject = crash_subject(CLUSTER, "k", prefix=broker.settings.prefix)
    crash = soft_lockup_report("k", datetime.now(tz=UTC))
    await publish_model(broker.nc.jetstream(), subject, crash, msg_id="cr-k-boot-2")

    second = Diagnoser(broker, "second", CRASH_REPORT_WAIT_S=str(wait_s))
    try:
        await second.ready()
        await until(broker, lambda seen: {d.node for d in seen} == {"k", "u"}, timeout_s=wait_s + 30)
        await asyncio.sleep(1.5)  # a second verdict would be out by now
        seen = await diagnoses(broker)
        said = second.metric("nodeheal_diagnoser_diagnoses_total")
    finally:
        second.stop()
    nodes = by_node(seen)
    assert [d.cause for d in nodes["k"]] == ["soft_lockup"]  # the first verdict names the crash
    assert [d.cause for d in nodes["u"]] == ["unexplained_reboot"]
    assert nodes["u"][0].identified_at >= t + timedelta(seconds=wait_s)  # not before its wait was over
    assert said == 2.0
