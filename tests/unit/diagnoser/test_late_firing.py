"""A firing stored after its own resolution (the detector's publish of the firing failed and was sent again
after the resolution's was stored): the diagnoser takes the pair as if it had come in order — the episode is
over, nothing stays firing, no verdict stands for a healthy node."""

from __future__ import annotations

from nodeheal.diagnoser.kb import default_matcher
from nodeheal.diagnoser.reasoning import Diagnoser
from tests.unit.diagnoser.scenarios import CLUSTER, anomaly, inventory, later


def _diagnoser(*nodes: str) -> Diagnoser:
    diag = Diagnoser(matcher=default_matcher())
    for node in nodes:
        diag.on_inventory(inventory(node))
    return diag


def test_a_firing_that_arrives_after_its_resolution_does_not_open_the_episode_again() -> None:
    diag = _diagnoser("n0")
    firing = anomaly("n0", "disk_full", subject="/", at=later(0))
    resolved = anomaly("n0", "disk_full", subject="/", at=later(30), onset=later(0), status="resolved")
    diag.on_anomaly(resolved)
    diag.on_anomaly(firing)
    out = diag.evaluate(f"{CLUSTER}/n0", now=later(31))
    ctx = diag.fleet.nodes[f"{CLUSTER}/n0"]
    assert not ctx.firing, f"episode left open: {list(ctx.firing)}"
    assert out.diagnosis is None or out.diagnosis.resolved
    assert firing.id in {a.id for a in ctx.anomalies}  # remembered, as an in-order pair would be


def test_a_late_node_down_firing_does_not_mark_the_node_dark() -> None:
    diag = _diagnoser("n0", "n1")
    firing = anomaly("n0", "node_down", at=later(0))
    resolved = anomaly("n0", "node_down", at=later(20), onset=later(0), status="resolved")
    diag.on_anomaly(resolved)
    diag.on_anomaly(firing)
    assert f"{CLUSTER}/n0" not in diag.fleet.dark_at
    assert not diag.fleet.nodes[f"{CLUSTER}/n0"].firing


def test_a_new_episode_of_the_same_key_after_a_resolution_still_fires() -> None:
    diag = _diagnoser("n0")
    diag.on_anomaly(anomaly("n0", "disk_full", subject="/", at=later(0)))
    diag.on_anomaly(anomaly("n0", "disk_full", subject="/", at=later(30), onset=later(0), status="resolved"))
    again = anomaly("n0", "disk_full", subject="/", at=later(60))  # a new onset: a new episode
    diag.on_anomaly(again)
    assert diag.fleet.nodes[f"{CLUSTER}/n0"].firing == {again.anomaly_key: again}


def test_the_resolutions_remembered_are_bounded() -> None:
    from nodeheal.diagnoser.state import MAX_RESOLVED_KEYS, NodeContext

    ctx = NodeContext(cluster=CLUSTER, node="n0")
    for i in range(MAX_RESOLVED_KEYS + 50):
        ctx.add_anomaly(
            anomaly("n0", "disk_full", subject=f"/m{i}", at=later(i + 1), onset=later(i), status="resolved")
        )
    assert len(ctx.resolved_onsets) == MAX_RESOLVED_KEYS
