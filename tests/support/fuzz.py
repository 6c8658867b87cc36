"""Hostile inputs for the consumers (hypothesis): a valid message of a model with one field made
extreme or wrong (datetimes at the ends of the calendar and with odd offsets, inf/nan, wrong types,
huge strings, deep nesting), or bytes that are not JSON / not UTF-8 at all.

`draw(strategy, n)` collects n examples with hypothesis's engine (bounded, no database), for tests
that then publish them to a real server."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

EXTREME_TIMES = [
    "0001-01-01T00:30:00+01:00",
    "0001-01-01T00:00:00+00:01",
    "9999-12-31T23:59:59-01:00",
    "9999-12-31T23:59:59.999999-23:59",
    "0000-00-00T00:00:00Z",
    "2026-13-45T25:61:61Z",
    "2026-01-01T00:00:00",
    "",
]
NON_FINITE = ["Infinity", "-Infinity", "NaN", "1e999", "-1e999"]


def _wrong() -> st.SearchStrategy[Any]:
    return st.one_of(
        st.sampled_from(EXTREME_TIMES),
        st.booleans(),
        st.integers(min_value=-(2**80), max_value=2**80),
        st.lists(st.integers(), max_size=3),
        st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
        st.text(min_size=1, max_size=30),
        st.just("x" * 300_000),
    )


def hostile(valid: dict[str, Any], *, time_fields: list[str]) -> st.SearchStrategy[bytes]:
    """Variants of `valid` (a JSON-able dict) that a strict consumer must reject."""
    fields = sorted(valid)

    def with_value(field: str, raw_value: str) -> bytes:
        doc = dict(valid)
        doc[field] = "__PLACEHOLDER__"
        return json.dumps(doc).replace('"__PLACEHOLDER__"', raw_value).encode()

    extreme_time = st.builds(
        lambda f, t: with_value(f, json.dumps(t)), st.sampled_from(time_fields), st.sampled_from(EXTREME_TIMES)
    )
    non_finite = st.builds(with_value, st.sampled_from(time_fields + fields), st.sampled_from(NON_FINITE))
    wrong_type = st.builds(
        lambda f, v: with_value(f, json.dumps(v)),
        st.sampled_from([f for f in fields if not isinstance(valid[f], str)] or fields),
        _wrong().filter(lambda v: not isinstance(v, str)),
    )
    huge_schema = st.just(with_value("schema", json.dumps("y" * 200_000))) if "schema" in valid else st.nothing()
    deep = st.integers(min_value=2_000, max_value=50_000).map(lambda n: b"[" * n + b"]" * n)
    invalid_utf8 = st.builds(
        lambda prefix, junk: json.dumps(valid).encode()[:prefix] + junk,
        st.integers(min_value=1, max_value=40),
        st.sampled_from([b"\xff\xfe", b"\xc3\x28", b"\xed\xa0\x80", b"\x80" * 10]),
    )
    not_json = st.sampled_from([b"", b"{", b"null", b"[]", b"42", b'"text"', b"\x00\x01\x02", b'{"schema": }'])
    return st.one_of(extreme_time, non_finite, wrong_type, huge_schema, deep, invalid_utf8, not_json)


def draw(strategy: st.SearchStrategy[bytes], n: int) -> list[bytes]:
    """n examples from hypothesis (generate phase only, no example database: bounded and fast)."""
    out: list[bytes] = []

    @settings(
        max_examples=n,
        deadline=None,
        database=None,
        phases=[Phase.explicit, Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @given(strategy)
    def collect(example: bytes) -> None:
        out.append(example)

    collect()
    return out
