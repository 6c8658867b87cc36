"""The remediator's Kubernetes calls under the RBAC deploy/ gives it: every request the remediator made to the
Kubernetes emulator (kmock's request log) is one the production overlay's ClusterRole or its namespaced Role
(bound to the `nodeheal-remediator` ServiceAccount) allows. The emulator itself allows everything, so without
this a call the deployed remediator is refused (a pod `get`, an event `patch`, an event outside its namespace)
would pass every other test and fail only in a cluster.

The actions cover the remediator's Kubernetes verbs: restart_agent (list and delete the agent's pod in its
namespace), cordon, drain (list every namespace's pods on the node, evictions), retire (read and patch the
node) and the Events it leaves on nodes, with the settings deploy/ gives it (KUBE__EVENT_NAMESPACE and
KUBE__AGENT_NAMESPACE: its own namespace). It runs as deployed on NATS too (the remediator role's credential)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from nodeheal.sim.kube import KubeWorld
from tests.integration.deploy.natsauth_loader import per_role_server, role_nats, violations
from tests.integration.remediator.harness import (
    Probes,
    add_inventory,
    diagnosis,
    make_settings,
    mce_crash,
    publish_diagnosis,
    start_service,
    wait_for_record,
)
from tests.unit.deploy.test_kustomize import objects

pytestmark = pytest.mark.nats

NAMESPACE = "nodeheal"  # the overlays install nodeheal there (the Role's, the DaemonSet's, the remediator's)
ACCOUNT = {"kind": "ServiceAccount", "name": "nodeheal-remediator", "namespace": NAMESPACE}
AGENT = {"app.kubernetes.io/name": "nodeheal", "app.kubernetes.io/component": "agent"}

Rule = tuple[str, str, str]  # (api group, resource[/subresource], verb)


def granted(overlay: str) -> tuple[set[Rule], dict[str, set[Rule]]]:
    """What the overlay lets the remediator's ServiceAccount do: cluster-wide rules, and rules per namespace."""

    def rules(role: dict[str, Any]) -> set[Rule]:
        return {
            (g, r, v)
            for rule in role["rules"]
            for g in rule["apiGroups"]
            for r in rule["resources"]
            for v in rule["verbs"]
        }

    cluster: set[Rule] = set()
    for binding in objects(overlay, "ClusterRoleBinding").values():
        if ACCOUNT in binding["subjects"]:
            cluster |= rules(objects(overlay, "ClusterRole")[binding["roleRef"]["name"]])
    namespaced: dict[str, set[Rule]] = {}
    for binding in objects(overlay, "RoleBinding").values():
        if ACCOUNT in binding["subjects"]:
            role = objects(overlay, "Role")[binding["roleRef"]["name"]]
            namespaced.setdefault(role["metadata"]["namespace"], set()).update(rules(role))
    return cluster, namespaced


def asked(request: Any) -> tuple[str | None, Rule]:
    """(namespace, rule) one request of the emulator's log (kmock keeps every request it served) needs."""
    method = str(request.method.value if hasattr(request.method, "value") else request.method).upper()
    if method == "GET":
        verb = "get" if request.name else ("watch" if request.params.get("watch") in ("true", "1") else "list")
    else:
        verb = {"POST": "create", "PATCH": "patch", "PUT": "update"}.get(method, "")
        if method == "DELETE":
            verb = "delete" if request.name else "deletecollection"
    resource = request.resource.plural + (f"/{request.subresource}" if request.subresource else "")
    return request.namespace, (request.resource.group, resource, verb or method)


async def test_every_kubernetes_call_of_the_remediator_is_one_its_rbac_allows(tmp_path: Path, world: KubeWorld) -> None:
    world.add_pod("nodeheal-agent-n1", node="n1", namespace=NAMESPACE, labels=AGENT, owner_kind="DaemonSet")
    world.add_pod("web-n2", node="n2", namespace="default", labels={"app": "web"}, owner_kind="ReplicaSet")
    async with per_role_server(tmp_path, "remediator") as (server, nc, admin):
        for node in ("n1", "n2"):
            await add_inventory(nc, admin, node, zone="z1", node_pool="p1", cloud="alibaba", instance_id=f"i-{node}")
        settings = make_settings(role_nats(tmp_path, server.url, "remediator"), kube_url=world.url)
        kube = settings.kube.model_copy(update={"event_namespace": NAMESPACE, "agent_namespace": NAMESPACE})
        service = await start_service(settings.model_copy(update={"kube": kube}))
        try:
            async with Probes(nc, admin, "n1"), Probes(nc, admin, "n2"):
                await publish_diagnosis(nc, admin, diagnosis("n1", ["restart_agent", "escalate"]))
                await publish_diagnosis(nc, admin, mce_crash("n2", ["cordon", "drain", "retire"]))
                await wait_for_record(nc, admin, node="n1", action="restart_agent", phase="verified", timeout=30)
                await wait_for_record(nc, admin, node="n2", action="retire", phase="succeeded", timeout=30)
        finally:
            await service.stop()
    assert violations(tmp_path) == []
    cluster, namespaced = granted("production")
    requests = [asked(r) for r in world.emulator._requests]
    refused = [
        (ns, rule) for ns, rule in requests if rule not in cluster and rule not in namespaced.get(ns or "", set())
    ]
    assert refused == [], refused
    seen = {rule for _, rule in requests}
    # what this run covers: each kind of call the remediator makes
    assert {
        ("", "nodes", "patch"),
        ("", "nodes", "get"),
        ("", "pods", "list"),
        ("", "pods", "delete"),
        ("", "pods/eviction", "create"),
        ("", "events", "create"),
    } <= seen, seen
    assert world.effects and any(e == "cordon" for _, n, e in world.effects if n == "n2")
    assert world.events_for("n2")
