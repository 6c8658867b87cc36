"""A prober batch's entry is judged exactly as the single prober probe it replaces: the issue-19 round
scenarios of docs/detector.md ("Prober verdict and its round") give the same anomalies, at the same times,
when the verdicts come as `ProberResults` entries (decoded by the detector's fast path, as on the wire)."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from nodeheal.cloud_events.prober.batch import ResultBatcher
from nodeheal.detector.fastpath import FastProbe, results_decoder
from nodeheal.detector.rules import Detector, RuleConfig
from tests.unit.detector.helpers import T0, agent_probe, prober_probe

Verdict = Callable[[float, bool, bool], list[FastProbe]]


def single(t: float, tcp: bool, kubelet: bool) -> list[FastProbe]:
    return [prober_probe(t=t, seq=int(t * 10), tcp=tcp, kubelet_healthz=kubelet)]


def batched(t: float, tcp: bool, kubelet: bool) -> list[FastProbe]:
    """n1's verdict in a batch with other nodes' (as the prober sends it), decoded as the detector decodes it."""
    batcher = ResultBatcher(cluster="c1", partitions=0, prefix="nodeheal", seq=int(t))
    for node in ("n0", "n1", "n3"):
        batcher.add(
            node,
            [
                {"check": "tcp", "target": "10.0.0.1", "ok": tcp},
                {"check": "kubelet_healthz", "target": "10.0.0.1", "ok": kubelet},
            ],
        )
    [batch] = batcher.drain()
    probes = results_decoder.decode(batch.body).probes()
    return [p for p in probes if p.node == "n1"]  # the other nodes are nobody's concern here


def scenario(
    verdict: Verdict,
    *,
    agent_every: float,
    prober_every: float,
    phase: float,
    dark_at: float,
    hung: bool,
    **rules: float,
) -> list[tuple[str, str, float]]:
    det = Detector(config=RuleConfig(warmup_s=0.0, **rules), started_at=T0)  # type: ignore[arg-type]
    out: list[tuple[str, str, float]] = []
    t = T0
    next_agent, next_prober = T0, T0 + phase
    while t <= T0 + 70:
        bad = t >= T0 + dark_at
        if t >= next_agent:
            if not bad:
                det.observe_probe(agent_probe(t=t, seq=int(t * 10)), now=t)
            det.observe_probe(agent_probe(t=t, seq=int(t * 10), node="n2"), now=t)
            next_agent += agent_every
        if t >= next_prober:
            for probe in verdict(t, not bad or hung, not bad):
                det.observe_probe(probe, now=t)
            next_prober += prober_every
        det.tick(now=t)
        out += [(a.kind, a.status, t - T0) for a in det.outbox]
        det.outbox.clear()
        if bad and t >= T0 + 50:  # the node is back
            det.observe_probe(agent_probe(t=t, seq=int(t * 10)), now=t)
            dark_at = 1e9
        t += 0.5
    return out


CASES = {
    "dark just after a verdict": (
        {
            "agent_every": 5.0,
            "prober_every": 10.0,
            "phase": 4.0,
            "dark_at": 14.5,
            "hung": False,
            "probe_interval_s": 5.0,
            "prober_interval_s": 10.0,
        },
        "node_down",
    ),
    "a hang between two rounds": (
        {
            "agent_every": 2.0,
            "prober_every": 20.0,
            "phase": 1.0,
            "dark_at": 20.5,
            "hung": True,
            "probe_interval_s": 2.0,
            "prober_interval_s": 20.0,
        },
        "node_hang",
    ),
    "agents and prober at 10 s": (
        {
            "agent_every": 10.0,
            "prober_every": 10.0,
            "phase": 3.0,
            "dark_at": 12.0,
            "hung": True,
            "probe_interval_s": 10.0,
            "prober_interval_s": 10.0,
        },
        "node_hang",
    ),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_a_batch_entry_is_judged_as_the_single_prober_probe(case: str) -> None:
    kw, kind = CASES[case]
    from_single = scenario(single, **kw)  # type: ignore[arg-type]
    from_batches = scenario(batched, **kw)  # type: ignore[arg-type]
    assert from_batches == from_single
    assert [(k, s) for k, s, _ in from_batches] == [(kind, "firing"), (kind, "resolved")]
