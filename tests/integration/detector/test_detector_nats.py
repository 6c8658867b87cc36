"""The detector against a real nats-server: probes into the PROBES stream, anomalies out of ANOMALIES."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime

import pytest
from nats.aio.client import Client
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from prometheus_client import REGISTRY

from nodeheal.detector.handlers import DetectorRuntime
from nodeheal.detector.rules import RuleConfig
from nodeheal.detector.settings import DetectorSettings
from nodeheal.runtime.connect import connect
from nodeheal.runtime.jetstream import DEFAULT_DLQ_LIMITER
from nodeheal.runtime.settings import NatsSettings
from nodeheal.schemas import Anomaly, CloudSystemEvent, DeadLetter, FileSystem, LoadAverage, NodeProbe
from nodeheal.schemas.subjects import cloud_subject, dlq_subject, probe_subject, prober_probe_subject, wildcard
from tests.integration.deploy.natsauth_loader import RoleServer, admin_stands_in, violations

pytestmark = pytest.mark.nats


def probe(*, node: str, seq: int, used: float, boot: str = "b1") -> NodeProbe:
    return NodeProbe(
        id=f"{node}-{seq}",
        time=datetime.now(tz=UTC),
        cluster="c1",
        node=node,
        source="agent",
        seq=seq,
        boot_id=boot,
        load=LoadAverage(load1=0.5, load5=0.5, load15=0.5),
        cpu_count=4,
        filesystems=(FileSystem(mount="/", used_pct=used, inodes_used_pct=1.0),),
        ready=True,
    )


def cloud_event(
    node: str,
    phase: str,
    *,
    event_id: str,
    instance_id: str,
    cloud: str = "alibaba",
    channel: str = "simulator",
    event_type: str = "SystemMaintenance.Reboot",
    not_before: datetime | None = None,
) -> CloudSystemEvent:
    """A host reboot of `node` in `phase` (terminal when completed), observed now."""
    return CloudSystemEvent(
        cluster="c1",
        node=node,
        cloud=cloud,  # type: ignore[arg-type]
        channel=channel,  # type: ignore[arg-type]
        provider_event_id=event_id,
        provider_event_type=event_type,
        action="reboot",
        cause="planned_maintenance",
        phase=phase,  # type: ignore[arg-type]
        is_terminal=phase == "completed",
        instance_id=instance_id,
        observed_at=datetime.now(tz=UTC),
        not_before=not_before,
    )


async def publish(nc: Client, settings: NatsSettings, p: NodeProbe) -> None:
    await nc.jetstream().publish(
        probe_subject(p.cluster, p.node, prefix=settings.prefix), p.to_json(), headers={"Nats-Msg-Id": p.id}
    )


async def read_all(nc: Client, stream: str, subject: str) -> list[bytes]:
    js = nc.jetstream()
    info = await js.add_consumer(
        stream,
        config=ConsumerConfig(ack_policy=AckPolicy.NONE, deliver_policy=DeliverPolicy.ALL, filter_subject=subject),
    )
    total = info.num_pending or 0
    if not total:
        return []
    sub = await js.pull_subscribe_bind(info.name, stream=stream)
    out: list[bytes] = []
    while len(out) < total:
        out += [m.data for m in await sub.fetch(total - len(out), timeout=5)]
    await sub.unsubscribe()
    return out


async def anomalies(nc: Client, settings: NatsSettings) -> list[Anomaly]:
    stream = settings.topology().stream(f"{settings.stream_prefix}ANOMALIES").name
    return [
        Anomaly.model_validate_json(d) for d in await read_all(nc, stream, wildcard("anomaly", prefix=settings.prefix))
    ]


async def eventually(check: Callable[[], object], *, timeout_s: float = 20.0) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        result = check()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not reached within the timeout: {check}")
        await asyncio.sleep(0.1)


@contextlib.asynccontextmanager
async def started_runtime(nats: NatsSettings, nc: Client, rules: RuleConfig) -> AsyncIterator[DetectorRuntime]:
    """A detector runtime on `nc` with `rules` (batches of 100, 0.1 s ticks), started and stopped."""
    rt = DetectorRuntime(settings=DetectorSettings(nats=nats, batch_size=100, tick_s=0.1, rules=rules), nc=nc)
    await rt.start()
    try:
        yield rt
    finally:
        await rt.stop()


nc, topology_ready = admin_stands_in()  # the tests run on the per-role server; admin stands in


@pytest.fixture
async def runtime(deployed: RoleServer) -> AsyncIterator[DetectorRuntime]:
    """The detector under its role's credential, on a connection of its own."""
    async with started_runtime(deployed.role, await deployed.role_nc("detector"), RuleConfig(clear_probes=1)) as rt:
        yield rt


