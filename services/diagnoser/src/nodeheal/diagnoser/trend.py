"""Sudden rises (突增): is a group failing far above its OWN recent history?

The cross-sectional test of `correlation.py` compares a group with the rest of the fleet at the same
time, so it misses a rise that is spread over many groups at once (every zone doubles) and a rise in a
group that was always a little worse. This test compares each group — and the whole fleet, as the group
`fleet=all` — with its own past: the events of the current window (`current_bins` bins of `bin_s`)
against the mean rate of the `history_bins` bins before it.

Under "no change" the current count follows Poisson(λ), λ = the history's mean per bin × current_bins,
with a floor of `baseline_floor` events per current window (a group with no history at all does not
alarm on its first two events). A group is flagged when, together:
  * the upper tail P(Poisson(λ) >= x) is below alpha / (number of groups that can be flagged) —
    Bonferroni over the groups with at least `min_events` events now (Tarone: a group that cannot reach
    the minimum support spends no alpha);
  * x / λ >= `min_ratio`;
  * at least `min_events` events (node episodes) in the current window.

The false-alarm budget (`alpha`, per correlation run and for the whole fleet) is measured on quiet
generated fleets by `tests/unit/diagnoser/test_trend.py` and recorded in docs/diagnoser.md.

One burst of faults passes the test many times over: in every scope it is counted in (`any`,
`category:kernel`, `bucket:<b>`) and in every group its nodes share (their rack, their zone, the whole
fleet). `one_per_rise` makes that one rise: one scope per group, and one group per set of risen nodes.
Pure: no I/O, no transport.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from nodeheal.diagnoser.groups import DIMENSIONS, GroupIndex, group_value
from nodeheal.schemas.inventory import NodeInventory

FLEET_GROUP: tuple[str, str] = ("fleet", "all")


@dataclass(frozen=True, slots=True)
class TrendConfig:
    bin_s: float = 3600.0
    current_bins: int = 1
    history_bins: int = 24 * 7
    alpha: float = 1e-3
    min_events: int = 5
    min_ratio: float = 3.0
    baseline_floor: float = 1.0

    @property
    def horizon(self) -> timedelta:
        """How far back the test needs events."""
        return timedelta(seconds=self.bin_s * (self.current_bins + self.history_bins))


@dataclass(frozen=True, slots=True)
class TimedEvent:
    """One fault episode of one node, with when it started."""

    node: str
    scope: str
    at: datetime


@dataclass(frozen=True, slots=True)
class TrendStat:
    dimension: str
    value: str
    scope: str
    current_events: int
    history_events: int
    expected: float
    ratio: float
    p_value: float
    tests: int
    affected_nodes: tuple[str, ...]


def poisson_sf(k: int, lam: float) -> float:
    """P(X >= k) for X ~ Poisson(lam), exact in log space (stdlib only)."""
    if k <= 0:
        return 1.0
    if lam <= 0.0:
        return 0.0
    # 1 - CDF(k-1); for a small tail sum the tail directly (k is small here: counts of one window)
    log_lam = math.log(lam)
    upper = max(k + 50, int(lam + 12 * math.sqrt(lam) + 50))
    terms = [i * log_lam - lam - math.lgamma(i + 1) for i in range(k, upper)]
    top = max(terms)
    return min(1.0, math.exp(top) * sum(math.exp(t - top) for t in terms))


def sudden_rises(
    *,
    events: Sequence[TimedEvent],
    inventory: Mapping[str, NodeInventory],
    now: datetime,
    config: TrendConfig = TrendConfig(),
    dimensions: Sequence[str] = DIMENSIONS,
    groups: GroupIndex | None = None,
) -> list[TrendStat]:
    """The groups (and the whole fleet) whose current window is far above their own history. `groups`:
    the inventory's `GroupIndex` when the caller keeps one (a node's groups are then looked up, not
    computed from its record per event)."""
    index = groups if groups is not None and groups.dimensions == tuple(dimensions) else None
    current_start = now - timedelta(seconds=config.bin_s * config.current_bins)
    history_start = current_start - timedelta(seconds=config.bin_s * config.history_bins)
    current: dict[tuple[str, str, str], list[str]] = {}
    history: Counter[tuple[str, str, str]] = Counter()
    for event in events:
        if event.at < history_start or event.at > now:
            continue
        of_node = [FLEET_GROUP]
        if index is not None:
            of_node.extend(index.groups_of.get(event.node, ()))
        elif (record := inventory.get(event.node)) is not None:
            for dimension in dimensions:
                value = group_value(record, dimension)
                if value is not None:
                    of_node.append((dimension, value))
        for dimension, value in of_node:
            key = (dimension, value, event.scope)
            if event.at >= current_start:
                current.setdefault(key, []).append(event.node)
            else:
                history[key] += 1
    candidates = {k: nodes for k, nodes in current.items() if len(nodes) >= config.min_events}
    tests = max(1, len(candidates))
    out: list[TrendStat] = []
    for (dimension, value, scope), nodes in sorted(candidates.items()):
        past = history[(dimension, value, scope)]
        expected = max(past / config.history_bins * config.current_bins, config.baseline_floor)
        x = len(nodes)
        p_value = poisson_sf(x, expected)
        ratio = x / expected
        if p_value < config.alpha / tests and ratio >= config.min_ratio:
            out.append(
                TrendStat(
                    dimension=dimension,
                    value=value,
                    scope=scope,
                    current_events=x,
                    history_events=past,
                    expected=expected,
                    ratio=ratio,
                    p_value=p_value,
                    tests=tests,
                    affected_nodes=tuple(sorted(set(nodes))),
                )
            )
    return out


def _scope_rank(scope: str) -> int:
    """Narrowest first: a crash bucket, then a category, then any fault."""
    if scope.startswith("bucket:"):
        return 0
    if scope.startswith("category:"):
        return 1
    return 2


@dataclass(frozen=True, slots=True)
class Rise:
    """One rise: the group and scope that name it, and what else passed the test for the same faults."""

    stat: TrendStat
    scope: str
    """The scope the rise is reported under: an already reported scope of the group (so the report of an
    ongoing rise keeps its identity when the scopes that pass the test change), else `stat.scope`."""
    other_scopes: tuple[str, ...]
    """The group's other scopes that rose (e.g. `any` under a `bucket:` rise)."""
    same_nodes_as: tuple[tuple[str, str], ...]
    """Other groups (dimension, value) whose rise is exactly these nodes (a rack's burst is its zone's)."""


