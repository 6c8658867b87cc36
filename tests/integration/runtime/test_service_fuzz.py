"""Every consumer of every service, fuzzed on a real nats-server with hypothesis: extreme datetimes
and offsets, inf/nan, wrong types, huge strings, deep nesting, invalid UTF-8, not JSON at all.
Each input is one the message's model rejects; every one must end in the service's DLQ with a reason,
nothing stays unacknowledged, and the service's liveness (its /healthz) stays ok."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from typing import Any

import msgspec
import pytest
from nats.aio.client import Client
from pydantic import BaseModel

from nodeheal.detector.fastpath import FastProbe
from nodeheal.detector.handlers import DetectorRuntime
from nodeheal.detector.settings import DetectorSettings
from nodeheal.diagnoser.handlers import DiagnoserRuntime
from nodeheal.diagnoser.settings import DiagnoserSettings
from nodeheal.remediator.handlers import RemediatorService
from nodeheal.runtime.settings import NatsSettings
from nodeheal.schemas import Anomaly, CloudSystemEvent, Diagnosis, NodeProbe, ProberResults, RemediationRecord
from tests.integration.remediator.harness import make_settings
from tests.integration.runtime.test_consumer_runtime import dead_letters, eventually
from tests.support.fuzz import draw, hostile
from tests.support.samples import all_samples

pytestmark = pytest.mark.nats

PER_CONSUMER = 25


def sample(model: type[BaseModel]) -> dict[str, Any]:
    item = next(s for s in all_samples() if type(s) is model)
    doc: dict[str, Any] = json.loads(item.model_dump_json(by_alias=True))
    if model is NodeProbe:  # only what the detector's fast path reads: a bad value there must be caught
        read = {f.encode_name for f in msgspec.structs.fields(FastProbe)}
        doc = {k: v for k, v in doc.items() if k in read}
    return doc


def time_fields(doc: dict[str, Any]) -> list[str]:
    return [k for k, v in doc.items() if isinstance(v, str) and len(v) >= 19 and v[4] == "-" and v[10] == "T"]


def rejected(model: type[BaseModel], raw: bytes) -> bool:
    try:
        model.model_validate_json(raw)
    except Exception:
        return True
    return False


def inputs(model: type[BaseModel]) -> list[bytes]:
    doc = sample(model)
    return [
        raw
        for raw in draw(hostile(doc, time_fields=time_fields(doc) or ["time"]), PER_CONSUMER)
        if rejected(model, raw)
    ]


async def fuzz(
    nc: Client,
    settings: NatsSettings,
    service: str,
    kinds: list[tuple[str, type[BaseModel]]],
    liveness: Callable[[], tuple[bool, str]],
    consumers: list[tuple[str, str]],
) -> None:
    js = nc.jetstream()
    total = 0
    for kind, model in kinds:
        # a prober batch's subject has the batch's routing token where a node's name goes
        token = "_r0" if model is ProberResults else "n1"
        for i, raw in enumerate(inputs(model)):
            await js.publish(f"{settings.prefix}.{kind}.c1.{token}", raw, headers={"Nats-Msg-Id": f"{kind}-{i}"})
            total += 1

    async def settled() -> bool:
        for stream, durable in consumers:
            info = await js.consumer_info(stream, durable)
            if info.num_pending or info.num_ack_pending:
                print("PENDING", stream, info.num_pending, info.num_ack_pending, info.num_redelivered)
                return False
        n = len(await dead_letters(js, settings, service))
        print("DLQ", n, total)
        return n >= total

    await eventually(settled, within_s=60.0)
    letters = await dead_letters(js, settings, service)
    assert len(letters) == total
    assert all(letter.reason for letter in letters)
    assert liveness() == (True, "ok")


def stream(settings: NatsSettings, base: str) -> str:
    return settings.topology().stream(f"{settings.stream_prefix}{base}").name


@pytest.fixture
async def detector(topology_ready: NatsSettings, nc: Client) -> AsyncIterator[DetectorRuntime]:
    rt = DetectorRuntime(settings=DetectorSettings(nats=topology_ready, batch_size=100, tick_s=0.1), nc=nc)
    await rt.start()
    yield rt
    await rt.stop()


async def test_detector_consumers_survive_hostile_input(
    topology_ready: NatsSettings, nc: Client, detector: DetectorRuntime
) -> None:
    s = detector.settings
    await fuzz(
        nc,
        topology_ready,
        "detector",
        [("probe", NodeProbe), ("prober", ProberResults), ("cloud", CloudSystemEvent), ("audit", RemediationRecord)],
        detector.liveness,
        [
            (stream(topology_ready, "PROBES"), s.probe_durable),
            (stream(topology_ready, "CLOUD"), s.side_durable),
            (stream(topology_ready, "AUDIT"), s.side_durable),
        ],
    )


async def test_diagnoser_consumers_survive_hostile_input(topology_ready: NatsSettings, nc: Client) -> None:
    settings = DiagnoserSettings(nats=topology_ready, cluster="c1", fetch_timeout_s=0.3, tick_s=0.2)
    rt = DiagnoserRuntime(settings=settings, nc=nc)
    await rt.start()
    try:
        await fuzz(
            nc,
            topology_ready,
            "diagnoser",
            [("anomaly", Anomaly), ("cloud", CloudSystemEvent), ("audit", RemediationRecord)],
            rt.liveness,
            [(stream(topology_ready, base), settings.durable) for base in ("ANOMALIES", "CLOUD", "AUDIT")],
        )
    finally:
        await rt.stop()


async def test_remediator_consumer_survives_hostile_input(topology_ready: NatsSettings, nc: Client) -> None:
    settings = make_settings(topology_ready, kube_url=None)
    service = RemediatorService(settings)
    await service.start()
    try:
        await fuzz(
            nc,
            topology_ready,
            "remediator",
            [("diagnosis", Diagnosis)],
            service.liveness,
            [(stream(topology_ready, "DIAGNOSES"), settings.durable)],
        )
    finally:
        await service.stop()