async def test_disk_full_fires_and_resolves_exactly_once_despite_duplicate_probes(
    deployed: RoleServer, runtime: DetectorRuntime, nc: Client, topology_ready: NatsSettings
) -> None:
    s = topology_ready
    await publish(nc, s, probe(node="n1", seq=1, used=40.0))
    for seq in (2, 3):
        await publish(nc, s, probe(node="n1", seq=seq, used=99.0))
        await publish(nc, s, probe(node="n1", seq=seq, used=99.0))  # same Nats-Msg-Id: deduplicated
    # A re-sent probe with a fresh id (a retrying agent) does not duplicate the anomaly either.
    p = probe(node="n1", seq=3, used=99.0)
    await publish(nc, s, p.model_copy(update={"id": "n1-3-retry"}))
    await eventually(lambda: runtime.detector.counters.fired == 1)
    await publish(nc, s, probe(node="n1", seq=4, used=10.0))
    await eventually(lambda: runtime.detector.counters.resolved == 1)

    async def two() -> bool:
        return len(await anomalies(nc, s)) >= 2

    await eventually(two)
    got = await anomalies(nc, s)
    assert [(a.kind, a.status, a.subject, a.node) for a in got] == [
        ("disk_full", "firing", "/", "n1"),
        ("disk_full", "resolved", "/", "n1"),
    ]
    assert got[0].anomaly_key == got[1].anomaly_key
    assert got[0].probe_ids[0] == "n1-2"
    assert violations(deployed.dir) == []


async def test_malformed_probe_goes_to_dlq_and_the_next_good_probe_is_processed(
    deployed: RoleServer, runtime: DetectorRuntime, nc: Client, topology_ready: NatsSettings
) -> None:
    s = topology_ready
    js = nc.jetstream()
    subject = probe_subject("c1", "n2", prefix=s.prefix)
    bad = json.dumps({"schema": "nodeheal.probe/v1", "cluster": "c1", "node": "n2", "source": "agent"}).encode()
    await js.publish(subject, bad)
    await js.publish(subject, b"\xff not json")
    await publish(nc, s, probe(node="n2", seq=1, used=99.5))
    await eventually(lambda: runtime.detector.counters.fired == 1)
    dlq_stream = s.topology().stream(f"{s.stream_prefix}DLQ").name

    async def two_letters() -> bool:
        return len(await read_all(nc, dlq_stream, dlq_subject("detector", prefix=s.prefix))) == 2

    await eventually(two_letters)
    letters = [
        DeadLetter.model_validate_json(d)
        for d in await read_all(nc, dlq_stream, dlq_subject("detector", prefix=s.prefix))
    ]
    assert letters[0].raw == bad
    assert "seq" in letters[0].reason
    assert letters[1].raw == b"\xff not json"
    assert all(letter.subject == subject for letter in letters)
    got = await anomalies(nc, s)
    assert [(a.kind, a.status, a.node) for a in got] == [("disk_full", "firing", "n2")]
    assert violations(deployed.dir) == []


