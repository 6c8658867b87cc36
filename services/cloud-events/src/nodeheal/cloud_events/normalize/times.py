"""Every time format the providers send (the samples in tests/data/cloud-events/), parsed to aware UTC.

| example | where |
|---|---|
| `2019-04-12T01:01:01Z`, `2019-03-14T20:00:00.000Z`, `2020-11-19T21:04:41+08:00` | ISO-8601 / RFC 3339 |
| `20190409T121826.922+0800` | Alibaba CMS `eventTime` (ISO basic form) |
| `2020-11-19T21:04:42.179PRC` | Alibaba EventBridge `aliyunpublishtime` (`PRC` = Asia/Shanghai, UTC+8) |
| `"1552199984000"` / `1552199984000` | Alibaba CMS API `Time` (epoch milliseconds) |
| `21 Jan 2019 09:00:43 GMT` | AWS IMDS |
| `Sat, 05 Jun 2016 15:10:09 GMT` | AWS Health, Azure `NotBefore` (RFC 1123; the weekday is not trusted) |
| `""` | Azure `NotBefore` once `Started` → None |

This module must never guess a timezone: a time without one is an error.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta, timezone
from email.utils import parsedate_to_datetime

from nodeheal.cloud_events.normalize.errors import PayloadError

_CST = timezone(timedelta(hours=8), "PRC")
_BASIC = re.compile(r"^(\d{8}T\d{6})(\.\d{1,6})?([+-]\d{4}|Z)$")
_EPOCH = re.compile(r"^\d{10,13}$")
_AWS_IMDS = re.compile(r"^\d{1,2} [A-Za-z]{3} \d{4} \d{2}:\d{2}:\d{2} (GMT|UTC)$")
_RFC1123 = re.compile(r"^(?:[A-Za-z]{3},\s*)?\d{1,2} [A-Za-z]{3} \d{4} \d{2}:\d{2}(?::\d{2})? (GMT|UTC|[+-]\d{4})$")
# Years outside this range in a maintenance event are corrupt input, not a schedule.
_MIN_YEAR, _MAX_YEAR = 2000, 2200


def _checked(value: datetime, *, raw: str, source: str, where: str) -> datetime:
    if value.tzinfo is None or value.utcoffset() is None:
        raise PayloadError(f"time {raw!r} has no timezone; expected UTC or an offset", source=source, where=where)
    out = value.astimezone(UTC)
    if not _MIN_YEAR <= out.year <= _MAX_YEAR:
        raise PayloadError(f"time {raw!r} is outside {_MIN_YEAR}..{_MAX_YEAR}", source=source, where=where)
    return out


def parse_time(value: object, *, source: str, where: str) -> datetime | None:
    """Parse any §6.3 format; None and `""` give None; anything else unparseable raises `PayloadError`."""
    if value is None:
        return None
    if isinstance(value, bool):
        raise PayloadError(f"expected a time, got {value!r}", source=source, where=where)
    if isinstance(value, int | float):
        return _epoch(float(value), raw=str(value), source=source, where=where)
    if not isinstance(value, str):
        raise PayloadError(f"expected a time string, got {type(value).__name__}", source=source, where=where)
    text = value.strip()
    if not text:
        return None
    try:
        if _EPOCH.fullmatch(text):
            return _epoch(float(text), raw=text, source=source, where=where)
        basic = _BASIC.fullmatch(text)
        if basic:
            stamp, frac, offset = basic.groups()
            parsed = datetime.strptime(
                stamp + (frac or ".0") + ("+0000" if offset == "Z" else offset), "%Y%m%dT%H%M%S.%f%z"
            )
            return _checked(parsed, raw=text, source=source, where=where)
        if text.endswith("PRC"):
            parsed = datetime.fromisoformat(text[:-3])
            if parsed.tzinfo is not None:
                raise ValueError("both an offset and PRC")
            return _checked(parsed.replace(tzinfo=_CST), raw=text, source=source, where=where)
        if _AWS_IMDS.fullmatch(text):
            parsed = datetime.strptime(text[:-4], "%d %b %Y %H:%M:%S").replace(tzinfo=UTC)
            return _checked(parsed, raw=text, source=source, where=where)
        if _RFC1123.fullmatch(text):
            # parsedate ignores the weekday, which real payloads get wrong ("Mon, 11 Apr 2026" is a Saturday).
            parsed = parsedate_to_datetime(text)
            return _checked(parsed, raw=text, source=source, where=where)
        iso = text[:-1] + "+00:00" if text.endswith(("Z", "z")) else text
        parsed = datetime.fromisoformat(iso)
    except PayloadError:
        raise
    except (ValueError, TypeError, OverflowError, IndexError) as exc:
        raise PayloadError(f"cannot parse time {text!r}: {exc}", source=source, where=where) from None
    return _checked(parsed, raw=text, source=source, where=where)


def _epoch(number: float, *, raw: str, source: str, where: str) -> datetime:
    # 13 digits are milliseconds (Alibaba CMS API `Time`); 10 are seconds.
    seconds = number / 1000.0 if number >= 1e11 else number
    try:
        parsed = datetime.fromtimestamp(seconds, tz=UTC)
    except (ValueError, OverflowError, OSError) as exc:
        raise PayloadError(f"cannot parse epoch time {raw!r}: {exc}", source=source, where=where) from None
    return _checked(parsed, raw=raw, source=source, where=where)
