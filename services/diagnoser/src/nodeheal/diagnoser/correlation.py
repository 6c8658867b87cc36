"""Fleet correlation (docs/diagnoser.md): is one group failing far above the rest of the fleet?

For every grouping dimension (zone, rack, machine model, CPU model, OS, kernel, node pool) and every
value of it, the events of a window (crashes / kernel and hardware faults, one per node episode) are
compared with the rest of the fleet. Under "no difference" the group's share of the events follows
Binomial(X, n_g / N) (X events in the fleet, n_g of N nodes in the group: each node carries the same
node-time in the window). A group is flagged when, together:
  * the one-sided exact binomial p-value P(Bin(X, n_g/N) >= x_g) is below alpha / (number of groups
    tested) — Bonferroni, so a fleet with hundreds of racks does not raise false alarms by chance;
  * the rate ratio (x_g / n_g) / (rest events / rest nodes) is at least `min_ratio`;
  * at least `min_nodes` distinct nodes of the group had events (one flapping host cannot flag a group).
Down-node spikes: the share of a domain's nodes that are down now is compared with a threshold.
Pure: no I/O, no transport; the service feeds it events and the inventory.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from nodeheal.diagnoser.groups import DIMENSIONS as DIMENSIONS
from nodeheal.diagnoser.groups import GroupIndex as GroupIndex
from nodeheal.diagnoser.groups import group_value as group_value
from nodeheal.schemas.inventory import NodeInventory


@dataclass(frozen=True, slots=True)
class CorrelationConfig:
    alpha: float = 1e-3
    min_ratio: float = 3.0
    min_nodes: int = 3
    min_group_size: int = 2
    spike_fraction: float = 0.3
    spike_min_nodes: int = 3


@dataclass(frozen=True, slots=True)
class FleetEvent:
    """One crash / fault episode of one node (the unit the rates count)."""

    node: str
    scope: str  # "any", "category:<c>", "bucket:<b>"


@dataclass(frozen=True, slots=True)
class GroupStat:
    dimension: str
    value: str
    scope: str
    group_events: int
    group_nodes: int
    fleet_events: int
    fleet_nodes: int
    group_rate: float
    rest_rate: float
    ratio: float
    p_value: float
    tests: int
    affected_nodes: tuple[str, ...]

    @property
    def key(self) -> tuple[str, str, str]:
        return (self.dimension, self.value, self.scope)


def binomial_sf(k: int, n: int, p: float) -> float:
    """P(X >= k) for X ~ Binomial(n, p), in log space (stdlib only). The terms are summed from k up;
    past the mode each is smaller than the one before by a ratio that keeps falling, so the sum stops
    once the rest (bounded by a geometric series) is below 1e-17 of it: O(terms that matter), not
    O(n - k) — a storm's thousands of events cost tens of terms per group, not thousands."""
    if k <= 0:
        return 1.0
    if k > n:
        return 0.0
    if p <= 0.0:
        return 0.0
    if p >= 1.0:
        return 1.0
    log_p, log_q = math.log(p), math.log1p(-p)
    odds = p / (1.0 - p)
    lg_n1 = math.lgamma(n + 1)
    lgamma, exp = math.lgamma, math.exp

    def log_term(i: int) -> float:
        return lg_n1 - lgamma(i + 1) - lgamma(n - i + 1) + i * log_p + (n - i) * log_q

    mode = min(n, int((n + 1) * p))  # the largest term: the sum is scaled by it, as exp(top) * sum(...)
    top = log_term(max(k, mode))
    total = 0.0
    for i in range(k, n + 1):
        term = exp(log_term(i) - top)
        total += term
        if i >= mode:
            ratio = (n - i) / (i + 1) * odds  # term(i + 1) / term(i)
            if ratio < 1.0 and term * ratio / (1.0 - ratio) <= total * 1e-17:
                break
    return min(1.0, exp(top) * total)


