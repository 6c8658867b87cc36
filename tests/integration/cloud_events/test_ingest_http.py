"""The ingest HTTP endpoint against a real nats-server: POST → CLOUD with the right subject and
Nats-Msg-Id; duplicates stored once; bad auth / oversize / garbage → 4xx and a DLQ entry with the
raw bytes, but unauthenticated and oversized requests are only counted, never stored; fuzzed bodies
always end as 2xx-and-published or 4xx-and-DLQ.

The ingest runs as deployed: under the `ingest` role's credential and inbox on a nats-server of the test's own with
the per-role authorization (the admin stands in for the inventory watcher and reads the streams back), and the
server logs no permission violation."""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import prometheus_client
import pytest
from aiohttp.test_utils import TestClient, TestServer
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from nats.js.client import JetStreamContext

from nodeheal.cloud_events.ingest.app import RUNTIME, build_app
from nodeheal.cloud_events.ingest.auth import sign
from nodeheal.cloud_events.ingest.settings import IngestSettings
from nodeheal.cloud_events.ingest.sink import remap_message_id
from nodeheal.runtime.settings import NatsSettings
from nodeheal.schemas import CloudSystemEvent, DeadLetter, NodeInventory, cloud_event_message_id
from nodeheal.schemas.inventory import instance_key
from nodeheal.schemas.subjects import cloud_subject, dlq_subject
from tests.integration.deploy.natsauth_loader import RoleServer, admin_stands_in, deployed_as

pytestmark = pytest.mark.nats


deployed = deployed_as("ingest")  # the service under its role; no violation logged


@pytest.fixture
def ingest_nats(deployed: RoleServer) -> NatsSettings:
    """The ingest's NATS settings as deployed (the `ingest` role's credential and inbox prefix)."""
    return deployed.role


nc, topology_ready = admin_stands_in()  # the admin stands in for the inventory watcher and reads the streams

DATA = Path(__file__).resolve().parents[2] / "data" / "cloud-events"
TOKEN = "t0ken-for-tests"
SECRET = "hmac-secret-for-tests"
REBOOT = (DATA / "alibaba-cms-systemmaintenance-reboot-scheduled-1.json").read_bytes()
INSTANCE = "i-bp1ecr********5go2go"


def make_settings(nats: NatsSettings, **overrides: Any) -> IngestSettings:
    values: dict[str, Any] = {
        "nats": nats,
        "cluster": "prod-1",
        "auth_token": TOKEN,
        "hmac_secret": SECRET,
        "max_body_bytes": 4096,
        "inventory_cache_ttl_s": 0,
    }
    values.update(overrides)
    return IngestSettings(**values)


@pytest.fixture
async def client(ingest_nats: NatsSettings) -> AsyncIterator[TestClient[Any, Any]]:
    app = build_app(make_settings(ingest_nats))
    async with TestClient(TestServer(app)) as test_client:
        yield test_client


async def put_inventory(js: JetStreamContext, nats: NatsSettings, *, instance: str, node: str) -> None:
    kv = await js.key_value(f"{nats.bucket_prefix}-inventory")
    record = NodeInventory(cluster="prod-1", node=node, instance_id=instance)
    await kv.put(instance_key(instance), record.to_json())


async def stream_count(js: JetStreamContext, nats: NatsSettings, name: str) -> int:
    info = await js.stream_info(f"{nats.stream_prefix}{name}")
    return int(info.state.messages)


async def last_dlq(js: JetStreamContext, nats: NatsSettings) -> DeadLetter:
    msg = await js.get_last_msg(f"{nats.stream_prefix}DLQ", dlq_subject("cloud-events-ingest", prefix=nats.prefix))
    return DeadLetter.model_validate_json(msg.data)


BEARER = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"}


