"""What the simulated fleet shows the active prober, with the prober's own default checks (TCP 10250 and
`https://<address>:10250/healthz`, where a stock kubelet answers 401). The simulator used to refuse that
healthz on every node (written for the old `http://<address>:10248` default, loopback-only on a stock
kubelet), so a silent node whose userland ran still read as hung, never as its agent gone."""

from __future__ import annotations

import time

from nodeheal.sim.fleet import DEFAULT_PROBER_PLAN, FleetSpec, ProberPlan, SimNode, build_inventory


def _node() -> SimNode:
    inv = build_inventory(FleetSpec(nodes=3))[1]
    return SimNode(inv=inv, index=1, booted_at=time.time() - 600)


def _healthz(node: SimNode, plan: ProberPlan = DEFAULT_PROBER_PLAN) -> dict[str, object]:
    return next(c for c in node.prober_checks(plan) if c["check"] == "kubelet_healthz")


def test_a_running_kubelet_answers_the_default_healthz_check() -> None:
    assert DEFAULT_PROBER_PLAN.healthz_url == "https://{address}:10250/healthz"
    node = _node()
    assert _healthz(node)["ok"] is True


def test_a_hung_node_or_a_dead_kubelet_does_not() -> None:
    hung = _node()
    hung.hung = True
    check = _healthz(hung)
    assert check["ok"] is False and check["error"] == "HTTP 500"
    stopped = _node()
    stopped.services["kubelet"] = "failed"
    assert _healthz(stopped)["ok"] is False


def test_the_loopback_healthz_port_is_refused_on_the_nodes_address() -> None:
    plan = ProberPlan(
        tcp_ports=(10250,), ssh_port=None, healthz_url="http://{address}:10248/healthz", timeout_s=2.0, interval_s=10.0
    )
    check = _healthz(_node(), plan)
    assert check["ok"] is False and check["error"] == "connection refused"