def one_per_rise(
    stats: Sequence[TrendStat],
    *,
    group_size: Callable[[str, str], int],
    reported: Mapping[tuple[str, str], str] | None = None,
    dimensions: Sequence[str] = DIMENSIONS,
) -> list[Rise]:
    """The rises of `sudden_rises`, one per rise.

    Per group (dimension, value): one scope — the one already reported for that group (`reported`: group →
    scope), else the one with the most risen nodes, the narrowest on a tie. Then per set of risen nodes
    (the union over the group's scopes): one group — an already reported one, else the smallest group
    (a rack before its zone before the fleet), then `dimensions` order, then the value."""
    reported = reported or {}
    by_group: dict[tuple[str, str], list[TrendStat]] = {}
    for stat in stats:
        by_group.setdefault((stat.dimension, stat.value), []).append(stat)
    per_group: list[tuple[Rise, frozenset[str]]] = []
    for group, members in by_group.items():
        best = min(members, key=lambda s: (-len(s.affected_nodes), _scope_rank(s.scope), s.scope))
        scope = reported.get(group, best.scope)
        chosen = next((s for s in members if s.scope == scope), best)
        nodes = frozenset(n for s in members for n in s.affected_nodes)
        others = tuple(sorted((s.scope for s in members if s.scope != scope), key=lambda x: (_scope_rank(x), x)))
        per_group.append((Rise(stat=chosen, scope=scope, other_scopes=others, same_nodes_as=()), nodes))
    order = {dimension: i for i, dimension in enumerate(dimensions)}

    def rank(item: tuple[Rise, frozenset[str]]) -> tuple[bool, int, int, str]:
        stat = item[0].stat
        group = (stat.dimension, stat.value)
        return (group not in reported, group_size(*group), order.get(stat.dimension, len(order)), stat.value)

    by_nodes: dict[frozenset[str], list[Rise]] = {}
    for rise, nodes in sorted(per_group, key=rank):
        by_nodes.setdefault(nodes, []).append(rise)
    out: list[Rise] = []
    for rises in by_nodes.values():
        first, rest = rises[0], rises[1:]
        same = tuple((r.stat.dimension, r.stat.value) for r in rest)
        out.append(Rise(stat=first.stat, scope=first.scope, other_scopes=first.other_scopes, same_nodes_as=same))
    return out