def group_stats(
    *,
    events: Sequence[FleetEvent],
    inventory: Mapping[str, NodeInventory],
    scope: str,
    dimensions: Sequence[str] = DIMENSIONS,
    config: CorrelationConfig = CorrelationConfig(),
    groups: GroupIndex | None = None,
) -> list[GroupStat]:
    """The statistic of every group (tested or not) for one scope of events. `groups`: the inventory's
    `GroupIndex` when the caller keeps one (built from `inventory` otherwise)."""
    index = groups if groups is not None else GroupIndex.of(inventory, dimensions)
    wanted = set(dimensions)
    counted = [e for e in events if e.scope == scope and e.node in index.groups_of]
    fleet_nodes = len(index)
    fleet_events = len(counted)
    if fleet_nodes == 0 or fleet_events == 0:
        return []
    by_node: dict[str, int] = {}
    for event in counted:
        by_node[event.node] = by_node.get(event.node, 0) + 1
    # per group, from the nodes with events (not from every member of every group)
    events_in: dict[tuple[str, str], int] = {}
    hit: dict[tuple[str, str], list[str]] = {}
    for node, count in by_node.items():
        for group in index.groups_of[node]:
            if group[0] in wanted:
                events_in[group] = events_in.get(group, 0) + count
                hit.setdefault(group, []).append(node)
    # a group equal to the whole fleet cannot differ from "the rest"
    tested = {
        g: len(m) for g, m in index.members.items() if g[0] in wanted and config.min_group_size <= len(m) < fleet_nodes
    }
    # Bonferroni over the groups that *can* be flagged: a group with fewer affected nodes than the
    # minimum support is never flagged, so it spends no alpha (Tarone's argument for discrete tests).
    # Counting every group instead (1,250 racks at 50,000 nodes) hid a 10-crash bad kernel there.
    tests = max(1, sum(1 for g in tested if len(hit.get(g, ())) >= config.min_nodes))
    out: list[GroupStat] = []
    for (dimension, value), n_g in sorted(tested.items()):
        x_g = events_in.get((dimension, value), 0)
        rest_nodes = fleet_nodes - n_g
        rest_events = fleet_events - x_g
        group_rate = x_g / n_g
        # half an event of pseudo-count: a rest with no events at all still gives a finite ratio
        rest_rate = max(rest_events, 0.5) / rest_nodes
        p_value = binomial_sf(x_g, fleet_events, n_g / fleet_nodes)
        affected = tuple(sorted(hit.get((dimension, value), ())))
        out.append(
            GroupStat(
                dimension=dimension,
                value=value,
                scope=scope,
                group_events=x_g,
                group_nodes=n_g,
                fleet_events=fleet_events,
                fleet_nodes=fleet_nodes,
                group_rate=group_rate,
                rest_rate=rest_rate,
                ratio=group_rate / rest_rate,
                p_value=p_value,
                tests=tests,
                affected_nodes=affected,
            )
        )
    return out


def flagged(stats: Iterable[GroupStat], *, config: CorrelationConfig = CorrelationConfig()) -> list[GroupStat]:
    """The groups that pass the test, the ratio threshold and the minimum support."""
    return [
        s
        for s in stats
        if s.p_value < config.alpha / s.tests
        and s.ratio >= config.min_ratio
        and len(s.affected_nodes) >= config.min_nodes
    ]


def outliers(
    *,
    events: Sequence[FleetEvent],
    inventory: Mapping[str, NodeInventory],
    config: CorrelationConfig = CorrelationConfig(),
    dimensions: Sequence[str] = DIMENSIONS,
    groups: GroupIndex | None = None,
) -> list[GroupStat]:
    """Flagged groups over every scope present in the events. A group flagged for a narrower scope
    (one crash bucket) is also reported at that scope, so the finding names the signature."""
    scopes = sorted({e.scope for e in events})
    if groups is None and scopes:
        groups = GroupIndex.of(inventory, dimensions)
    found: list[GroupStat] = []
    for scope in scopes:
        found.extend(
            flagged(
                group_stats(
                    events=events,
                    inventory=inventory,
                    scope=scope,
                    dimensions=dimensions,
                    config=config,
                    groups=groups,
                ),
                config=config,
            )
        )
    return found


@dataclass(frozen=True, slots=True)
class DownSpike:
    dimension: str
    value: str
    down_nodes: tuple[str, ...]
    group_nodes: int
    fraction: float
    rest_fraction: float


def down_spikes(
    *,
    down: Iterable[str],
    inventory: Mapping[str, NodeInventory],
    config: CorrelationConfig = CorrelationConfig(),
    dimensions: Sequence[str] = ("zone", "rack", "node_pool"),
    groups: GroupIndex | None = None,
) -> list[DownSpike]:
    """Failure domains where at least `spike_fraction` of the nodes (and `spike_min_nodes`) are down now.
    `groups`: the inventory's `GroupIndex` when the caller keeps one (built from `inventory` otherwise)."""
    index = groups if groups is not None else GroupIndex.of(inventory, dimensions)
    wanted = set(dimensions)
    down_set = {n for n in down if n in index.groups_of}
    hit: dict[tuple[str, str], list[str]] = {}
    for name in down_set:
        for group in index.groups_of[name]:
            if group[0] in wanted:
                hit.setdefault(group, []).append(name)
    total = len(index)
    # only groups with a down node can reach spike_min_nodes (every group when that is 0)
    candidates = hit if config.spike_min_nodes > 0 else {g: hit.get(g, []) for g in index.members if g[0] in wanted}
    out: list[DownSpike] = []
    for (dimension, value), down_nodes in sorted(candidates.items()):
        nodes = index.members[(dimension, value)]
        down_here = tuple(sorted(down_nodes))
        if len(down_here) < config.spike_min_nodes:
            continue
        fraction = len(down_here) / len(nodes)
        rest = total - len(nodes)
        rest_fraction = (len(down_set) - len(down_here)) / rest if rest > 0 else 0.0
        if fraction >= config.spike_fraction:
            out.append(
                DownSpike(
                    dimension=dimension,
                    value=value,
                    down_nodes=down_here,
                    group_nodes=len(nodes),
                    fraction=fraction,
                    rest_fraction=rest_fraction,
                )
            )
    return out