async def test_the_dead_letter_count_is_what_the_dlq_kept_not_what_the_rate_limit_dropped(
    deployed: RoleServer, runtime: DetectorRuntime, nc: Client, topology_ready: NatsSettings
) -> None:
    """A flood of bad probes from one node: the DLQ keeps a burst of them (the per-source rate limit drops
    the rest, counted in `nodeheal_dlq_rate_limited_total`), and the detector's
    `nodeheal_detector_dead_lettered_total{stream="probes"}` counts the letters kept, not the ones dropped."""
    s = topology_ready
    js = nc.jetstream()
    subject = probe_subject("c1", "n-flood", prefix=s.prefix)
    flood = 3 * int(DEFAULT_DLQ_LIMITER.burst)
    dropped_before = REGISTRY.get_sample_value("nodeheal_dlq_rate_limited_total", {"service": "detector"}) or 0.0

    def counted() -> float:
        return float(runtime.metrics.dead.labels("probes")._value.get())

    def dropped() -> float:
        value = REGISTRY.get_sample_value("nodeheal_dlq_rate_limited_total", {"service": "detector"}) or 0.0
        return value - dropped_before

    for i in range(flood):
        await js.publish(subject, b"\xff not json %d" % i)
    await eventually(lambda: counted() + dropped() >= flood)
    dlq_stream = s.topology().stream(f"{s.stream_prefix}DLQ").name
    kept = len(await read_all(nc, dlq_stream, dlq_subject("detector", prefix=s.prefix)))
    assert dropped() > 0, "the flood was not over the rate limit: the test shows nothing"
    assert counted() == kept < flood
    assert violations(deployed.dir) == []


async def test_a_probe_speaks_only_for_the_node_and_source_of_its_subject(
    deployed: RoleServer, runtime: DetectorRuntime, nc: Client, topology_ready: NatsSettings
) -> None:
    """The issue's forgery: node `na`, on its own permitted subject, says it is `nb` with a full disk; and a
    prober-source body on an agent subject, an agent-source body on the prober's subject. All three go to
    the DLQ as "node mismatch"; nothing fires for `nb`; `na`'s own honest probe still fires."""
    s = topology_ready
    js = nc.jetstream()
    forged = probe(node="nb", seq=1, used=99.9)
    own_subject = probe_subject("c1", "na", prefix=s.prefix)
    await js.publish(own_subject, forged.to_json())
    as_prober = probe(node="nc", seq=1, used=99.9).model_copy(update={"source": "prober"})
    await js.publish(probe_subject("c1", "nc", prefix=s.prefix), as_prober.to_json())
    as_agent_on_prober = probe(node="nd", seq=1, used=99.9)
    prober_subject = prober_probe_subject("c1", "nd", prefix=s.prefix)
    await js.publish(prober_subject, as_agent_on_prober.to_json())
    await publish(nc, s, probe(node="na", seq=1, used=99.5))
    await eventually(lambda: runtime.detector.counters.fired == 1)
    dlq_stream = s.topology().stream(f"{s.stream_prefix}DLQ").name

    async def three_letters() -> bool:
        return len(await read_all(nc, dlq_stream, dlq_subject("detector", prefix=s.prefix))) == 3

    await eventually(three_letters)
    letters = [
        DeadLetter.model_validate_json(d)
        for d in await read_all(nc, dlq_stream, dlq_subject("detector", prefix=s.prefix))
    ]
    assert all(letter.reason.startswith("node mismatch") for letter in letters)
    assert [letter.subject for letter in letters] == [
        own_subject,
        probe_subject("c1", "nc", prefix=s.prefix),
        prober_subject,
    ]
    assert "'nb'" in letters[0].reason
    assert letters[0].raw == forged.to_json()
    got = await anomalies(nc, s)
    assert [(a.kind, a.status, a.node) for a in got] == [("disk_full", "firing", "na")]
    assert set(runtime.detector.nodes) == {"c1/na"}  # the forged, mislabelled probes made no node known
    assert violations(deployed.dir) == []


