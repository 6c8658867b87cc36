"""Fleet correlation on generated fleets: a raised group is flagged (once), a fleet without one raises
no alarm over many seeds."""

from __future__ import annotations

import math
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nodeheal.diagnoser.correlation import (
    CorrelationConfig,
    FleetEvent,
    binomial_sf,
    down_spikes,
    group_stats,
    outliers,
)
from nodeheal.diagnoser.kb import default_matcher
from nodeheal.diagnoser.reasoning import Diagnoser
from nodeheal.schemas import NodeInventory
from tests.unit.diagnoser.scenarios import CLUSTER, OOPS_A, anomaly, inventory, later

KERNELS = ("5.10.134", "5.10.200", "5.15.0-53", "6.1.0", "6.6.8")
MODELS = ("ebmg7", "ebmc6", "ebmhfg7", "ebmr8")


def fleet(rng: random.Random, size: int = 2000) -> dict[str, NodeInventory]:
    out = {}
    for i in range(size):
        name = f"n{i:05d}"
        out[name] = NodeInventory(
            cluster=CLUSTER,
            node=name,
            zone=f"z{rng.randrange(3)}",
            rack=f"r{rng.randrange(60)}",
            machine_model=rng.choice(MODELS),
            cpu_model=rng.choice(("icx", "spr", "milan")),
            os_image=rng.choice(("al3", "ubuntu22")),
            kernel=rng.choice(KERNELS),
            node_pool=rng.choice(("gpu", "cpu", "infra")),
        )
    return out


def events(
    rng: random.Random, inv: dict[str, NodeInventory], *, base: float, raised: dict[str, float]
) -> list[FleetEvent]:
    out = []
    for name, record in inv.items():
        rate = base * raised.get(record.kernel or "", 1.0)
        # Poisson count per node in the window (small rates: 0, 1, rarely 2)
        count = 0
        p = rng.random()
        term = cum = pow(2.718281828459045, -rate)
        while p > cum and count < 20:
            count += 1
            term *= rate / count
            cum += term
        out.extend(FleetEvent(node=name, scope="any") for _ in range(count))
    return out


def test_binomial_tail_matches_known_values() -> None:
    assert binomial_sf(0, 10, 0.3) == 1.0
    assert binomial_sf(11, 10, 0.3) == 0.0
    assert binomial_sf(10, 10, 0.5) == pytest.approx(0.5**10)
    assert binomial_sf(1, 10, 0.1) == pytest.approx(1 - 0.9**10)
    assert binomial_sf(3, 20, 0.05) == pytest.approx(0.07548, rel=1e-3)


def test_a_kernel_crashing_eight_times_more_is_flagged_and_nothing_else() -> None:
    rng = random.Random(7)
    inv = fleet(rng)
    evs = events(rng, inv, base=0.01, raised={"6.1.0": 8.0})
    found = outliers(events=evs, inventory=inv)
    assert [(s.dimension, s.value) for s in found] == [("kernel", "6.1.0")]
    stat = found[0]
    assert stat.ratio > 4 and stat.p_value < 1e-6
    assert len(stat.affected_nodes) >= 3


@pytest.mark.parametrize("seed", range(40))
def test_no_false_alarm_on_a_uniform_fleet(seed: int) -> None:
    rng = random.Random(1000 + seed)
    inv = fleet(rng, size=1500)
    evs = events(rng, inv, base=0.02, raised={})
    assert outliers(events=evs, inventory=inv) == []


def test_one_flapping_host_cannot_flag_its_group() -> None:
    rng = random.Random(3)
    inv = fleet(rng, size=500)
    evs = [FleetEvent(node="n00001", scope="any") for _ in range(30)]
    evs += [FleetEvent(node=n, scope="any") for n in list(inv)[100:110]]
    found = outliers(events=evs, inventory=inv, config=CorrelationConfig(min_nodes=3))
    assert all("n00001" not in s.affected_nodes or len(s.affected_nodes) >= 3 for s in found)
    assert not any(s.affected_nodes == ("n00001",) for s in found)


def test_group_stats_rates() -> None:
    inv = {f"a{i}": inventory(f"a{i}", kernel="k1") for i in range(10)} | {
        f"b{i}": inventory(f"b{i}", kernel="k2") for i in range(90)
    }
    evs = [FleetEvent(node=f"a{i}", scope="any") for i in range(5)] + [FleetEvent(node="b1", scope="any")]
    stats = {(s.dimension, s.value): s for s in group_stats(events=evs, inventory=inv, scope="any")}
    k1 = stats[("kernel", "k1")]
    assert (k1.group_events, k1.group_nodes, k1.fleet_events) == (5, 10, 6)
    assert k1.ratio == pytest.approx((5 / 10) / (1 / 90))


