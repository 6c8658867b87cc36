"""Hypothesis: whatever the bytes, a normalizer returns events or raises PayloadError, nothing else."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nodeheal.cloud_events.normalize import (
    AUTO,
    SOURCES,
    NormalizeContext,
    PayloadError,
    normalize_bytes,
    normalize_stream,
)

DATA = Path(__file__).resolve().parents[2] / "data" / "cloud-events"
CTX = NormalizeContext(observed_at=datetime(2026, 1, 1, tzinfo=UTC), instance_id="i-fuzz")
SAMPLES = [json.loads(p.read_text()) for p in sorted(DATA.glob("*.json"))]

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(allow_nan=True),
    st.text(max_size=30),
    st.sampled_from(
        ["", "Scheduled", "Executing", "2019-04-12T01:01:01Z", "Mon, 19 Sep 2016 18:29:47 GMT", "e-1", "acs.ecs"]
    ),
)
json_values = st.recursive(
    scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=12), inner, max_size=5)),
    max_leaves=20,
)


def _mutate(value: Any, data: st.DataObject) -> Any:
    """Replace one randomly chosen node of a real sample with a random JSON value."""
    if isinstance(value, dict) and value and data.draw(st.booleans()):
        key = data.draw(st.sampled_from(sorted(value)))
        return {**value, key: _mutate(value[key], data)}
    if isinstance(value, list) and value and data.draw(st.booleans()):
        i = data.draw(st.integers(0, len(value) - 1))
        return [*value[:i], _mutate(value[i], data), *value[i + 1 :]]
    return data.draw(json_values)


def _only_payload_errors(source: str, raw: bytes) -> None:
    for call in (normalize_bytes, normalize_stream):
        message = ""
        try:
            call(source, raw, CTX)
        except PayloadError as exc:  # anything else fails the test
            message = str(exc)
            assert " payload at " in message, message


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(source=st.sampled_from([*SOURCES, AUTO]), raw=st.binary(max_size=300))
def test_random_bytes(source: str, raw: bytes) -> None:
    _only_payload_errors(source, raw)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(source=st.sampled_from([*SOURCES, AUTO]), value=json_values)
def test_random_json(source: str, value: Any) -> None:
    _only_payload_errors(source, json.dumps(value).encode())


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(source=st.sampled_from([*SOURCES, AUTO]), sample=st.sampled_from(SAMPLES), data=st.data())
def test_mutated_real_samples(source: str, sample: Any, data: st.DataObject) -> None:
    _only_payload_errors(source, json.dumps(_mutate(sample, data)).encode())
