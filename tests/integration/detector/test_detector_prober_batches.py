"""The detector reads the prober's `ProberResults` batches from a real PROBES stream: each entry is judged as
the single prober probe it replaces (the same anomaly, the same evidence), a batch delivered twice counts once,
a bad batch goes to the DLQ whole with the reason and the loop goes on, and with PROBES partitioned each
replica judges the nodes of its own partitions only."""

from __future__ import annotations

import asyncio
import json

import pytest
from nats.aio.client import Client

from nodeheal.cloud_events.prober.batch import Batch, ResultBatcher
from nodeheal.detector.handlers import DetectorRuntime
from nodeheal.detector.rules import RuleConfig
from nodeheal.detector.settings import DetectorSettings
from nodeheal.runtime.connect import connect
from nodeheal.runtime.settings import NatsSettings
from nodeheal.schemas import DeadLetter, NodeProbe, Reachability
from nodeheal.schemas.prober import result_id
from nodeheal.schemas.subjects import dlq_subject, probe_partition, probe_subject, prober_probe_subject
from tests.integration.deploy.natsauth_loader import RoleServer, admin_stands_in, violations
from tests.integration.detector.test_detector_nats import anomalies, eventually, probe, publish, read_all

pytestmark = pytest.mark.nats

# silence after 1 s; a verdict taken after it began is waited for up to 3.75 s (the prober's round 3 s)
RULES = RuleConfig(
    probe_interval_s=0.5, down_after_missed=2.0, warmup_s=0, silence_recheck_s=0.2, prober_interval_s=3.0
)
DARK = [
    {"check": "tcp", "target": "10.0.0.1:10250", "ok": False, "error": "timeout after 2s"},
    {"check": "kubelet_healthz", "target": "https://10.0.0.1:10250/healthz", "ok": False, "error": "timeout after 2s"},
]
HUNG = [
    {"check": "tcp", "target": "10.0.0.2:10250", "ok": True, "latency_ms": 0.4},
    {"check": "kubelet_healthz", "target": "https://10.0.0.2:10250/healthz", "ok": False, "error": "HTTP 500"},
]
FINE = [
    {"check": "tcp", "target": "10.0.0.3:10250", "ok": True, "latency_ms": 0.4},
    {"check": "kubelet_healthz", "target": "https://10.0.0.3:10250/healthz", "ok": True, "latency_ms": 2.0},
]


def batches(settings: NatsSettings, entries: list[tuple[str, list[dict[str, object]]]]) -> list[Batch]:
    """The prober's own batcher, as the prober process sends them."""
    batcher = ResultBatcher(cluster="c1", partitions=settings.probe_partitions, prefix=settings.prefix, seq=1)
    out = [b for node, checks in entries for b in batcher.add(node, checks)]
    return out + batcher.drain()


async def send(nc: Client, batch: Batch, *, msg_id: str | None = None) -> None:
    await nc.jetstream().publish(batch.subject, batch.body, headers={"Nats-Msg-Id": msg_id or batch.msg_id})


def single(node: str, checks: list[dict[str, object]]) -> NodeProbe:
    """The form before batches: one prober NodeProbe."""
    return NodeProbe(
        id=f"single-{node}",
        cluster="c1",
        node=node,
        source="prober",
        seq=1,
        reachability=tuple(Reachability.model_validate(c) for c in checks),
    )


nc, topology_ready = admin_stands_in()  # the tests run on the per-role server; admin stands in


async def test_a_dark_node_found_through_a_batch_is_the_same_anomaly_as_through_a_single_prober_probe(
    deployed: RoleServer, topology_ready: NatsSettings, nc: Client
) -> None:
    s = topology_ready
    rt = DetectorRuntime(
        settings=DetectorSettings(nats=deployed.role, batch_size=100, tick_s=0.1, rules=RULES),
        nc=await deployed.role_nc("detector"),
    )
    await rt.start()
    try:
        nodes = ("dark", "hung", "fine", "dark-single")
        for node in nodes:  # every node's agent probe, and a verdict from before the silence (a fine node)
            await publish(nc, s, probe(node=node, seq=1, used=10.0))
        for batch in batches(s, [(node, FINE) for node in nodes[:3]]):
            await send(nc, batch)
        await nc.jetstream().publish(
            prober_probe_subject("c1", "dark-single", prefix=s.prefix), single("dark-single", FINE).to_json()
        )
        await eventually(lambda: rt.detector.counters.probes == 8)
        await asyncio.sleep(1.5)  # every agent went silent: the detector waits for a verdict taken since
        await publish(nc, s, probe(node="fine", seq=2, used=10.0))  # only `fine`'s agent is back
        [batch] = batches(s, [("dark", DARK), ("hung", HUNG), ("fine", FINE)])
        await send(nc, batch)
        await nc.jetstream().publish(
            prober_probe_subject("c1", "dark-single", prefix=s.prefix), single("dark-single", DARK).to_json()
        )

        async def three() -> bool:
            return len([a for a in await anomalies(nc, s) if a.status == "firing"]) >= 3

        await eventually(three)
        await asyncio.sleep(0.5)
        fired = {a.node: a for a in await anomalies(nc, s) if a.status == "firing"}
        assert {node: a.kind for node, a in fired.items()} == {
            "dark": "node_down",
            "hung": "node_hang",
            "dark-single": "node_down",
        }
        # the evidence names the batch's entry, as it named the single probe
        batch_id = json.loads(batch.body)["id"]
        assert (
            result_id(batch_id, 0) in fired["dark"].probe_ids and "single-dark-single" in fired["dark-single"].probe_ids
        )
        assert result_id(batch_id, 1) in fired["hung"].probe_ids
        same = ("prober_fresh", "reachable", "unreachable")
        assert {k: fired["dark"].evidence[0].details[k] for k in same} == {
            k: fired["dark-single"].evidence[0].details[k] for k in same
        }
        assert fired["dark"].evidence[0].details["unreachable"] == ["kubelet_healthz", "tcp"]
        assert fired["hung"].evidence[0].details["reachable"] == ["tcp"]
        assert rt.metrics.prober_results._value.get() == 6  # type: ignore[attr-defined]
    finally:
        await rt.stop()
    assert violations(deployed.dir) == []


