"""The shared contract: models round-trip, bad input names the field, exported JSON Schema matches."""

from __future__ import annotations

import json
from datetime import datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import BaseModel, ValidationError

from nodeheal.schemas import (
    DEFAULT_CATEGORY,
    KERNEL_LOG_CLASSES,
    Anomaly,
    CloudSystemEvent,
    NodeProbe,
    cloud_event_message_id,
    deterministic_id,
    new_id,
)
from nodeheal.schemas.export import default_dir, render
from nodeheal.schemas.subjects import escape_token, parse_subject, probe_subject, unescape_token
from tests.support.samples import T0, all_samples

SAMPLES = all_samples()


@pytest.mark.parametrize("model", SAMPLES, ids=lambda m: type(m).__name__)
def test_every_model_round_trips_through_json(model: BaseModel) -> None:
    wire = model.model_dump_json(by_alias=True)
    back = type(model).model_validate_json(wire)
    assert back == model
    assert back.model_dump_json(by_alias=True) == wire


@pytest.mark.parametrize("model", SAMPLES, ids=lambda m: type(m).__name__)
def test_readers_ignore_unknown_fields(model: BaseModel) -> None:
    payload = json.loads(model.model_dump_json(by_alias=True))
    payload["added_in_a_later_minor_version"] = {"x": 1}
    assert type(model).model_validate(payload) == model


def test_messages_are_frozen() -> None:
    probe = SAMPLES[0]
    with pytest.raises(ValidationError):
        probe.seq = 1  # type: ignore[attr-defined]


def test_invalid_payload_error_names_the_field() -> None:
    payload = json.loads(SAMPLES[0].model_dump_json(by_alias=True))
    payload["filesystems"][0]["used_pct"] = 140
    with pytest.raises(ValidationError) as info:
        NodeProbe.model_validate(payload)
    locs = [err["loc"] for err in info.value.errors()]
    assert ("filesystems", 0, "used_pct") in locs


def test_missing_required_field_is_named() -> None:
    with pytest.raises(ValidationError) as info:
        Anomaly.model_validate({"schema": "nodeheal.anomaly/v1", "cluster": "c", "node": "n"})
    missing = {err["loc"][0] for err in info.value.errors() if err["type"] == "missing"}
    assert {"kind", "status", "fault_onset", "detected_at", "anomaly_key"} <= missing


def test_naive_datetime_is_refused_with_a_hint() -> None:
    payload = json.loads(SAMPLES[2].model_dump_json(by_alias=True))
    payload["fault_onset"] = "2026-11-01T12:00:00"
    with pytest.raises(ValidationError, match="no timezone"):
        Anomaly.model_validate(payload)


def test_offset_datetimes_become_utc() -> None:
    payload = json.loads(SAMPLES[2].model_dump_json(by_alias=True))
    payload["fault_onset"] = "2026-11-01T20:00:00+08:00"
    assert Anomaly.model_validate(payload).fault_onset == T0


def test_wrong_schema_name_is_refused() -> None:
    payload = json.loads(SAMPLES[0].model_dump_json(by_alias=True))
    payload["schema"] = "nodeheal.anomaly/v1"
    with pytest.raises(ValidationError) as info:
        NodeProbe.model_validate(payload)
    assert info.value.errors()[0]["loc"] == ("schema",)


def test_cloud_event_terminal_flag_must_match_phase() -> None:
    payload = json.loads(SAMPLES[1].model_dump_json(by_alias=True))
    payload["phase"] = "completed"
    with pytest.raises(ValidationError, match="is_terminal"):
        CloudSystemEvent.model_validate(payload)


def test_cloud_event_id_is_deterministic_per_transition() -> None:
    event = SAMPLES[1]
    assert isinstance(event, CloudSystemEvent)
    assert event.dedup_id == cloud_event_message_id("alibaba", "e-bp1", "scheduled")
    assert event.dedup_id != cloud_event_message_id("alibaba", "e-bp1", "completed")


