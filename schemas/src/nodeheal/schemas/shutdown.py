"""PID 1's shutdown stop run, the one data file two services read (`shutdown_stop_run.json`, package data).

A system shutdown or reboot stops the early-boot units and the basic system targets within seconds; a healthy
restart stops one of them and starts it again. The detector's kernel-log screen (`nodeheal.detector.kernel`) passes
a batch holding `min_items` different ones as `planned`; the diagnoser's knowledge base (rules.yaml `runs:`
`ops.shutdown_stop_run`) decides, with the restarts, the time window and the initrd veto (docs/diagnoser.md
"Evidence across lines"). Both read the items, the threshold, the skip and the veto from here (the KB builds each
unit's regexes with `unit_patterns`, the detector looks the same names and descriptions up in a table);
tests/unit/test_shutdown_stop_run.py fails when the two count a stop line differently.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from functools import cache
from importlib import resources

DATA_FILE = "shutdown_stop_run.json"
# how PID 1 words a unit's stop and its start (systemd's unit status strings), before the unit's name or description
UNIT_STOP = r"\bStopp(?:ing|ed) "
UNIT_START = r"\b(?:Start(?:ing|ed)|Finished|Reached target) "


@dataclass(frozen=True, slots=True)
class StopRunItem:
    """One thing the run counts: a unit (its names and descriptions) or a kind of line with its own regexes."""

    key: str
    stop: str  # regex: the item being stopped
    start: str  # regex: the item being started again (a restart, not a shutdown)
    units: tuple[str, ...] = ()
    descriptions: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class StopRun:
    min_items: int
    window_s: float
    contains: tuple[str, ...]  # a line holding none of these literals is not looked at
    items: tuple[StopRunItem, ...]
    skip: str  # regex: lines to ignore (a user manager, systemd[N] with N != 1)
    veto: str  # regex: a line that makes the excerpt no shutdown (the initrd's switch-root)


def unit_what(units: tuple[str, ...], descriptions: tuple[str, ...]) -> str:
    """A unit as PID 1 names it after the verb: `[target ]<name or description>[...|.]` at the line's end (also
    systemd 253+'s `<name> - <description>`)."""
    names = "|".join(re.escape(u) for u in units)
    said = "|".join(re.escape(d) for d in sorted(descriptions, key=len, reverse=True))
    return f"(?:target )?(?:(?:{names})(?: - (?:{said}))?|(?:{said}))(?:\\.\\.\\.|\\.)?\\s*$"


def unit_patterns(units: tuple[str, ...], descriptions: tuple[str, ...]) -> tuple[str, str]:
    """The stop and start regexes of a unit: `Stopping|Stopped …` and `Starting|Started|Finished|Reached target …`."""
    what = unit_what(units, descriptions)
    return UNIT_STOP + what, UNIT_START + what


def _strings(value: object, what: str) -> tuple[str, ...]:
    if not isinstance(value, list) or not value or not all(isinstance(v, str) and v for v in value):
        raise ValueError(f"{DATA_FILE}: {what} must be a non-empty list of non-empty strings, got {value!r}")
    return tuple(value)


def _item(raw: object, n: int) -> StopRunItem:
    if not isinstance(raw, dict):
        raise ValueError(f"{DATA_FILE}: item #{n + 1} must be a mapping")
    if "stop" in raw:
        key, stop, start = raw.get("key"), raw.get("stop"), raw.get("start")
        if not all(isinstance(v, str) and v for v in (key, stop, start)):
            raise ValueError(f"{DATA_FILE}: item #{n + 1} with its own regexes needs key, stop and start")
        return StopRunItem(key=str(key), stop=str(stop), start=str(start))
    units = _strings(raw.get("units"), f"item #{n + 1} units")
    descriptions = _strings(raw.get("descriptions"), f"item #{n + 1} descriptions")
    stop, start = unit_patterns(units, descriptions)
    return StopRunItem(key=units[0], stop=stop, start=start, units=units, descriptions=descriptions)


def parse_stop_run(text: str) -> StopRun:
    """The run from the data file's text; ValueError names what is wrong."""
    raw = json.loads(text)
    min_items, window = raw.get("min_items"), raw.get("window_s")
    if not isinstance(min_items, int) or isinstance(min_items, bool) or min_items < 2:
        raise ValueError(f"{DATA_FILE}: min_items must be an integer >= 2, got {min_items!r}")
    if not isinstance(window, int | float) or isinstance(window, bool) or window <= 0:
        raise ValueError(f"{DATA_FILE}: window_s must be a positive number, got {window!r}")
    raw_items = raw.get("items")
    if not isinstance(raw_items, list):
        raise ValueError(f"{DATA_FILE}: items must be a list")
    items = tuple(_item(item, n) for n, item in enumerate(raw_items))
    if len({i.key for i in items}) != len(items):
        raise ValueError(f"{DATA_FILE}: two items have the same key")
    for pattern in (raw.get("skip"), raw.get("veto"), *(p for i in items for p in (i.stop, i.start))):
        if not isinstance(pattern, str) or not pattern:
            raise ValueError(f"{DATA_FILE}: skip and veto must be regex strings")
        re.compile(pattern)
    return StopRun(
        min_items=min_items,
        window_s=float(window),
        contains=_strings(raw.get("contains"), "contains"),
        items=items,
        skip=str(raw["skip"]),
        veto=str(raw["veto"]),
    )


@cache
def shutdown_stop_run() -> StopRun:
    """The run shipped with this package (`shutdown_stop_run.json`)."""
    return parse_stop_run(resources.files("nodeheal.schemas").joinpath(DATA_FILE).read_text(encoding="utf-8"))