async def test_a_batch_stored_twice_counts_once(deployed: RoleServer, topology_ready: NatsSettings, nc: Client) -> None:
    s = topology_ready
    rt = DetectorRuntime(
        settings=DetectorSettings(nats=deployed.role, batch_size=100, tick_s=0.1, rules=RULES),
        nc=await deployed.role_nc("detector"),
    )
    await rt.start()
    try:
        [batch] = batches(s, [("a", FINE), ("b", FINE)])
        await send(nc, batch)
        await send(nc, batch)  # the same Nats-Msg-Id: the stream stores it once
        await send(nc, batch, msg_id="outside-the-window")  # stored again (e.g. re-sent after the window)
        await publish(nc, s, probe(node="a", seq=1, used=10.0))
        await eventually(lambda: rt.detector.counters.probes == 3)
        assert rt.detector.counters.duplicates == 1
        assert rt.metrics.prober_results._value.get() == 2  # type: ignore[attr-defined]
    finally:
        await rt.stop()
    assert violations(deployed.dir) == []


async def test_a_bad_batch_goes_to_the_dlq_whole_and_the_next_one_counts(
    deployed: RoleServer, topology_ready: NatsSettings, nc: Client
) -> None:
    s = topology_ready
    js = nc.jetstream()
    rt = DetectorRuntime(
        settings=DetectorSettings(nats=deployed.role, batch_size=100, tick_s=0.1, rules=RULES),
        nc=await deployed.role_nc("detector"),
    )
    await rt.start()
    try:
        [good] = batches(s, [("a", FINE), ("b", DARK)])
        doc = json.loads(good.body)
        other_cluster = json.dumps(doc | {"id": "x1", "cluster": "c2"}).encode()
        wrong_layout = json.dumps(doc | {"id": "x2", "partitions": 4}).encode()
        no_results = json.dumps(doc | {"id": "x3", "results": []}).encode()
        await js.publish(good.subject, other_cluster)
        await js.publish(good.subject, wrong_layout)
        await js.publish(good.subject, no_results)
        await js.publish(good.subject, b"\xff not json")
        # a batch on an agent's subject (what an agent could publish): it is not a probe
        await js.publish(probe_subject("c1", "a", prefix=s.prefix), good.body)
        await send(nc, good)
        await eventually(lambda: rt.metrics.prober_results._value.get() == 2)  # type: ignore[attr-defined]
        dlq_stream = s.topology().stream(f"{s.stream_prefix}DLQ").name

        async def five() -> bool:
            return len(await read_all(nc, dlq_stream, dlq_subject("detector", prefix=s.prefix))) == 5

        await eventually(five)
        letters = [
            DeadLetter.model_validate_json(d)
            for d in await read_all(nc, dlq_stream, dlq_subject("detector", prefix=s.prefix))
        ]
        reasons = [letter.reason for letter in letters]
        assert reasons[0].startswith("node mismatch") and "'c2'" in reasons[0]
        assert reasons[1].startswith("partition mismatch") and "4 partitions" in reasons[1]
        assert reasons[2].startswith("prober results rejected") and "results" in reasons[2]
        assert reasons[3].startswith("prober results rejected")
        assert reasons[4].startswith("probe rejected")  # decoded as a probe: a batch is no NodeProbe
        assert [letter.raw for letter in letters[:4]] == [other_cluster, wrong_layout, no_results, b"\xff not json"]
        assert set(rt.detector.nodes) == {"c1/a", "c1/b"}  # from the good batch only
        assert rt.liveness() == (True, "ok")
    finally:
        await rt.stop()
    assert violations(deployed.dir) == []