async def test_post_publishes_to_the_mapped_node_with_the_deterministic_msg_id(
    client: TestClient[Any, Any], js: JetStreamContext, topology_ready: NatsSettings
) -> None:
    await put_inventory(js, topology_ready, instance=INSTANCE, node="cn-hangzhou.10.0.0.7")
    response = await client.post("/v1/events/alibaba-cms", data=REBOOT, headers=BEARER)
    assert response.status == 200, await response.text()
    answer = await response.json()
    expected_id = cloud_event_message_id("alibaba", "e-bp11trd********pqum2", "scheduled")
    subject = cloud_subject("prod-1", "cn-hangzhou.10.0.0.7", prefix=topology_ready.prefix)
    assert answer["events"] == [
        {
            "id": expected_id,
            "provider_event_id": "e-bp11trd********pqum2",
            "phase": "scheduled",
            "subject": subject,
            "node": "cn-hangzhou.10.0.0.7",
            "node_mapped": True,
            "outcome": "published",
        }
    ]
    stored = await js.get_last_msg(f"{topology_ready.stream_prefix}CLOUD", subject)
    assert stored.headers is not None and stored.headers["Nats-Msg-Id"] == expected_id
    event = CloudSystemEvent.model_validate_json(stored.data)
    assert (event.node, event.cluster, event.action, event.phase, event.node_mapped) == (
        "cn-hangzhou.10.0.0.7",
        "prod-1",
        "reboot",
        "scheduled",
        True,
    )


async def test_duplicate_post_is_stored_once_even_across_a_restart(
    client: TestClient[Any, Any], js: JetStreamContext, topology_ready: NatsSettings, ingest_nats: NatsSettings
) -> None:
    for _ in range(3):
        response = await client.post("/v1/events/alibaba-cms", data=REBOOT, headers=BEARER)
        assert response.status == 200
    assert [e["outcome"] for e in (await response.json())["events"]] == ["duplicate"]
    # a second replica with an empty ledger: the stream's Nats-Msg-Id dedup keeps it at one
    fresh = build_app(make_settings(ingest_nats, ledger_seed_lookback_s=0))
    async with TestClient(TestServer(fresh)) as other:
        again = await other.post("/v1/events/alibaba-cms", data=REBOOT, headers=BEARER)
        assert again.status == 200
        assert [e["outcome"] for e in (await again.json())["events"]] == ["published"]
    # a restarted replica seeds its ledger from CLOUD and does not even try
    seeded = build_app(make_settings(ingest_nats))
    async with TestClient(TestServer(seeded)) as restarted:
        third = await restarted.post("/v1/events/alibaba-cms", data=REBOOT, headers=BEARER)
        assert [e["outcome"] for e in (await third.json())["events"]] == ["duplicate"]
    assert await stream_count(js, topology_ready, "CLOUD") == 1


async def test_late_non_terminal_after_terminal_is_not_published(
    client: TestClient[Any, Any], js: JetStreamContext, topology_ready: NatsSettings
) -> None:
    body = json.loads(REBOOT)
    executed = {**body, "content": {**body["content"], "eventStatus": "Executed"}}
    executing = {**body, "content": {**body["content"], "eventStatus": "Executing"}}
    first = await client.post("/v1/events/alibaba-cms", data=json.dumps(executed), headers=BEARER)
    late = await client.post("/v1/events/alibaba-cms", data=json.dumps(executing), headers=BEARER)
    assert [e["outcome"] for e in (await first.json())["events"]] == ["published"]
    assert [e["outcome"] for e in (await late.json())["events"]] == ["stale"]
    assert await stream_count(js, topology_ready, "CLOUD") == 1


async def test_unknown_instance_is_published_under_its_instance_id(
    client: TestClient[Any, Any], js: JetStreamContext, topology_ready: NatsSettings
) -> None:
    response = await client.post("/v1/events/alibaba-cms", data=REBOOT, headers=BEARER)
    (delivery,) = (await response.json())["events"]
    assert (delivery["node"], delivery["node_mapped"]) == (INSTANCE, False)
    stored = await js.get_last_msg(f"{topology_ready.stream_prefix}CLOUD", delivery["subject"])
    assert stored.headers is not None and stored.headers["Nodeheal-Node-Mapped"] == "false"
    assert CloudSystemEvent.model_validate_json(stored.data).node_mapped is False


