"""The dark-node runs and bursts of a rack / zone are kept up to date per arrival, return and inventory
change (`state.Chains`) instead of re-walking and re-sorting every dark node of the domain per
node_down. Oracle: the previous definition, kept here — every dark node of the domain, from
`dark_at` / `down_since` and the current inventory, sorted and cut where consecutive times are more
than the gap apart (`_chains`). After any sequence of changes the incremental answers must equal it."""

from __future__ import annotations

from datetime import datetime, timedelta

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nodeheal.diagnoser.state import Chains, FleetState
from tests.unit.diagnoser.scenarios import CLUSTER, T0, inventory

GAPS = (timedelta(seconds=15), timedelta(seconds=60), timedelta(seconds=120))
NODES = [f"n{i}" for i in range(12)]


def _chains(items: list[tuple[datetime, str]], gap: timedelta) -> list[list[tuple[datetime, str]]]:
    """The old definition: sorted (time, key) items cut where consecutive times are more than `gap` apart."""
    out: list[list[tuple[datetime, str]]] = []
    for item in items:
        if out and item[0] - out[-1][-1][0] <= gap:
            out[-1].append(item)
        else:
            out.append([item])
    return out


def _domain_items(
    fleet: FleetState, times: dict[str, datetime], dimension: str, value: str
) -> list[tuple[datetime, str]]:
    return sorted((t, k) for k, t in times.items() if k in fleet.dark_at and fleet.domain_of(k, dimension) == value)


def _old_run(fleet: FleetState, key: str, dimension: str, gap: timedelta) -> tuple[int, datetime] | None:
    value = fleet.domain_of(key, dimension)
    if value is None:
        return None
    for group in _chains(_domain_items(fleet, fleet.dark_at, dimension, value), gap):
        if any(k == key for _, k in group):
            return len(group), group[-1][0]
    return None


def _old_burst(fleet: FleetState, key: str, dimension: str, gap: timedelta) -> tuple[str, ...]:
    value = fleet.domain_of(key, dimension)
    if value is None:
        return ()
    for group in _chains(_domain_items(fleet, fleet.down_since, dimension, value), gap):
        if any(k == key for _, k in group):
            return tuple(sorted(k for _, k in group))
    return ()


def _check(fleet: FleetState) -> None:
    for node in NODES:
        key = f"{CLUSTER}/{node}"
        for dimension in ("rack", "zone"):
            for gap in GAPS:
                assert fleet.dark_run(key, dimension, gap=gap) == _old_run(fleet, key, dimension, gap)
                assert fleet.burst(key, dimension, gap=gap) == _old_burst(fleet, key, dimension, gap)


# one change: (op, node, seconds, seconds, rack, zone)
_op = st.tuples(
    st.sampled_from(["dark", "dark", "dark", "back", "move", "leave", "check"]),
    st.sampled_from(NODES),
    st.integers(0, 400),
    st.integers(0, 400),
    st.integers(0, 2),
    st.integers(0, 1),
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ops=st.lists(_op, max_size=60), ordered=st.booleans())
def test_runs_and_bursts_equal_the_old_definition_after_any_changes(
    ops: list[tuple[str, str, int, int, int, int]], ordered: bool
) -> None:
    fleet = FleetState()
    for i, node in enumerate(NODES):
        fleet.put_inventory(f"{CLUSTER}/{node}", inventory(node, rack=f"r{i % 3}", zone=f"z{i % 2}"))
    clock = 0
    for op, node, a, b, rack, zone in ops:
        key = f"{CLUSTER}/{node}"
        if op == "dark":
            # arrivals mostly in time order (the storm), sometimes late; equal times happen
            clock += a // 20 if ordered else 0
            detected = T0 + timedelta(seconds=clock if ordered else a)
            fleet.mark_dark(key, onset=detected - timedelta(seconds=b // 4), detected_at=detected)
        elif op == "back":
            fleet.clear_dark(key)
        elif op == "move":
            fleet.put_inventory(key, inventory(node, rack=f"r{rack}", zone=f"z{zone}"))
        elif op == "leave":
            fleet.drop_inventory(key)
        _check(fleet)  # queried after every change: the cached chains must follow each one
    fleet.invalidate_domains()  # a full rebuild gives the same answers
    _check(fleet)


@settings(max_examples=300, deadline=None)
@given(
    ops=st.lists(st.tuples(st.booleans(), st.integers(0, 20), st.integers(0, 5), st.integers(0, 99)), max_size=80),
    gap=st.integers(0, 6),
)
def test_chains_equal_cutting_the_sorted_items(ops: list[tuple[bool, int, int, int]], gap: int) -> None:
    """The structure alone, with many equal times and gaps of exactly `gap`; a removal takes a held item."""
    chains = Chains(timedelta(seconds=gap))
    present: set[tuple[datetime, str]] = set()
    for add, second, name, pick in ops:
        if add or not present:
            item = (T0 + timedelta(seconds=second), f"k{name}")
            chains.insert(item)
            present.add(item)
        else:
            item = sorted(present)[pick % len(present)]
            chains.remove(item)
            present.discard(item)
        groups = _chains(sorted(present), timedelta(seconds=gap))
        for group in groups:
            names = tuple(sorted(k for _, k in group))
            for member in group:
                assert chains.run(member) == (len(group), group[-1][0])
                assert chains.names(member) == names
        assert chains.items == sorted(present)
        assert len(chains.starts) == len(groups)
    rebuilt = Chains(timedelta(seconds=gap), present)
    assert rebuilt.starts == chains.starts