async def test_restart_rebuilds_state_without_a_burst_and_resolves_once(
    deployed: RoleServer, topology_ready: NatsSettings, nc: Client
) -> None:
    s = topology_ready
    settings = DetectorSettings(nats=deployed.role, batch_size=100, tick_s=0.1, rules=RuleConfig(clear_probes=1))
    first = DetectorRuntime(settings=settings, nc=await deployed.role_nc("detector"))
    await first.start()
    for node in ("a", "b", "c"):
        await publish(nc, s, probe(node=node, seq=1, used=99.0 if node == "a" else 30.0))
    await eventually(lambda: first.detector.counters.fired == 1)
    await first.stop()

    second = DetectorRuntime(settings=settings, nc=await deployed.role_nc("detector"))
    await second.start()
    try:
        assert sorted(second.detector.nodes) == ["c1/a", "c1/b", "c1/c"]  # seeded from the last probes
        assert second.detector.firing() == [("c1/a", "disk_full", "/")]  # restored from ANOMALIES
        await publish(nc, s, probe(node="a", seq=2, used=99.0))  # still bad: no second firing
        await publish(nc, s, probe(node="b", seq=2, used=30.0))
        await eventually(lambda: second.detector.counters.probes >= 2)
        await publish(nc, s, probe(node="a", seq=3, used=20.0))
        await eventually(lambda: second.detector.counters.resolved == 1)
        assert second.detector.counters.fired == 0
    finally:
        await second.stop()

    async def two() -> bool:
        return len(await anomalies(nc, s)) >= 2

    await eventually(two)
    assert [(a.node, a.status) for a in await anomalies(nc, s)] == [("a", "firing"), ("a", "resolved")]
    assert violations(deployed.dir) == []


def old_anomaly(node: str, kind: str, subject: str | None, *, hours_ago: float) -> Anomaly:
    """A firing anomaly stored by an earlier detector `hours_ago` (inside the restore lookback)."""
    onset = datetime.fromtimestamp(time.time() - hours_ago * 3600, tz=UTC)
    key = f"c1/{node}/{kind}/{subject or '-'}"
    return Anomaly(
        id=f"old-{key}",
        time=onset,
        cluster="c1",
        node=node,
        anomaly_key=key,
        kind=kind,  # type: ignore[arg-type]
        status="firing",
        severity="critical" if kind == "node_down" else "minor",
        subject=subject,
        fault_onset=onset,
        detected_at=onset,
    )


async def test_a_replayed_anomaly_of_a_node_that_never_probes_brings_back_no_node_to_go_down(
    deployed: RoleServer, topology_ready: NatsSettings, nc: Client
) -> None:
    """Restore at restart replays ANOMALIES. An anomaly fired before cloud events stopped making nodes (a
    maintenance of a node named after its instance id), or of a node decommissioned since (no probe of it in
    PROBES), made a node again, whose silence counted from the restart: node_down after every restart, for a
    machine nobody runs. Now it makes no node until the node's first probe; a node that does come back
    resolves what was restored for it."""
    s = topology_ready
    js = nc.jetstream()
    old = [
        old_anomaly("i-0abc123def", "cloud_maintenance", "reboot:evt-1", hours_ago=3),
        old_anomaly("gone-1", "disk_full", "/", hours_ago=2),
        old_anomaly("gone-2", "node_down", None, hours_ago=1),
    ]
    for a in old:
        await js.publish(f"{s.prefix}.anomaly.{a.cluster}.{a.node}", a.to_json(), headers={"Nats-Msg-Id": a.id})
    rules = RuleConfig(probe_interval_s=0.2)  # silent after 0.5 s
    settings = DetectorSettings(nats=deployed.role, batch_size=100, tick_s=0.1, rules=rules)
    rt = DetectorRuntime(settings=settings, nc=await deployed.role_nc("detector"))
    await rt.start()
    stop_live = asyncio.Event()

    async def live() -> None:  # a node that keeps probing: the feed is alive, silence is judged
        seq = 0
        while not stop_live.is_set():
            seq += 1
            await publish(nc, s, probe(node="live", seq=seq, used=10.0))
            await asyncio.sleep(0.1)

    feeding = asyncio.create_task(live())
    try:
        assert sorted(k for k, _, _ in rt.detector.firing()) == ["c1/gone-1", "c1/gone-2", "c1/i-0abc123def"]
        await asyncio.sleep(1.0)  # past the phantoms' silence timeout counted from the restart
        # the control: a node that probes once, after the phantoms were restored, and falls silent
        await publish(nc, s, probe(node="quiet", seq=1, used=10.0))

        async def quiet_down() -> bool:
            return any(a.node == "quiet" and a.kind == "node_down" for a in await anomalies(nc, s))

        await eventually(quiet_down)  # its silence was judged, and the phantoms' silence began before it
        stored = await anomalies(nc, s)
        assert [a.id for a in stored if a.node in ("i-0abc123def", "gone-1", "gone-2")] == [a.id for a in old]

        # gone-2 comes back: what was restored for it is resolved, once
        await publish(nc, s, probe(node="gone-2", seq=1, used=10.0))

        async def gone2_resolved() -> bool:
            return any(a.node == "gone-2" and a.status == "resolved" for a in await anomalies(nc, s))

        await eventually(gone2_resolved)
        assert [(a.kind, a.status) for a in await anomalies(nc, s) if a.node == "gone-2"] == [
            ("node_down", "firing"),
            ("node_down", "resolved"),
        ]
    finally:
        stop_live.set()
        await feeding
        await rt.stop()
    assert violations(deployed.dir) == []


