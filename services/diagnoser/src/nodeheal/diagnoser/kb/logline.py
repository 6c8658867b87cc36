"""Splitting a raw log line into its prefix (timestamps, host, program) and the message.

Lines arrive as dmesg (`[ 123.456]` or `[Mon Jan 27 19:27:15 2020]`), kmsg with priorities (`<4>`),
syslog / journal (`Sep 16 19:51:15 host kernel: ...`, RFC 3339, `kernel:[...]`), OpenWrt syslog, and
`kubectl describe` event tables. Rules search anywhere in the line, so this is only needed where position
matters: stack frames, the crash(8) `sys` block and the `message` shown to people.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
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


_CLOCK = re.compile(r"(?<![\d:.])(\d\d):(\d\d):(\d\d)(?![\d:])")
_CLOCK_REACH = 48  # a syslog / journal / RFC 3339 time stamp sits in the line's first characters


def line_time(raw: str) -> tuple[str, float] | None:
    """When the line was written, as far as the line says: ("uptime", dmesg seconds) or ("clock", seconds
    since midnight of a syslog / journal / RFC 3339 time stamp near the line's start); None without either."""
    text = raw.lstrip()
    match = _DMESG_SECONDS.match(text)
    if match:
        return ("uptime", float(match.group("s")))
    clock = _CLOCK.search(text, 0, _CLOCK_REACH)
    if clock:
        hours, minutes, seconds = (int(g) for g in clock.groups())
        return ("clock", hours * 3600.0 + minutes * 60.0 + seconds)
    return None


MAX_CONTINUATIONS = 4
_CONTINUES = re.compile(r"^[a-z0-9\[(/]")
_STAMPED = re.compile(r"^(?:\[\s*\d|<\d>)")  # a dmesg / kmsg stamp: the cheap early "no" for most lines


def _has_prefix(raw: str) -> bool:
    text = raw.strip()
    return bool(text) and split_line(raw).message != text


def is_continuation(head: str, line: str) -> bool:
    """Is `line` the rest of `head`, cut off by a mailer, bug tracker or web page that wraps at ~80 columns?

    The cut-off part carries no log prefix of its own (no time stamp, host or program), does not start
    with white space (an indented line is the kernel's own layout: frames, register dumps, `systemctl status`
    fields) and starts the way a cut message goes on: lower case, a digit, `[comm:pid]`, `(`, a path. A
    line starting upper case is a message of its own (`Oops: …` pasted after another report). After an
    unprefixed head, only when the head did not end a sentence.
    """
    if not _CONTINUES.match(line) or _STAMPED.match(line) or not head.strip():
        return False
    if _has_prefix(line):
        return False
    return _has_prefix(head) or not head.rstrip().endswith((".", ":", ";"))


def rejoined(lines: Sequence[str], i: int) -> str | None:
    """Line `i` with the up to `MAX_CONTINUATIONS` lines wrapped off it (`is_continuation`) joined back on
    with single spaces, or None when the next line does not continue it."""
    j = i + 1
    while j < len(lines) and j - i <= MAX_CONTINUATIONS and is_continuation(lines[j - 1], lines[j]):
        j += 1
    if j == i + 1:
        return None
    return " ".join([lines[i].rstrip(), *(line.strip() for line in lines[i + 1 : j])])


def unwrap(lines: Sequence[str]) -> list[str]:
    """The lines with every wrapped message rejoined on its first line; same length, same order.

    A head line followed by continuation lines becomes the head and its continuations joined
    (`rejoined`); the continuation lines stay as they are, so the line indices of the input still hold
    and nothing that matched before stops matching.
    """
    out = list(lines)
    i = 0
    while i < len(lines):
        joined = rejoined(lines, i)
        if joined is not None:
            out[i] = joined
            i += 1
            while i < len(lines) and is_continuation(lines[i - 1], lines[i]) and out[i] == lines[i]:
                i += 1
        else:
            i += 1
    return out