def test_down_spike_needs_fraction_and_count() -> None:
    inv = {f"r1-{i}": inventory(f"r1-{i}", rack="r1") for i in range(10)} | {
        f"r2-{i}": inventory(f"r2-{i}", rack="r2") for i in range(10)
    }
    assert down_spikes(down=["r1-0", "r1-1"], inventory=inv) == []
    spikes = down_spikes(down=["r1-0", "r1-1", "r1-2", "r1-3", "r2-0"], inventory=inv)
    assert [(s.dimension, s.value) for s in spikes] == [("rack", "r1")]


def test_diagnoser_raises_a_finding_once_and_joins_it_to_the_diagnoses() -> None:
    diag = Diagnoser(matcher=default_matcher())
    rng = random.Random(11)
    names = [f"n{i:03d}" for i in range(300)]
    for i, name in enumerate(names):
        diag.on_inventory(inventory(name, kernel="bad-5.10" if i < 30 else rng.choice(["k1", "k2"]), rack=f"r{i % 20}"))
    crashing = [*names[:12], names[100], names[200]]
    for i, name in enumerate(crashing):
        diag.on_anomaly(anomaly(name, "kernel_fault", subject="crash", lines=OOPS_A, at=later(i)))
        out = diag.evaluate(f"{CLUSTER}/{name}", now=later(i + 1))
        assert out.diagnosis is not None and out.diagnosis.category == "kernel"
    findings, touched = diag.correlate(now=later(60), cluster=CLUSTER)
    kernel_findings = [f for f in findings if f.dimension == "kernel" and f.value == "bad-5.10"]
    assert kernel_findings, [f.message for f in findings]
    assert {f.scope for f in kernel_findings} >= {"any"}
    assert f"{CLUSTER}/{names[0]}" in touched
    again, _ = diag.correlate(now=later(70), cluster=CLUSTER)
    assert again == []  # raised once
    updated = diag.evaluate(f"{CLUSTER}/{names[0]}", now=later(71)).diagnosis
    assert updated is not None and updated.fleet_correlation is not None
    assert (updated.fleet_correlation.dimension, updated.fleet_correlation.value) == ("kernel", "bad-5.10")
    # a crashing node outside the group does not get the correlation
    outside = diag.evaluate(f"{CLUSTER}/{names[100]}", now=later(72)).diagnosis
    assert outside is None or outside.fleet_correlation is None


def test_a_bad_kernel_is_still_found_in_a_50000_node_fleet_of_1250_racks() -> None:
    """11 crashes on the bad kernel's 10,000 nodes, 5 on the other 40,000 (8.8x, one-sided p = 3.3e-5):
    with every one of the 1,250 racks counted as a test the threshold was 8e-7 and the kernel was lost;
    only groups that can reach the minimum support spend alpha now."""
    inv = {}
    for i in range(50_000):
        name = f"n{i:05d}"
        inv[name] = NodeInventory(
            cluster=CLUSTER, node=name, zone=f"z{i % 3}", rack=f"r{i // 40}", kernel="bad" if i % 5 == 0 else "good"
        )
    bad = [n for n, r in inv.items() if r.kernel == "bad"]
    good = [n for n, r in inv.items() if r.kernel == "good"]
    rng = random.Random(3)
    crashes = [FleetEvent(node=n, scope="any") for n in rng.sample(bad, 11) + rng.sample(good, 5)]
    flagged = {(s.dimension, s.value) for s in outliers(events=crashes, inventory=inv)}
    assert ("kernel", "bad") in flagged
    assert not {f for f in flagged if f[0] == "rack"}


def _binomial_sf_every_term(k: int, n: int, p: float) -> float:
    """The previous definition, every term of the tail summed: the oracle of the truncated sum."""
    if k <= 0:
        return 1.0
    if k > n:
        return 0.0
    if p <= 0.0:
        return 0.0
    if p >= 1.0:
        return 1.0
    log_p, log_q = math.log(p), math.log1p(-p)
    lg_n1 = math.lgamma(n + 1)
    terms = [lg_n1 - math.lgamma(i + 1) - math.lgamma(n - i + 1) + i * log_p + (n - i) * log_q for i in range(k, n + 1)]
    top = max(terms)
    return min(1.0, math.exp(top) * sum(math.exp(t - top) for t in terms))


@settings(max_examples=400, deadline=None)
@given(
    n=st.integers(1, 6000),
    k_share=st.floats(0, 1),
    p=st.one_of(st.floats(1e-6, 0.999), st.sampled_from([1 / 50_000, 40 / 50_000, 1 / 3, 0.5])),
)
def test_binomial_tail_stopped_early_equals_the_sum_of_every_term(n: int, k_share: float, p: float) -> None:
    k = round(k_share * n)
    want = _binomial_sf_every_term(k, n, p)
    got = binomial_sf(k, n, p)
    assert got == pytest.approx(want, rel=1e-12, abs=1e-300)