async def test_two_replicas_split_a_partitioned_fleet_without_sharing_a_node(nats_url: str) -> None:
    # still on the shared server: the partitioned layout is provisioned under unique names (not the deployed ones)
    from nodeheal.runtime.provision import apply_topology
    from tests.support.broker import unique_settings

    s = unique_settings(nats_url).model_copy(update={"probe_partitions": 4})
    nc = await connect(s, name="pytest")
    js = nc.jetstream()
    await apply_topology(js, s.topology())
    again = await apply_topology(js, s.topology())
    assert {c.action for c in again} == {"unchanged"}, [c.describe() for c in again]
    replicas = [
        DetectorRuntime(settings=DetectorSettings(nats=s, batch_size=100, tick_s=0.1, replicas=2, replica=i), nc=nc)
        for i in range(2)
    ]
    try:
        for rt in replicas:
            await rt.start()
        nodes = [f"n{i}" for i in range(24)]
        for node in nodes:
            await publish(nc, s, probe(node=node, seq=1, used=99.0))
        await eventually(lambda: sum(rt.detector.counters.probes for rt in replicas) == len(nodes))
        owned = [set(rt.detector.nodes) for rt in replicas]
        assert owned[0] and owned[1], "each replica owns part of the fleet"
        assert not owned[0] & owned[1], "no node is owned by two replicas"
        assert owned[0] | owned[1] == {f"c1/{n}" for n in nodes}

        async def all_fired() -> bool:
            return len(await anomalies(nc, s)) == len(nodes)

        await eventually(all_fired)
        assert sorted(a.node for a in await anomalies(nc, s)) == sorted(nodes)
    finally:
        for rt in replicas:
            await rt.stop()
        for spec in s.topology().streams:
            await js.delete_stream(spec.name)
        for bucket in s.topology().buckets:
            await js.delete_key_value(bucket.name)
        await nc.close()


async def test_cloud_reboot_event_fires_maintenance_and_resolves_when_terminal_and_back(
    deployed: RoleServer, runtime: DetectorRuntime, nc: Client, topology_ready: NatsSettings
) -> None:
    s = topology_ready
    js = nc.jetstream()
    await publish(nc, s, probe(node="n5", seq=1, used=10.0))
    await eventually(lambda: "c1/n5" in runtime.detector.nodes)

    def event(phase: str) -> CloudSystemEvent:
        return cloud_event("n5", phase, event_id="e-77", instance_id="i-77")

    subject = cloud_subject("c1", "n5", prefix=s.prefix)
    await js.publish(subject, event("in_progress").to_json(), headers={"Nats-Msg-Id": event("in_progress").dedup_id})
    await js.publish(subject, b"{not a cloud event")
    await eventually(lambda: runtime.detector.counters.fired == 1)
    await js.publish(subject, event("completed").to_json(), headers={"Nats-Msg-Id": event("completed").dedup_id})
    node = runtime.detector.nodes["c1/n5"]
    await eventually(lambda: node.cloud is not None and node.cloud["e-77"].terminal)
    await publish(nc, s, probe(node="n5", seq=2, used=10.0, boot="b2"))  # back, after the event's reboot
    await eventually(lambda: runtime.detector.counters.resolved == 1)

    async def two() -> bool:
        return len(await anomalies(nc, s)) >= 2

    await eventually(two)
    got = await anomalies(nc, s)
    assert [(a.kind, a.status, a.subject, a.expected) for a in got] == [
        ("cloud_maintenance", "firing", "reboot:e-77", True),
        ("cloud_maintenance", "resolved", "reboot:e-77", True),
    ]
    assert runtime.detector.counters.explained_reboots == 1
    assert violations(deployed.dir) == []


