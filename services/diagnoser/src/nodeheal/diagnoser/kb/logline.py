"""Splitting a raw log line into its prefix (timestamps, host, program) and the message.

Lines arrive as dmesg (`[ 123.456]` or `[Mon Jan 27 19:27:15 2020]`), kmsg with priorities (`<4>`),
syslog / journal (`Sep 16 19:51:15 host kernel: ...`, RFC 3339, `kernel:[...]`), OpenWrt syslog, and
`kubectl describe` event tables. Rules search anywhere in the line, so this is only needed where position
matters: stack frames, the crash(8) `sys` block and the `message` shown to people.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_PREFIXES: tuple[re.Pattern[str], ...] = (
    re.compile(r"^\d+\s+(?=[A-Z][a-z]{2}\s)"),  # a line number from a paste, before a syslog date
    re.compile(r"^<\d>"),  # kmsg priority
    re.compile(r"^\d{4}-\d\d-\d\d[T ]\d\d:\d\d:\d\d(?:\.\d+)?(?:Z|[+-]\d\d:?\d\d)?\s+"),  # RFC 3339
    re.compile(r"^[A-Z][a-z]{2} [A-Z][a-z]{2} [ \d]\d \d\d:\d\d:\d\d \d{4}\s+(?:\S+\s+)?"),  # OpenWrt
    re.compile(r"^[A-Z][a-z]{2}\s+\d+\s+\d\d:\d\d:\d\d\s+"),  # syslog date
    re.compile(r"^(?:(?!kernel:)[^\s:\[]+\s+)?(?:kernel|[\w.@()-]+\[\d+\]):\s?"),  # host + program
)
_DMESG_SECONDS = re.compile(r"^\[\s*(?P<s>\d+\.\d+)\]\s?")
_DMESG_DATE = re.compile(r"^\[[A-Z][a-z]{2} [A-Z][a-z]{2} [ \d]\d \d\d:\d\d:\d\d \d{4}\]\s?")


@dataclass(frozen=True, slots=True)
class LogLine:
    raw: str
    message: str
    uptime_s: float | None


def split_line(raw: str) -> LogLine:
    """The message part of a line and, when the line carries one, the dmesg uptime in seconds."""
    text = raw.rstrip("\r\n").strip()
    for _ in range(2):
        for pattern in _PREFIXES:
            text = pattern.sub("", text, count=1)
    uptime: float | None = None
    match = _DMESG_SECONDS.match(text)
    if match:
        uptime = float(match.group("s"))
        text = text[match.end() :]
    else:
        text = _DMESG_DATE.sub("", text, count=1)
    return LogLine(raw=raw, message=text.rstrip(), uptime_s=uptime)