def test_kernel_classes_match_design() -> None:
    assert len(KERNEL_LOG_CLASSES) == 28
    assert DEFAULT_CATEGORY["nvme_disk_io_error"] == "hardware"
    assert DEFAULT_CATEGORY["planned_shutdown_reboot"] == "ops"
    assert DEFAULT_CATEGORY["oom_killer"] == "software"


def test_new_ids_are_unique_and_time_ordered() -> None:
    ids = [new_id(now_ms=1_700_000_000_000 + i) for i in range(1000)]
    assert len(set(ids)) == 1000
    assert ids == sorted(ids)
    assert deterministic_id("a", "b") == deterministic_id("a", "b") != deterministic_id("a", "c")


@given(st.integers(min_value=0, max_value=2**48 - 1), st.integers(min_value=0, max_value=2**48 - 1))
def test_new_id_is_crockford_base32_of_the_millisecond_then_80_random_bits(ms: int, other_ms: int) -> None:
    """The encoding decodes back: 10 characters of milliseconds (the same prefix for ids of the same
    millisecond, the one cached) and 16 of randomness, Crockford's alphabet only."""
    alphabet = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
    for now in (ms, other_ms, ms):
        made = new_id(now_ms=now)
        assert len(made) == 26
        assert set(made) <= set(alphabet)
        value = 0
        for ch in made:
            value = value * 32 + alphabet.index(ch)
        assert value >> 80 == now


@given(st.text(min_size=1, max_size=80).filter(lambda s: "\x00" not in s))
def test_subject_token_escaping_is_reversible_and_single_token(name: str) -> None:
    token = escape_token(name)
    assert "." not in token and "*" not in token and ">" not in token and " " not in token
    assert unescape_token(token) == name
    assert parse_subject(probe_subject("prod", name)) == ("probe", "prod", name)


def test_kubernetes_style_names_stay_readable() -> None:
    assert escape_token("node-17") == "node-17"
    assert probe_subject("prod", "cn-hangzhou.10.0.0.1") == "nodeheal.probe.prod.cn-hangzhou_2E10_2E0_2E0_2E1"


def test_exported_json_schemas_match_the_models() -> None:
    """Fails when a model changes without `python -m nodeheal.schemas.export`."""
    rendered = render()
    on_disk = {p.name: p.read_text() for p in default_dir().glob("*.schema.json")}
    assert set(on_disk) == set(rendered), "schema files added or removed: run python -m nodeheal.schemas.export"
    for name, text in rendered.items():
        assert on_disk[name] == text, f"{name} drifted from the model: run python -m nodeheal.schemas.export"


def test_times_default_to_now_in_utc() -> None:
    probe = NodeProbe(cluster="c", node="n", source="agent", seq=0)
    assert probe.time.tzinfo is not None
    assert abs((datetime.now(probe.time.tzinfo) - probe.time).total_seconds()) < 60


@pytest.mark.parametrize("store_gib", [0.125, 0.25, 0.5, 0.75, 0.9, 1.0, 2.0, 64.0, 1024.0])
def test_the_caps_of_every_stream_and_bucket_fit_the_store(store_gib: float) -> None:
    """`streams apply --store-gib G` promises that the streams and buckets hold at most G together: the server
    reserves every cap against its store, so caps over G would be refused on a volume sized to G. The
    diagnoser's bucket had a fixed 64 MiB outside the shares: 0.5 GiB reserved 0.53 GiB."""
    from nodeheal.schemas.streams import GIB, MIB, MIN_STORE_BYTES, reserved_bytes, topology

    store = int(store_gib * GIB)
    assert store >= MIN_STORE_BYTES
    topo = topology(store_bytes=store)
    assert reserved_bytes(topo) <= store
    diagnoser = next(b for b in topo.buckets if b.name.endswith("-diagnoser"))
    assert diagnoser.max_bytes == min(64 * MIB, int(store * 0.0625))