async def test_a_host_event_announced_before_the_restore_window_is_still_resolved_after_a_restart(
    deployed: RoleServer, topology_ready: NatsSettings, nc: Client
) -> None:
    """A host event announced once, long before a restart (AWS: about two weeks ahead), fires
    `cloud_maintenance`; the detector restarts when both the notice and that anomaly are older than its
    restore window (`restore_lookback_s`, 1 day; 1 s here, with the restart 1.5 s later). When the event
    has run and the node is back, the anomaly still resolves, and the event's reboot is explained."""
    s = topology_ready
    js = nc.jetstream()

    def event(phase: str) -> CloudSystemEvent:
        return cloud_event(
            "n8",
            phase,
            event_id="instance-event-88",
            instance_id="i-88",
            cloud="aws",
            channel="imds",
            event_type="system-reboot",
            not_before=datetime.now(tz=UTC),
        )

    async def send(ev: CloudSystemEvent) -> None:
        await js.publish(cloud_subject("c1", "n8", prefix=s.prefix), ev.to_json(), headers={"Nats-Msg-Id": ev.dedup_id})

    rules = RuleConfig(clear_probes=1)
    async with started_runtime(deployed.role, await deployed.role_nc("detector"), rules) as first:
        await publish(nc, s, probe(node="n8", seq=1, used=10.0))
        await eventually(lambda: "c1/n8" in first.detector.nodes)
        await send(event("scheduled"))
        await eventually(lambda: first.detector.counters.fired == 1)
    await asyncio.sleep(1.5)  # the notice and its anomaly are now older than the restore window
    settings = DetectorSettings(nats=deployed.role, batch_size=100, tick_s=0.1, rules=rules, restore_lookback_s=1.0)
    second = DetectorRuntime(settings=settings, nc=await deployed.role_nc("detector"))
    await second.start()
    try:
        await send(event("completed"))
        node = second.detector.nodes["c1/n8"]
        await eventually(lambda: node.cloud is not None and node.cloud["instance-event-88"].terminal)
        await publish(nc, s, probe(node="n8", seq=2, used=10.0, boot="b2"))  # back, after the host's reboot
        await eventually(lambda: second.detector.counters.resolved == 1)
        assert second.detector.counters.explained_reboots == 1
    finally:
        await second.stop()
    got = [(a.kind, a.status, a.subject) for a in await anomalies(nc, s) if a.node == "n8"]
    assert got == [
        ("cloud_maintenance", "firing", "reboot:instance-event-88"),
        ("cloud_maintenance", "resolved", "reboot:instance-event-88"),
    ]
    assert violations(deployed.dir) == []


