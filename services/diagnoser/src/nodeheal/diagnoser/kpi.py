"""The fleet's three numbers: crash rate, schedulable rate, online rate. Pure.

* crash rate: crash episodes per node per day over a window (a crash is a diagnosis with a crash
  signature, or one of the crash causes below: the node went down on its own, or rebooted unplanned);
* schedulable rate: the share of the inventory's nodes that are Ready, not cordoned and not down;
* online rate: the share of the inventory's nodes that are not down (node_down / unreachable firing).

The diagnoser exports them as gauges from its live state; `nodeheal fleet` computes them with the same
functions from the streams and the inventory bucket.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from collections.abc import Set as AbstractSet
from dataclasses import dataclass
from datetime import datetime, timedelta

from nodeheal.schemas.diagnosis import Diagnosis
from nodeheal.schemas.inventory import NodeInventory

CRASH_CAUSES: frozenset[str] = frozenset({"node_crash", "unexplained_reboot", "heterogeneous_crashes"})
"""Causes that are a crash even without a kernel crash signature (a node that went dark on its own)."""


def is_crash(diagnosis: Diagnosis) -> bool:
    """A crash episode: the diagnosis carries a crash signature or names a crash cause."""
    if (diagnosis.resolved and not diagnosis.recovered) or diagnosis.replay:
        return False  # a resolution repeats its episode's verdict; a recovered verdict is the episode's only one
    return diagnosis.crash_signature is not None or diagnosis.cause in CRASH_CAUSES


@dataclass(frozen=True, slots=True)
class FleetKpis:
    nodes: int
    crashes: int
    window_s: float
    crash_rate: float  # per node per day
    schedulable: int
    schedulable_rate: float
    online: int
    online_rate: float

    def as_dict(self) -> dict[str, float | int]:
        return {
            "nodes": self.nodes,
            "crashes": self.crashes,
            "window_s": self.window_s,
            "crash_rate": self.crash_rate,
            "schedulable": self.schedulable,
            "schedulable_rate": self.schedulable_rate,
            "online": self.online,
            "online_rate": self.online_rate,
        }


def schedulable(record: NodeInventory) -> bool:
    """Ready (or not known to be otherwise) and not cordoned: schedulable unless the node is down."""
    return record.ready is not False and not record.unschedulable


def fleet_kpis(
    *,
    inventory: Mapping[str, NodeInventory],
    down: Iterable[str],
    crash_times: Iterable[datetime],
    now: datetime,
    window: timedelta = timedelta(days=1),
    ready_schedulable: AbstractSet[str] | None = None,
) -> FleetKpis:
    """The three numbers over the inventory's nodes (keys as in `inventory`; `down` uses the same keys).
    `ready_schedulable`: the keys of `inventory` whose record is `schedulable`, when the caller keeps
    that set up to date per inventory change (the diagnoser): the count then costs O(down), not O(fleet)."""
    nodes = len(inventory)
    down_set = {k for k in down if k in inventory}
    start = now - window
    crashes = sum(1 for t in crash_times if start <= t <= now)
    days = window.total_seconds() / 86_400
    if ready_schedulable is None:
        ready_schedulable = {key for key, record in inventory.items() if schedulable(record)}
    schedulable_now = len(ready_schedulable) - len(down_set.intersection(ready_schedulable))
    online = nodes - len(down_set)
    return FleetKpis(
        nodes=nodes,
        crashes=crashes,
        window_s=window.total_seconds(),
        crash_rate=crashes / (nodes * days) if nodes and days else 0.0,
        schedulable=schedulable_now,
        schedulable_rate=schedulable_now / nodes if nodes else 0.0,
        online=online,
        online_rate=online / nodes if nodes else 0.0,
    )
