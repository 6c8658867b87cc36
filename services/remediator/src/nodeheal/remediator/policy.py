"""The remediator's safety policy as pure functions: blast-radius budgets, the disruption rate, the
storm guard, the per-node repair budget and flap quarantine, stale-diagnosis refusal.

No NATS, no Kubernetes, no clock of its own (`now` is always passed in): the same code decides in the
service, in the replay sandbox and in the simulator. Every check returns a `PolicyCheck` that goes
into the audit record as it is, so an operator reads exactly why an action ran or did not.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Literal

from nodeheal.remediator.settings import Budget, PolicySettings
from nodeheal.schemas.audit import PolicyCheck, RemediationRecord
from nodeheal.schemas.diagnosis import Diagnosis

DomainKind = Literal["cluster", "zone", "rack", "node_pool"]

DISRUPTIVE: frozenset[str] = frozenset({"drain", "reboot", "redeploy", "accept_cloud_event", "retire", "replace"})
"""Actions that take workloads or the machine away: rate-limited, stopped by the storm guard."""
ROTATION: frozenset[str] = frozenset({"retire", "replace"})
"""Actions that take the machine out of the fleet for good (machine rotation): the ladder ends after them."""
CAPACITY: frozenset[str] = DISRUPTIVE | frozenset({"cordon", "taint"})
"""Actions that take a node out of capacity: each needs a blast-radius slot (draino cordoned 75 %)."""
FIXES: frozenset[str] = frozenset(
    {
        "restart_service",
        "restart_agent",
        "clean_disk",
        "reboot",
        "redeploy",
        "accept_cloud_event",
        "wait_for_cloud_event",
    }
)
"""Rungs after which the node is verified; the others (cordon, taint, drain) prepare the next fix."""
REPAIRS: frozenset[str] = FIXES - {"wait_for_cloud_event"}
"""What the per-node repair budget counts."""


@dataclass(frozen=True, slots=True)
class Placement:
    """Where a node sits: its failure domains (from the inventory)."""

    node: str
    zone: str | None = None
    rack: str | None = None
    node_pool: str | None = None

    def domains(self) -> list[tuple[DomainKind, str]]:
        out: list[tuple[DomainKind, str]] = [("cluster", "*")]
        if self.zone:
            out.append(("zone", self.zone))
        if self.rack:
            out.append(("rack", self.rack))
        if self.node_pool:
            out.append(("node_pool", self.node_pool))
        return out


@dataclass(frozen=True, slots=True)
class Slot:
    """One node under capacity-reducing action (an entry of the shared disruption ledger)."""

    node: str
    zone: str | None
    rack: str | None
    node_pool: str | None
    action_id: str
    holder: str
    until: datetime
    episode: str | None = None

    def in_domain(self, kind: DomainKind, value: str) -> bool:
        if kind == "cluster":
            return True
        return {"zone": self.zone, "rack": self.rack, "node_pool": self.node_pool}[kind] == value


@dataclass(slots=True)
class DomainSizes:
    """How many nodes each failure domain has (from the inventory)."""

    cluster: int = 0
    by_domain: dict[tuple[DomainKind, str], int] = field(default_factory=dict)

    def size(self, kind: DomainKind, value: str) -> int:
        return self.cluster if kind == "cluster" else self.by_domain.get((kind, value), 0)

    @classmethod
    def of(cls, placements: Iterable[Placement]) -> DomainSizes:
        sizes = cls()
        for p in placements:
            sizes.cluster += 1
            for key in p.domains()[1:]:
                sizes.by_domain[key] = sizes.by_domain.get(key, 0) + 1
        return sizes


def budget_limit(budget: Budget, size: int) -> int | None:
    """The most nodes the budget lets be under action at once in a domain of `size` nodes.

    A percentage never rounds down to zero for a non-empty domain: 10 % of 5 nodes is 1, not 0
    (Karpenter's fixed 20 % never repaired small pools, #2321)."""
    limits: list[int] = []
    if budget.max_count is not None:
        limits.append(budget.max_count)
    if budget.max_pct is not None and size > 0:
        limits.append(max(1, math.floor(size * budget.max_pct / 100)))
    return min(limits) if limits else None


def _budget_for(policy: PolicySettings, kind: DomainKind) -> Budget:
    return {
        "cluster": policy.cluster_budget,
        "zone": policy.zone_budget,
        "rack": policy.rack_budget,
        "node_pool": policy.pool_budget,
    }[kind]


def check_budgets(
    *,
    placement: Placement,
    slots: Sequence[Slot],
    sizes: DomainSizes,
    policy: PolicySettings,
    now: datetime,
) -> list[PolicyCheck]:
    """Can `placement.node` take a slot? One check per layer; a node already holding a slot passes."""
    live = [s for s in slots if s.until > now and s.node != placement.node]
    checks: list[PolicyCheck] = []
    for kind, value in placement.domains():
        limit = budget_limit(_budget_for(policy, kind), sizes.size(kind, value))
        used = sum(1 for s in live if s.in_domain(kind, value))
        name = f"budget.{kind}"
        if limit is None:
            checks.append(PolicyCheck(name=name, passed=True, detail=f"{value}: no limit"))
            continue
        passed = used + 1 <= limit
        detail = f"{value}: {used} of {limit} in use (size {sizes.size(kind, value)})"
        checks.append(PolicyCheck(name=name, passed=passed, detail=detail))
    return checks


def check_placement(*, placement: Placement, in_inventory: bool) -> PolicyCheck:
    """Is the node's placement known (a zone, rack or node pool in the inventory)? A capacity step of a node with
    none would hold a slot that counts only against the cluster budget, beside any number of nodes of its real
    zone, rack and pool: it is held (fail closed) until the inventory says where the node is."""
    if len(placement.domains()) > 1:
        known = ", ".join(f"{kind} {value}" for kind, value in placement.domains()[1:])
        return PolicyCheck(name="budget.placement", passed=True, detail=f"{placement.node}: {known}")
    where = (
        "its inventory record has no zone, rack or node pool"
        if in_inventory
        else "it has no inventory record (nodeheal-inventory)"
    )
    return PolicyCheck(
        name="budget.placement",
        passed=False,
        detail=f"placement of {placement.node} unknown: {where}, so no zone, rack or pool budget would count it; "
        "capacity steps are held until it is known: label the Node (topology.kubernetes.io/zone, "
        "topology.kubernetes.io/rack or nodeheal.io/rack, a node-pool label such as nodeheal.io/node-pool) "
        "and check that the inventory watcher carries it",
    )


def check_rate(*, recent_starts: Sequence[datetime], policy: PolicySettings, now: datetime) -> PolicyCheck:
    window = [t for t in recent_starts if now - t < timedelta(seconds=60)]
    passed = len(window) < policy.disruptive_per_minute
    return PolicyCheck(
        name="rate",
        passed=passed,
        detail=f"{len(window)} disruptive starts in the last minute, limit {policy.disruptive_per_minute}",
    )


@dataclass(frozen=True, slots=True)
class StormVerdict:
    domain: tuple[DomainKind, str]
    in_storm: bool
    unhealthy: int
    size: int


def evaluate_storms(
    *,
    unhealthy: Mapping[str, Placement] | None = None,
    counts: Mapping[tuple[DomainKind, str], int] | None = None,
    sizes: DomainSizes,
    previously: frozenset[tuple[DomainKind, str]],
    policy: PolicySettings,
) -> dict[tuple[DomainKind, str], StormVerdict]:
    """Which failure domains are in a storm: the unhealthy share jumped above the threshold.

    The unhealthy nodes are given by placement (`unhealthy`) or already counted per domain (`counts`, e.g.
    `FleetView.unhealthy_counts`). Hysteresis: a storm starts at `storm_threshold_pct` (and at least
    `storm_min_unhealthy` nodes) and ends only below `storm_resume_pct`, so the guard does not flap at the edge."""
    if counts is None:
        counted: dict[tuple[DomainKind, str], int] = {}
        for placement in (unhealthy or {}).values():
            for key in placement.domains():
                counted[key] = counted.get(key, 0) + 1
        counts = counted
    verdicts: dict[tuple[DomainKind, str], StormVerdict] = {}
    for key in set(counts) | set(previously):
        n = counts.get(key, 0)
        size = sizes.size(*key)
        share = 100.0 * n / size if size else 0.0
        if key in previously:
            storm = share >= policy.storm_resume_pct and n > 0
        else:
            storm = n >= policy.storm_min_unhealthy and share >= policy.storm_threshold_pct
        verdicts[key] = StormVerdict(domain=key, in_storm=storm, unhealthy=n, size=size)
    return verdicts


def check_storm(*, placement: Placement, verdicts: Mapping[tuple[DomainKind, str], StormVerdict]) -> PolicyCheck:
    stormy = [v for key in placement.domains() if (v := verdicts.get(key)) is not None and v.in_storm]
    if not stormy:
        return PolicyCheck(name="storm_guard", passed=True, detail="no storm in the node's domains")
    detail = "; ".join(f"{k}={val}: {v.unhealthy} of {v.size} unhealthy" for v in stormy for k, val in [v.domain])
    return PolicyCheck(name="storm_guard", passed=False, detail=f"storm: {detail}")


def check_node_history(
    *, action: str, history: Sequence[RemediationRecord], policy: PolicySettings, now: datetime
) -> list[PolicyCheck]:
    """Per-node repair budget and flap quarantine, from the node's own audit history."""
    started = [r for r in history if r.phase == "started" and not r.dry_run]
    repairs = [
        r for r in started if r.action in REPAIRS and now - r.time < timedelta(seconds=policy.node_repair_window_s)
    ]
    reboots = [
        r
        for r in started
        if r.action in ("reboot", "redeploy", "accept_cloud_event")
        and now - r.time < timedelta(seconds=policy.flap_window_s)
    ]
    checks = []
    if action in REPAIRS:
        ok = len(repairs) < policy.node_repair_budget
        checks.append(
            PolicyCheck(
                name="node_repair_budget",
                passed=ok,
                detail=f"{len(repairs)} repairs in {policy.node_repair_window_s:.0f}s, "
                f"budget {policy.node_repair_budget}",
            )
        )
    if action in ("reboot", "redeploy", "accept_cloud_event"):
        ok = len(reboots) < policy.flap_reboots
        checks.append(
            PolicyCheck(
                name="flap_quarantine",
                passed=ok,
                detail=f"{len(reboots)} reboots in {policy.flap_window_s:.0f}s, quarantine at {policy.flap_reboots}",
            )
        )
    return checks


def check_fresh(
    *, diagnosis: Diagnosis, policy: PolicySettings, now: datetime, recovered_at: datetime | None
) -> list[PolicyCheck]:
    """Stale-signal hygiene (draino #116, NVSentinel #1280): too old, too unsure, or the node recovered."""
    age = (now - diagnosis.identified_at).total_seconds()
    checks = [
        PolicyCheck(
            name="stale_diagnosis",
            passed=age <= policy.max_diagnosis_age_s,
            detail=f"identified {age:.0f}s ago, bound {policy.max_diagnosis_age_s:.0f}s",
        ),
        PolicyCheck(
            name="confidence",
            passed=diagnosis.confidence >= policy.min_confidence,
            detail=f"confidence {diagnosis.confidence:.2f}, minimum {policy.min_confidence:.2f}",
        ),
    ]
    if recovered_at is not None:
        checks.append(
            PolicyCheck(
                name="node_recovered",
                passed=recovered_at <= diagnosis.identified_at,
                detail=f"node reported recovered at {recovered_at.isoformat()}",
            )
        )
    return checks


def failed(checks: Iterable[PolicyCheck]) -> list[PolicyCheck]:
    return [c for c in checks if not c.passed]