async def test_a_re_sent_agent_probe_counts_once_without_a_message_id(
    deployed: RoleServer, nc: Client, topology_ready: NatsSettings
) -> None:
    """Agents publish probes without `Nats-Msg-Id` (the stream keeps no dedupe entry per probe), so a probe
    re-sent after a lost PubAck is stored twice, back to back. With two bad probes needed to fire, the
    second copy of one bad probe must not fire disk_full; the next real bad probe does."""
    s = topology_ready
    settings = DetectorSettings(nats=deployed.role, batch_size=100, tick_s=0.1, rules=RuleConfig(threshold_probes=2))
    rt = DetectorRuntime(settings=settings, nc=await deployed.role_nc("detector"))
    await rt.start()
    try:
        js = nc.jetstream()
        subject = probe_subject("c1", "n1", prefix=s.prefix)
        await js.publish(subject, probe(node="n1", seq=1, used=40.0).to_json())
        bad = probe(node="n1", seq=2, used=99.0).to_json()
        await js.publish(subject, bad)
        await js.publish(subject, bad)  # the agent's re-send: stored again (no message id)
        await eventually(lambda: rt.detector.counters.probes == 3)
        assert rt.detector.counters.fired == 0
        assert rt.detector.counters.duplicates == 1
        await js.publish(subject, probe(node="n1", seq=3, used=99.0).to_json())
        await eventually(lambda: rt.detector.counters.fired == 1)

        async def published() -> bool:  # the counter moves when the rules fire, the publish follows
            return bool(await anomalies(nc, s))

        await eventually(published)
        got = await anomalies(nc, s)
        assert [(a.kind, a.status, a.node) for a in got] == [("disk_full", "firing", "n1")]

        # every stored copy is acknowledged (one `+ACK` each, written together): nothing is redelivered
        async def all_acked() -> bool:
            info = await js.consumer_info(rt.probes_stream, settings.probe_durable)
            return info.num_ack_pending == 0 and info.ack_floor.stream_seq == 4

        await eventually(all_acked)
    finally:
        await rt.stop()
    assert violations(deployed.dir) == []


async def test_a_durable_with_per_probe_acks_is_recreated_with_cumulative_ones_where_its_ack_floor_ended(
    deployed: RoleServer, nc: Client, topology_ready: NatsSettings
) -> None:
    """The probe durable of an older detector (AckPolicy.EXPLICIT) is recreated with AckPolicy.ALL at start,
    from its ack floor: the probes above the floor come again (those acked one by one above it too: a
    re-sent probe counts once), none below."""
    from nodeheal.runtime.jetstream import ensure_pull_consumer

    s = topology_ready
    settings = DetectorSettings(nats=deployed.role, batch_size=100, tick_s=0.1)
    js = nc.jetstream()
    stream = s.topology().stream(f"{s.stream_prefix}PROBES").name
    await ensure_pull_consumer(
        js,
        stream=stream,
        durable=settings.probe_durable,
        filter_subjects=settings.probe_filters(),
        ack_policy=AckPolicy.EXPLICIT,
        deliver_policy=DeliverPolicy.NEW,
    )
    for seq in range(1, 5):
        await publish(nc, s, probe(node="n1", seq=seq, used=10.0))
    sub = await js.pull_subscribe_bind(settings.probe_durable, stream)
    got = await sub.fetch(4, timeout=2)
    await got[0].ack_sync()
    await got[2].ack_sync()  # floor 1; 3 acked above it; 2 and 4 not
    await sub.unsubscribe()
    rt = DetectorRuntime(settings=settings, nc=await deployed.role_nc("detector"))
    await rt.start()
    try:
        info = await js.consumer_info(stream, settings.probe_durable)
        assert info.config.ack_policy == AckPolicy.ALL
        await eventually(lambda: rt.detector.counters.probes == 3)  # seq 2, 3, 4

        async def acked() -> bool:
            now = await js.consumer_info(stream, settings.probe_durable)
            return now.num_ack_pending == 0 and now.ack_floor.stream_seq == 4

        await eventually(acked)
        assert rt.detector.counters.probes == 3
    finally:
        await rt.stop()
    assert violations(deployed.dir) == []


async def test_a_bad_probe_whose_dead_letter_failed_is_not_covered_by_the_next_cumulative_ack(
    deployed: RoleServer, runtime: DetectorRuntime, nc: Client, topology_ready: NatsSettings
) -> None:
    """Acks are cumulative: the next chunk's ack covers an earlier chunk that was not acked. So a chunk whose dead
    letters could not be sent (the DLQ stream away) keeps them, and they are sent before the next ack."""
    from nodeheal.runtime.provision import apply_stream

    s = topology_ready
    js = nc.jetstream()
    dlq = s.topology().stream(f"{s.stream_prefix}DLQ")
    probes_stream = s.topology().stream(f"{s.stream_prefix}PROBES").name
    await js.delete_stream(dlq.name)
    await js.publish(probe_subject("c1", "n7", prefix=s.prefix), b"\xff not json")

    async def fetched_not_acked() -> bool:
        info = await js.consumer_info(probes_stream, runtime.settings.probe_durable)
        return info.delivered.stream_seq >= 1 and info.num_ack_pending == 1

    await eventually(fetched_not_acked)
    await asyncio.sleep(1.0)  # the dead letter failed at least once
    await apply_stream(js, dlq)
    await publish(nc, s, probe(node="n7", seq=1, used=10.0))  # the next chunk: its ack covers the bad probe

    async def acked() -> bool:
        info = await js.consumer_info(probes_stream, runtime.settings.probe_durable)
        return info.num_ack_pending == 0 and info.ack_floor.stream_seq == 2

    await eventually(acked)
    letters = await read_all(nc, dlq.name, dlq_subject("detector", prefix=s.prefix))
    assert [DeadLetter.model_validate_json(d).raw for d in letters] == [b"\xff not json"]
    assert violations(deployed.dir) == []