async def subject_count(js: JetStreamContext, nats: NatsSettings, subject: str) -> int:
    info = await js.stream_info(f"{nats.stream_prefix}CLOUD", subjects_filter=subject)
    return int((info.state.subjects or {}).get(subject, 0))


async def post_outcomes(client: TestClient[Any, Any]) -> list[tuple[str, str, bool]]:
    response = await client.post("/v1/events/alibaba-cms", data=REBOOT, headers=BEARER)
    assert response.status == 200, await response.text()
    return [(e["node"], e["outcome"], e["node_mapped"]) for e in (await response.json())["events"]]


async def assert_remapped_once(js: JetStreamContext, nats: NatsSettings) -> None:
    worker = cloud_subject("prod-1", "worker-7", prefix=nats.prefix)
    assert await subject_count(js, nats, worker) == 1
    assert await subject_count(js, nats, cloud_subject("prod-1", INSTANCE, prefix=nats.prefix)) == 1
    assert await stream_count(js, nats, "CLOUD") == 2
    stored = await js.get_last_msg(f"{nats.stream_prefix}CLOUD", worker)
    transition = cloud_event_message_id("alibaba", "e-bp11trd********pqum2", "scheduled")
    assert stored.headers is not None
    assert stored.headers["Nats-Msg-Id"] == remap_message_id(transition, "worker-7")
    assert stored.headers["Nodeheal-Node-Mapped"] == "true"
    event = CloudSystemEvent.model_validate_json(stored.data)
    assert (event.node, event.node_mapped, event.phase) == ("worker-7", True, "scheduled")


async def test_an_event_published_unmapped_is_sent_to_the_node_once_the_inventory_knows_it(
    client: TestClient[Any, Any], js: JetStreamContext, topology_ready: NatsSettings
) -> None:
    assert await post_outcomes(client) == [(INSTANCE, "published", False)]
    await put_inventory(js, topology_ready, instance=INSTANCE, node="worker-7")
    # the same notice again (CMS retry, the poll): the node has never heard of it
    assert await post_outcomes(client) == [("worker-7", "remapped", True)]
    assert await post_outcomes(client) == [("worker-7", "duplicate", True)]
    await assert_remapped_once(js, topology_ready)


async def test_the_remap_survives_an_ingest_restart_on_either_side(
    client: TestClient[Any, Any], js: JetStreamContext, topology_ready: NatsSettings, ingest_nats: NatsSettings
) -> None:
    assert await post_outcomes(client) == [(INSTANCE, "published", False)]
    await put_inventory(js, topology_ready, instance=INSTANCE, node="worker-7")
    # restarted: the ledger seeded from CLOUD knows the transition went out unmapped
    async with TestClient(TestServer(build_app(make_settings(ingest_nats)))) as restarted:
        assert await post_outcomes(restarted) == [("worker-7", "remapped", True)]
        assert await post_outcomes(restarted) == [("worker-7", "duplicate", True)]
    # restarted again: the seed knows it went to worker-7 too
    async with TestClient(TestServer(build_app(make_settings(ingest_nats)))) as again:
        assert await post_outcomes(again) == [("worker-7", "duplicate", True)]
    await assert_remapped_once(js, topology_ready)


async def wait_for_node_copy(js: JetStreamContext, nats: NatsSettings) -> None:
    worker = cloud_subject("prod-1", "worker-7", prefix=nats.prefix)
    for _ in range(100):
        if await subject_count(js, nats, worker):
            return
        await asyncio.sleep(0.1)
    raise AssertionError("the event never reached worker-7's subject")