async def test_two_replicas_judge_the_batch_entries_of_their_own_partitions(nats_url: str) -> None:
    # still on the shared server: the partitioned layout is provisioned under unique names (not the deployed ones)
    from nodeheal.runtime.provision import apply_topology
    from tests.support.broker import remove_topology, unique_settings

    s = unique_settings(nats_url).model_copy(update={"probe_partitions": 4})
    nc = await connect(s, name="pytest")
    js = nc.jetstream()
    await apply_topology(js, s.topology())
    replicas = [
        DetectorRuntime(settings=DetectorSettings(nats=s, batch_size=100, tick_s=0.1, replicas=2, replica=i), nc=nc)
        for i in range(2)
    ]
    try:
        for rt in replicas:
            await rt.start()
        nodes = [f"n{i}" for i in range(40)]
        sent = batches(s, [(node, FINE) for node in nodes])
        assert len(sent) == 4  # one message per partition
        for batch in sent:
            await send(nc, batch)
        await eventually(lambda: sum(rt.detector.counters.probes for rt in replicas) == len(nodes))
        owned = [set(rt.detector.nodes) for rt in replicas]
        assert owned[0] and owned[1] and not owned[0] & owned[1]
        assert owned[0] | owned[1] == {f"c1/{n}" for n in nodes}
        # each replica's nodes are the ones its partitions' agent probes go to
        for node in nodes:
            await publish(nc, s, probe(node=node, seq=1, used=10.0))
        await eventually(lambda: sum(rt.detector.counters.probes for rt in replicas) == 2 * len(nodes))
        assert [set(rt.detector.nodes) for rt in replicas] == owned
        assert all(rt.detector.counters.probes == 2 * len(owned[i]) for i, rt in enumerate(replicas))
        # a batch holding a node of another partition (placed wrong): to the DLQ whole, no replica judges it
        doc = json.loads(sent[0].body)
        stranger = next(n for n in (f"x{i}" for i in range(100)) if probe_partition("c1", n, 4) != doc["partition"])
        wrong = doc | {"id": "misplaced", "results": [*doc["results"], {"node": stranger, "reachability": DARK}]}
        await js.publish(sent[0].subject, json.dumps(wrong).encode())
        dlq_stream = s.topology().stream(f"{s.stream_prefix}DLQ").name

        async def letter() -> list[DeadLetter]:
            raw = await read_all(nc, dlq_stream, dlq_subject("detector", prefix=s.prefix))
            return [DeadLetter.model_validate_json(d) for d in raw]

        await eventually(letter)
        [dead] = await letter()
        assert dead.reason.startswith("partition mismatch") and repr(stranger) in dead.reason
        assert all(f"c1/{stranger}" not in rt.detector.nodes for rt in replicas)
    finally:
        for rt in replicas:
            await rt.stop()
        await remove_topology(js, s)
        await nc.close()


async def test_sigkill_after_fetching_a_batch_loses_none_of_its_results(
    deployed: RoleServer, topology_ready: NatsSettings, nc: Client
) -> None:
    """The detector is killed right after fetching a batch (`NODEHEAL_TEST_KILL_AT=detector.fetched`); the
    restarted process judges the batch before its first (cumulative) ack covers it: the hung node it reports is a
    `node_hang`. Had the batch been lost, the node's silence would have no verdict and be a `node_down`."""
    from nodeheal.sim.embedded import free_port
    from tests.integration.detector.test_detector_kill import ready, start, stop

    s = topology_ready
    rules = {
        "NODEHEAL_DETECTOR_RULES__PROBE_INTERVAL_S": "1",
        "NODEHEAL_DETECTOR_RULES__DOWN_AFTER_MISSED": "2",
        "NODEHEAL_DETECTOR_RULES__WARMUP_S": "0",
    }
    await publish(nc, s, probe(node="h1", seq=1, used=10.0))  # h1's last agent probe, before the detector's durable
    port = free_port()
    first = start(deployed.role, port, NODEHEAL_TEST_KILL_AT="detector.fetched", **rules)
    second = None
    try:
        await ready(first, port)
        await asyncio.sleep(2.5)  # h1's agent is silent by now
        [batch] = batches(s, [("h1", HUNG)])
        await send(nc, batch)
        assert await asyncio.to_thread(first.wait, 30) == -9, "the hook point was not reached"
        second = start(deployed.role, port, **rules)
        await ready(second, port)
        for seq in range(1, 4):  # later probes of the fleet: the restarted detector acks them
            await publish(nc, s, probe(node="k2", seq=seq, used=10.0))
            await asyncio.sleep(0.2)

        async def h1() -> list[str]:
            return [a.kind for a in await anomalies(nc, s) if a.node == "h1" and a.status == "firing"]

        await eventually(h1, timeout_s=30)
        await asyncio.sleep(1.0)
        assert await h1() == ["node_hang"]
    finally:
        stop(first, second)
    assert violations(deployed.dir) == []