async def test_a_dead_letter_write_failing_mid_chunk_does_not_store_the_ones_before_it_twice(
    deployed: RoleServer, nc: Client, topology_ready: NatsSettings
) -> None:
    """Two bad probes in one chunk; the DLQ takes the first and refuses the second (its letter is over the
    stream's message size for a while). The chunk is retried until the DLQ takes the second: the DLQ then
    holds each probe's letter once (before, the first was stored again on every retry)."""
    import dataclasses

    from nodeheal.runtime.provision import apply_stream

    s = topology_ready
    js = nc.jetstream()
    dlq = s.topology().stream(f"{s.stream_prefix}DLQ")
    probes_stream = s.topology().stream(f"{s.stream_prefix}PROBES").name
    info = await js.stream_info(dlq.name)
    await js.update_stream(config=dataclasses.replace(info.config, max_msg_size=1500))
    rules = RuleConfig(clear_probes=1)
    async with started_runtime(deployed.role, await deployed.role_nc("detector"), rules):
        pass  # the probe durable exists; both probes are published before the detector pulls again: one chunk
    small, large = b"\xff not json", b"\xfe" + b"x" * 2000
    await js.publish(probe_subject("c1", "n7", prefix=s.prefix), small)
    await js.publish(probe_subject("c1", "n8", prefix=s.prefix), large)
    async with started_runtime(deployed.role, await deployed.role_nc("detector"), rules) as rt:

        async def both_fetched_not_acked() -> bool:
            info = await js.consumer_info(probes_stream, rt.settings.probe_durable)
            return info.delivered.stream_seq >= 2 and info.num_ack_pending == 2

        await eventually(both_fetched_not_acked)
        await asyncio.sleep(1.5)  # the chunk's dead letters retried several times (every 0.5 s)
        await apply_stream(js, dlq)  # the DLQ takes the large letter again
        await publish(nc, s, probe(node="n9", seq=1, used=10.0))  # the next chunk: its ack covers the bad ones

        async def acked() -> bool:
            info = await js.consumer_info(probes_stream, rt.settings.probe_durable)
            return info.num_ack_pending == 0 and info.ack_floor.stream_seq == 3

        await eventually(acked)
    letters = await read_all(nc, dlq.name, dlq_subject("detector", prefix=s.prefix))
    assert sorted(DeadLetter.model_validate_json(d).raw for d in letters) == sorted([small, large])
    assert violations(deployed.dir) == []


async def test_a_fresh_durable_and_a_clean_restart_need_no_read_of_unfinished_probes(
    deployed: RoleServer, nc: Client, topology_ready: NatsSettings
) -> None:
    """The stream is read for probes a killed process left (test_detector_kill.py) only when the first chunk does
    not hold every delivery since the ack floor: a fresh durable and a restart after a clean stop skip it."""
    s = topology_ready
    for round_ in (1, 2):
        async with started_runtime(deployed.role, await deployed.role_nc("detector"), RuleConfig()) as rt:
            for seq in range(1, 4):
                await publish(nc, s, probe(node="n9", seq=10 * round_ + seq, used=10.0))
            await eventually(lambda rt=rt: rt.detector.counters.probes == 3)
            assert rt.unfinished_reads == 0, round_
    assert violations(deployed.dir) == []