async def test_a_notice_pushed_once_reaches_its_node_when_the_inventory_learns_the_instance(
    js: JetStreamContext, topology_ready: NatsSettings, ingest_nats: NatsSettings
) -> None:
    """A CMS push of a maintenance notice for a machine that joined the cluster minutes later. Before, the remap
    happened only when the same notice was reported again, and a push channel reports it once: the node first
    heard of it when the host went down. Now the ingest looks the kept unmapped events up again every
    `unmapped_recheck_s` and sends this one to its node, with no second report; a restart keeps doing it."""
    settings = make_settings(ingest_nats, unmapped_recheck_s=0.2)
    async with TestClient(TestServer(build_app(settings))) as client:
        assert await post_outcomes(client) == [(INSTANCE, "published", False)]
        await asyncio.sleep(0.6)  # rounds ran while the inventory did not know it: nothing sent
        assert await stream_count(js, topology_ready, "CLOUD") == 1
        await put_inventory(js, topology_ready, instance=INSTANCE, node="worker-7")
        await wait_for_node_copy(js, topology_ready)
        sink = client.server.app[RUNTIME].sink
        assert sink is not None and not sink.pending_unmapped
        await asyncio.sleep(0.6)  # later rounds send nothing more
        assert await post_outcomes(client) == [("worker-7", "duplicate", True)]
    await assert_remapped_once(js, topology_ready)


async def test_an_ingest_restarted_before_the_inventory_learns_the_instance_still_sends_it(
    js: JetStreamContext, topology_ready: NatsSettings, ingest_nats: NatsSettings
) -> None:
    async with TestClient(TestServer(build_app(make_settings(ingest_nats, unmapped_recheck_s=0)))) as client:
        assert await post_outcomes(client) == [(INSTANCE, "published", False)]
    # a new process: what went out unmapped comes back from CLOUD with the ledger's seed
    async with TestClient(TestServer(build_app(make_settings(ingest_nats, unmapped_recheck_s=0.2)))) as again:
        sink = again.server.app[RUNTIME].sink
        assert sink is not None and len(sink.pending_unmapped) == 1
        await put_inventory(js, topology_ready, instance=INSTANCE, node="worker-7")
        await wait_for_node_copy(js, topology_ready)
    await assert_remapped_once(js, topology_ready)


async def test_two_reports_of_one_event_at_once_cannot_both_pass_as_new(
    client: TestClient[Any, Any], js: JetStreamContext, topology_ready: NatsSettings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The poll's `Executing` is published and its acknowledgement is still on the way when the CMS push of
    `Scheduled` arrives. Before, the push found nothing recorded yet, passed as new and was stored after
    `in_progress`: a reader keeping the latest report went back to `scheduled`."""
    sink = client.server.app[RUNTIME].sink
    assert sink is not None
    monkeypatch.setattr(sink.inventory, "kv", None)  # no lookup: the second report runs to its first wait at once
    stored_first, release, second_in = asyncio.Event(), asyncio.Event(), asyncio.Event()
    real_publish, real_submit = sink.js.publish, sink.submit

    async def slow_ack(*args: Any, **kwargs: Any) -> Any:
        ack = await real_publish(*args, **kwargs)
        if not stored_first.is_set():
            stored_first.set()
            await release.wait()
        return ack

    async def submit(events: list[CloudSystemEvent], *, node: str | None = None) -> Any:
        if stored_first.is_set():
            second_in.set()
        return await real_submit(events, node=node)

    monkeypatch.setattr(sink.js, "publish", slow_ack)
    monkeypatch.setattr(sink, "submit", submit)
    body = json.loads(REBOOT)
    executing = json.dumps({**body, "content": {**body["content"], "eventStatus": "Executing"}})
    poll = asyncio.create_task(client.post("/v1/events/alibaba-cms", data=executing, headers=BEARER))
    await stored_first.wait()
    push = asyncio.create_task(client.post("/v1/events/alibaba-cms", data=REBOOT, headers=BEARER))
    await second_in.wait()  # the push is in the sink and has gone as far as it can
    release.set()
    first, second = await poll, await push
    assert [e["outcome"] for e in (await first.json())["events"]] == ["published"]
    assert [e["outcome"] for e in (await second.json())["events"]] == ["stale"]
    assert await stream_count(js, topology_ready, "CLOUD") == 1
    assert len(sink._locks) == 0  # nothing kept once no report of the event is in hand


async def test_hmac_signature_is_accepted(
    client: TestClient[Any, Any], js: JetStreamContext, topology_ready: NatsSettings
) -> None:
    raw = (DATA / "aws-eventbridge-health-scheduledchange-1.json").read_bytes()
    headers = {"X-Nodeheal-Signature": sign(raw, SECRET), "Content-Type": "application/json"}
    response = await client.post("/v1/events/aws-eventbridge", data=raw, headers=headers)
    assert response.status == 200, await response.text()
    assert await stream_count(js, topology_ready, "CLOUD") == 1


UNSTORED = [
    ("/v1/events/alibaba-cms", REBOOT, {"Content-Type": "application/json"}, 401, "not authenticated"),
    (
        "/v1/events/alibaba-cms",
        REBOOT,
        {"Authorization": "Bearer wrong", "Content-Type": "application/json"},
        401,
        "not authenticated",
    ),
    (
        "/v1/events/alibaba-cms",
        REBOOT,
        {"X-Nodeheal-Signature": "sha256=00", "Content-Type": "application/json"},
        401,
        "signature does not match",
    ),
    ("/v1/events/alibaba-cms", b"{" + b" " * 5000 + b"}", BEARER, 413, "body too large"),
    ("/v1/events/teleport", b"{" + b" " * 5000 + b"}", {"Content-Type": "application/json"}, 413, "body too large"),
]


def refused_count(status: int, source: str) -> float:
    value = prometheus_client.REGISTRY.get_sample_value(
        "nodeheal_ingest_http_refused_total", {"status": str(status), "source": source}
    )
    return value or 0.0


@pytest.mark.parametrize(
    ("path", "body", "headers", "status", "words"),
    UNSTORED,
    ids=["no-auth", "wrong-token", "bad-signature", "oversize", "oversize-unauthenticated-unknown-source"],
)
async def test_unauthenticated_or_oversized_requests_are_counted_not_stored(
    client: TestClient[Any, Any],
    js: JetStreamContext,
    topology_ready: NatsSettings,
    path: str,
    body: bytes,
    headers: dict[str, str],
    status: int,
    words: str,
) -> None:
    source = path.rsplit("/", 1)[-1]
    counted = refused_count(status, source if source == "alibaba-cms" else "other")
    response = await client.post(path, data=body, headers=headers)
    assert response.status == status
    assert words in (await response.json())["error"]
    assert refused_count(status, source if source == "alibaba-cms" else "other") == counted + 1
    assert await stream_count(js, topology_ready, "DLQ") == 0
    assert await stream_count(js, topology_ready, "CLOUD") == 0
    assert (await client.get("/healthz")).status == 200


async def test_a_flood_of_unauthenticated_posts_writes_nothing(
    client: TestClient[Any, Any], js: JetStreamContext, topology_ready: NatsSettings
) -> None:
    """The issue's attack, scaled down: 100 unauthenticated posts just under the body limit and 100 over
    it (the test limit is 4 KiB) leave NATS as it was; the endpoint answers authenticated senders after."""
    small, large = b"{" + b" " * 4000 + b"}", b"{" + b" " * 64_000 + b"}"
    plain = {"Content-Type": "application/json"}
    answers = [(await client.post("/v1/events/alibaba-cms", data=small, headers=plain)).status for _ in range(100)]
    answers += [(await client.post("/v1/events/alibaba-cms", data=large, headers=plain)).status for _ in range(100)]
    assert sorted(set(answers)) == [401, 413]
    assert await stream_count(js, topology_ready, "DLQ") == 0
    info = await js.stream_info(f"{topology_ready.stream_prefix}DLQ")
    assert info.state.bytes == 0
    ok = await client.post("/v1/events/alibaba-cms", data=REBOOT, headers=BEARER)
    assert ok.status == 200
    assert await stream_count(js, topology_ready, "CLOUD") == 1


@pytest.mark.parametrize(
    ("path", "body", "headers", "status", "words"),
    [
        ("/v1/events/alibaba-cms", b"\x00\xffgarbage", BEARER, 400, "not UTF-8"),
        ("/v1/events/alibaba-cms", b'{"name": "Instance:X:Scheduled"}', BEARER, 400, "content"),
        (
            "/v1/events/alibaba-cms",
            REBOOT,
            {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/xml"},
            415,
            "content type",
        ),
        ("/v1/events/teleport", REBOOT, BEARER, 404, "no endpoint for source"),
    ],
    ids=["garbage", "wrong-shape", "content-type", "unknown-source"],
)
async def test_an_authenticated_senders_refused_input_is_4xx_and_kept_in_the_dlq(
    client: TestClient[Any, Any],
    js: JetStreamContext,
    topology_ready: NatsSettings,
    path: str,
    body: bytes,
    headers: dict[str, str],
    status: int,
    words: str,
) -> None:
    response = await client.post(path, data=body, headers=headers)
    assert response.status == status
    assert words in (await response.json())["error"]
    letter = await last_dlq(js, topology_ready)
    assert words in letter.reason
    assert letter.subject == f"POST {path}"
    assert letter.raw == body
    assert "Authorization" not in letter.headers
    assert await stream_count(js, topology_ready, "CLOUD") == 0
    assert (await client.get("/healthz")).status == 200


SAMPLES = [p.read_bytes() for p in sorted(DATA.glob("*.json"))]
bodies = st.one_of(
    st.binary(max_size=200),
    st.sampled_from(SAMPLES),
    st.sampled_from(SAMPLES).map(lambda raw: raw.replace(b'"', b"'", 1)),
    st.recursive(
        st.one_of(st.none(), st.booleans(), st.integers(), st.text(max_size=20)),
        lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=10), inner, max_size=4)),
        max_leaves=10,
    ).map(lambda v: json.dumps(v).encode()),
)


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow]
)
@given(
    source=st.sampled_from(["alibaba-cms", "alibaba-eventbridge", "aws-eventbridge", "alibaba-api", "aws-api", "auto"]),
    body=bodies,
)
async def test_fuzzed_bodies_end_published_or_in_the_dlq(
    client: TestClient[Any, Any], js: JetStreamContext, topology_ready: NatsSettings, source: str, body: bytes
) -> None:
    cloud_before = await stream_count(js, topology_ready, "CLOUD")
    dlq_before = await stream_count(js, topology_ready, "DLQ")
    response = await client.post(f"/v1/events/{source}", data=body, headers=BEARER)
    answer = await response.json()
    if 200 <= response.status < 300:
        published = [e for e in answer["events"] if e["outcome"] == "published"]
        assert await stream_count(js, topology_ready, "CLOUD") == cloud_before + len(published)
        for delivery in published:
            stored = await js.get_last_msg(f"{topology_ready.stream_prefix}CLOUD", delivery["subject"])
            assert stored.headers is not None
        assert await stream_count(js, topology_ready, "DLQ") == dlq_before
    else:
        assert 400 <= response.status < 500, answer
        assert answer["error"]
        assert await stream_count(js, topology_ready, "DLQ") == dlq_before + 1
        letter = await last_dlq(js, topology_ready)
        assert base64.b64decode(letter.raw_b64) == body
    assert (await client.get("/healthz")).status == 200
