"""A Kubernetes world for tests and the fleet simulator, served over HTTP by kmock's emulator.

`KubeWorld` holds Nodes, Pods (including DaemonSet-owned and mirror pods), PodDisruptionBudgets and
Events, and answers the official `kubernetes` client like an API server would for what nodeheal does:
get/list/watch/patch nodes, list pods by `spec.nodeName`, list PDBs, create events, and the Eviction
subresource with real PDB semantics (HTTP 429 when the budget allows no disruption). A successful
eviction deletes the pod and, if the pod belongs to a ReplicaSet and `reschedule=True`, creates its
replacement on another ready, schedulable node, the way a controller would.

It is built for thousands of nodes: gets and pod lists use indexes, not scans, and nothing sleeps.
It must never be imported by a service: it is a simulator.

    async with KubeWorld() as world:
        world.add_node("n1", zone="z1")
        world.add_pod("web-1", node="n1", labels={"app": "web"}, owner_kind="ReplicaSet")
        world.add_pdb("web", selector={"app": "web"}, min_available=1)
        ... kubernetes.aio.client.Configuration(host=world.url) ...
"""

from __future__ import annotations

import contextlib
import itertools
import json
import time
from collections import defaultdict
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from types import TracebackType
from typing import Any, Self

import aiohttp.web
import kmock
from kmock._internal import rendering

_NODES = kmock.resource("", "v1", "nodes")
_PODS = kmock.resource("", "v1", "pods")
_EVENTS = kmock.resource("", "v1", "events")
_PDBS = kmock.resource("policy", "v1", "poddisruptionbudgets")
_MIRROR_ANNOTATION = "kubernetes.io/config.mirror"


def _now() -> str:
    return datetime.now(tz=UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _status(code: int, reason: str, message: str) -> aiohttp.web.Response:
    body = {"apiVersion": "v1", "kind": "Status", "metadata": {}, "status": "Failure", "code": code}
    body.update({"reason": reason, "message": message})
    return aiohttp.web.json_response(body, status=code)


def _merge(base: dict[str, Any], patch: Mapping[str, Any]) -> dict[str, Any]:
    """JSON merge patch (RFC 7386): dicts merge, None deletes, anything else (lists too) replaces."""
    out = dict(base)
    for key, value in patch.items():
        if value is None:
            out.pop(key, None)
        elif isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = _merge(dict(out[key]), value)
        else:
            out[key] = value
    return out


def _selector_matches(selector: Mapping[str, str], labels: Mapping[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


def _parse_label_selector(raw: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for part in filter(None, (p.strip() for p in raw.split(","))):
        key, _, value = part.partition("=")
        out[key.strip()] = value.strip().lstrip("=")
    return out


@dataclass
class EvictionLog:
    """What the eviction subresource answered, in order: (namespace, pod, HTTP status)."""

    calls: list[tuple[str, str, int]] = field(default_factory=list)

    def count(self, status: int) -> int:
        return sum(1 for _, _, s in self.calls if s == status)


class _Emulator(kmock.KubernetesEmulator):
    """kmock's emulator with the eviction subresource and indexed reads."""

    world: KubeWorld

    async def _handle(self, request: rendering.Request) -> aiohttp.web.StreamResponse:
        world = self.world
        world.requests += 1
        if len(self._requests) > world.keep_requests:
            del self._requests[: -world.keep_requests // 2]
        if request.resource == _PODS and request.subresource == "eviction" and request.method == "POST":
            return await world._evict(request.namespace or "default", request.name or "")
        if request.action == kmock.action.FETCH and request.subresource is None and request.resource is not None:
            key = (request.resource, request.namespace, request.name or "")
            if key in self._objects and not self._objects[key].deleted:
                return aiohttp.web.json_response(self._objects[key].raw)
        if request.action == kmock.action.LIST and request.resource == _PODS:
            return aiohttp.web.json_response(world._list_pods(request.params, request.namespace))
        if (
            request.action == kmock.action.LIST
            and request.resource == _NODES
            and request.params.get("labelSelector")
            and request.params.get("watch") not in ("true", "1")
        ):
            return aiohttp.web.json_response(world._list_nodes(request.params))
        # kmock's generic handler matches every stored object against its filters on each request;
        # at 50,000 nodes that is seconds per cordon or event, so the two writes nodeheal makes are
        # served here directly
        if (
            request.method == kmock.method.PATCH
            and request.resource == _NODES
            and request.name
            and request.subresource is None
            and isinstance(request.data, dict)
        ):
            return world._patch_node(request.name, request.data)
        if request.action == kmock.action.CREATE and request.resource == _EVENTS and isinstance(request.data, dict):
            world.events_created += 1
            world._events.append(request.data)
            body = {
                **request.data,
                "metadata": {**request.data.get("metadata", {}), "uid": f"ev-{world.events_created}"},
            }
            return aiohttp.web.json_response(body, status=201)
        response: aiohttp.web.StreamResponse = await super()._handle(request)
        if request.resource == _PODS and request.action in (kmock.action.CREATE, kmock.action.DELETE):
            world._reindex_pods()
        if request.resource == _NODES and request.name and request.action != kmock.action.FETCH:
            world._note_cordon(request.name)
        if request.action == kmock.action.CREATE and request.resource == _EVENTS:
            world.events_created += 1
        return response


class KubeWorld:
    """Nodes, pods, PDBs and events behind a real HTTP endpoint (`url`) for the official client."""

    def __init__(self, *, reschedule: bool = True, keep_requests: int = 10_000) -> None:
        self.emulator = _Emulator()
        self.emulator.world = self
        self.reschedule = reschedule
        self.keep_requests = keep_requests
        self.evictions = EvictionLog()
        self.requests = 0
        self.events_created = 0
        self._server: kmock.Server | None = None
        self._pods_by_node: dict[str, set[tuple[str, str]]] = defaultdict(set)
        # (namespace, label key, label value) → pod names: PDB status is computed from this index,
        # so adding or evicting a pod costs O(matching pods), not O(pods x PDBs)
        self._pods_by_label: dict[tuple[str, str, str], set[str]] = defaultdict(set)
        self._defer_refresh = False
        self._cordoned: set[str] = set()
        # side-effect log for the referee: (unix time, node, "cordon" | "uncordon" | "evict:<ns>/<pod>")
        self.effects: list[tuple[float, str, str]] = []
        self._events: list[dict[str, Any]] = []
        self._counter = itertools.count(1)

    # -- lifecycle -------------------------------------------------------------------------------
    async def __aenter__(self) -> Self:
        await self.emulator.__aenter__()
        self._server = kmock.Server(self.emulator)
        await self._server.__aenter__()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._server is not None:
            await self._server.__aexit__(exc_type, exc, tb)
            self._server = None
        await self.emulator.__aexit__(exc_type, exc, tb)

    @property
    def url(self) -> str:
        if self._server is None:
            msg = "KubeWorld is not running: use `async with KubeWorld() as world:`"
            raise RuntimeError(msg)
        return str(self._server.url).rstrip("/")

    # -- building the world ----------------------------------------------------------------------
    def add_node(
        self,
        name: str,
        *,
        ready: bool = True,
        zone: str | None = None,
        rack: str | None = None,
        node_pool: str | None = None,
        provider_id: str | None = None,
        labels: Mapping[str, str] | None = None,
    ) -> None:
        all_labels = {"kubernetes.io/hostname": name, **(labels or {})}
        if zone:
            all_labels["topology.kubernetes.io/zone"] = zone
        if rack:
            all_labels["topology.kubernetes.io/rack"] = rack  # one the inventory watcher reads
        if node_pool:
            all_labels["nodeheal.io/node-pool"] = node_pool
        node: dict[str, Any] = {
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {"name": name, "labels": all_labels, "uid": f"uid-node-{name}"},
            "spec": {"unschedulable": False, "taints": []},
            "status": {"conditions": [self._ready_condition(ready)]},
        }
        if provider_id:
            node["spec"]["providerID"] = provider_id
        self.emulator.objects[_NODES, None, name] = node

    def add_pod(
        self,
        name: str,
        *,
        node: str,
        namespace: str = "default",
        labels: Mapping[str, str] | None = None,
        owner_kind: str | None = "ReplicaSet",
        mirror: bool = False,
    ) -> None:
        meta: dict[str, Any] = {"name": name, "namespace": namespace, "labels": dict(labels or {})}
        meta["uid"] = f"uid-pod-{namespace}-{name}"
        if owner_kind:
            meta["ownerReferences"] = [
                {"apiVersion": "apps/v1", "kind": owner_kind, "name": f"{name}-owner", "uid": "u", "controller": True}
            ]
        if mirror:
            meta["annotations"] = {_MIRROR_ANNOTATION: "mirror"}
            meta.pop("ownerReferences", None)
        pod = {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": meta,
            "spec": {"nodeName": node, "containers": [{"name": "main", "image": "busybox"}]},
            "status": {"phase": "Running"},
        }
        self.emulator.objects[_PODS, namespace, name] = pod
        self._pods_by_node[node].add((namespace, name))
        for key, value in meta["labels"].items():
            self._pods_by_label[namespace, key, value].add(name)
        if not self._defer_refresh:
            self._refresh_pdbs(namespace=namespace, labels=meta["labels"])

    def add_pdb(
        self,
        name: str,
        *,
        selector: Mapping[str, str],
        namespace: str = "default",
        min_available: int | str | None = None,
        max_unavailable: int | str | None = None,
    ) -> None:
        spec: dict[str, Any] = {"selector": {"matchLabels": dict(selector)}}
        if min_available is not None:
            spec["minAvailable"] = min_available
        if max_unavailable is not None:
            spec["maxUnavailable"] = max_unavailable
        self.emulator.objects[_PDBS, namespace, name] = {
            "apiVersion": "policy/v1",
            "kind": "PodDisruptionBudget",
            "metadata": {"name": name, "namespace": namespace},
            "spec": spec,
            "status": {},
        }
        if not self._defer_refresh:
            self._refresh_pdbs()

    @contextlib.contextmanager
    def bulk(self) -> Iterator[None]:
        """Build a large world quickly: PDB statuses are computed once, at the end."""
        self._defer_refresh = True
        try:
            yield
        finally:
            self._defer_refresh = False
            self._refresh_pdbs()

    def delete_node(self, name: str) -> bool:
        """The Node object goes away, as the cloud controller manager's node lifecycle controller deletes a
        Node whose instance the cloud no longer has; the pods still bound to it (a drained node keeps its
        DaemonSet pods) are garbage-collected with it. Not a side effect of nodeheal's: not in `effects`."""
        key = (_NODES, None, name)
        if key not in self.emulator.objects or self.emulator.objects[key].deleted:
            return False
        for namespace, pod in sorted(self._pods_by_node.pop(name, set())):
            pod_key = (_PODS, namespace, pod)
            if pod_key in self.emulator.objects and not self.emulator.objects[pod_key].deleted:
                self.emulator.objects[pod_key].delete()
        self.emulator.objects[key].delete()
        self._cordoned.discard(name)
        self._reindex_pods()
        return True

    def has_node(self, name: str) -> bool:
        key = (_NODES, None, name)
        return key in self.emulator.objects and not self.emulator.objects[key].deleted

    def set_ready(self, node: str, ready: bool) -> None:
        obj = self.emulator.objects[_NODES, None, node]
        conditions = [c for c in obj["status"].get("conditions", []) if c.get("type") != "Ready"]
        obj["status"] = {**obj["status"], "conditions": [*conditions, self._ready_condition(ready)]}

    # -- reading the world (for assertions and the simulator) ------------------------------------
    def node(self, name: str) -> dict[str, Any]:
        return dict(self.emulator.objects[_NODES, None, name].raw)

    def is_cordoned(self, name: str) -> bool:
        return bool(self.node(name).get("spec", {}).get("unschedulable"))

    def taints(self, name: str) -> list[dict[str, Any]]:
        return list(self.node(name).get("spec", {}).get("taints") or [])

    def pods_on(self, node: str) -> list[str]:
        return sorted(name for _, name in self._pods_by_node.get(node, set()))

    def events_for(self, node: str) -> list[dict[str, Any]]:
        return [dict(e) for e in self._events if e.get("involvedObject", {}).get("name") == node]

    def cordoned_nodes(self) -> list[str]:
        """Nodes with spec.unschedulable, from an index kept on every node write (no fleet scan)."""
        return sorted(self._cordoned)

    def _patch_node(self, name: str, patch: dict[str, Any]) -> aiohttp.web.StreamResponse:
        key = (_NODES, None, name)
        if key not in self.emulator.objects or self.emulator.objects[key].deleted:
            return _status(404, "NotFound", f'nodes "{name}" not found')
        merged = _merge(dict(self.emulator.objects[key].raw), patch)
        self.emulator.objects[key] = merged
        self._note_cordon(name)
        return aiohttp.web.json_response(merged)

    def _note_cordon(self, name: str) -> None:
        key = (_NODES, None, name)
        live = key in self.emulator.objects and not self.emulator.objects[key].deleted
        if live and self.emulator.objects[key].get("spec", {}).get("unschedulable"):
            if name not in self._cordoned:
                self.effects.append((time.time(), name, "cordon"))
            self._cordoned.add(name)
        else:
            if name in self._cordoned:
                self.effects.append((time.time(), name, "uncordon"))
            self._cordoned.discard(name)

    # -- internals -------------------------------------------------------------------------------
    @staticmethod
    def _ready_condition(ready: bool) -> dict[str, Any]:
        return {
            "type": "Ready",
            "status": "True" if ready else "False",
            "reason": "KubeletReady" if ready else "KubeletNotReady",
            "lastTransitionTime": _now(),
            "lastHeartbeatTime": _now(),
        }

    def _reindex_pods(self) -> None:
        index: dict[str, set[tuple[str, str]]] = defaultdict(set)
        by_label: dict[tuple[str, str, str], set[str]] = defaultdict(set)
        for (resource, ns, name), obj in self.emulator.objects.items():
            if resource == _PODS and not obj.deleted:
                index[obj.get("spec", {}).get("nodeName", "")].add((ns or "default", name))
                for key, value in (obj.get("metadata", {}).get("labels") or {}).items():
                    by_label[ns or "default", key, value].add(name)
        self._pods_by_node = index
        self._pods_by_label = by_label
        self._refresh_pdbs()

    def _live_pods(self) -> list[dict[str, Any]]:
        return [
            self.emulator.objects[_PODS, ns, name].raw
            for keys in self._pods_by_node.values()
            for ns, name in keys
            if (_PODS, ns, name) in self.emulator.objects and not self.emulator.objects[_PODS, ns, name].deleted
        ]

    def _list_pods(self, params: Mapping[str, str], namespace: str | None) -> dict[str, Any]:
        node = None
        for part in params.get("fieldSelector", "").split(","):
            key, _, value = part.partition("=")
            if key.strip() == "spec.nodeName":
                node = value.strip().lstrip("=")
        if node is not None:
            keys = self._pods_by_node.get(node, set())
            pods = [self.emulator.objects[_PODS, ns, name].raw for ns, name in sorted(keys)]
        else:
            pods = self._live_pods()
        if namespace:
            pods = [p for p in pods if p["metadata"].get("namespace") == namespace]
        if selector := _parse_label_selector(params.get("labelSelector", "")):
            pods = [p for p in pods if _selector_matches(selector, p["metadata"].get("labels", {}))]
        return {"apiVersion": "v1", "kind": "PodList", "metadata": {"resourceVersion": "1"}, "items": pods}

    def _list_nodes(self, params: Mapping[str, str]) -> dict[str, Any]:
        """Nodes matching an equality label selector (`k=v,k2=v2`), in name order, one page."""
        selector = _parse_label_selector(params.get("labelSelector", ""))
        nodes = sorted(
            (
                obj.raw
                for (resource, _, _), obj in self.emulator.objects.items()
                if resource == _NODES and not obj.deleted
            ),
            key=lambda n: n["metadata"]["name"],
        )
        items = [n for n in nodes if _selector_matches(selector, n["metadata"].get("labels", {}))]
        return {"apiVersion": "v1", "kind": "NodeList", "metadata": {"resourceVersion": "1"}, "items": items}

    def _pdbs(self) -> list[tuple[tuple[str | None, str], Any]]:
        return [
            ((ns, name), obj)
            for (resource, ns, name), obj in self.emulator.objects.items()
            if resource == _PDBS and not obj.deleted
        ]

    @staticmethod
    def _resolve(value: int | str, total: int, *, round_up: bool) -> int:
        if isinstance(value, str) and value.endswith("%"):
            pct = float(value[:-1]) / 100 * total
            return int(-(-pct // 1)) if round_up else int(pct)
        return int(value)

    def _matching_pods(self, pdb: Any) -> list[dict[str, Any]]:
        selector = pdb.get("spec", {}).get("selector", {}).get("matchLabels", {})
        ns = pdb.get("metadata", {}).get("namespace") or "default"
        if not selector:
            return [p for p in self._live_pods() if p["metadata"].get("namespace") == ns]
        names: set[str] | None = None
        for key, value in selector.items():
            members = self._pods_by_label.get((ns, key, value), set())
            names = set(members) if names is None else names & members
        out = []
        for name in sorted(names or ()):
            key = (_PODS, ns, name)
            if key in self.emulator.objects and not self.emulator.objects[key].deleted:
                out.append(self.emulator.objects[key].raw)
        return out

    def _disruptions_allowed(self, pdb: Any) -> tuple[int, int, int, int]:
        spec = pdb.get("spec", {})
        matching = self._matching_pods(pdb)
        healthy = sum(1 for p in matching if p.get("status", {}).get("phase") == "Running")
        expected = len(matching)
        if "minAvailable" in spec:
            desired = self._resolve(spec["minAvailable"], expected, round_up=True)
        elif "maxUnavailable" in spec:
            desired = expected - self._resolve(spec["maxUnavailable"], expected, round_up=True)
        else:
            desired = 0
        return max(0, healthy - desired), healthy, desired, expected

    def _refresh_pdbs(self, *, namespace: str | None = None, labels: Mapping[str, str] | None = None) -> None:
        """Recompute PDB statuses: all of them, or only those selecting a pod with `labels` in `namespace`."""
        for _key, obj in self._pdbs():
            if labels is not None:
                if obj.get("metadata", {}).get("namespace") != namespace:
                    continue
                if not _selector_matches(obj.get("spec", {}).get("selector", {}).get("matchLabels", {}), labels):
                    continue
            allowed, healthy, desired, expected = self._disruptions_allowed(obj)
            obj["status"] = {
                "disruptionsAllowed": allowed,
                "currentHealthy": healthy,
                "desiredHealthy": desired,
                "expectedPods": expected,
            }

    async def _evict(self, namespace: str, name: str) -> aiohttp.web.StreamResponse:
        key = (_PODS, namespace, name)
        if key not in self.emulator.objects or self.emulator.objects[key].deleted:
            self.evictions.calls.append((namespace, name, 404))
            return _status(404, "NotFound", f'pods "{name}" not found')
        pod = self.emulator.objects[key]
        labels = pod.get("metadata", {}).get("labels", {})
        for (_pns, pname), pdb in self._pdbs():
            if pdb.get("metadata", {}).get("namespace") != namespace:
                continue
            if not _selector_matches(pdb.get("spec", {}).get("selector", {}).get("matchLabels", {}), labels):
                continue
            allowed, _, _, _ = self._disruptions_allowed(pdb)
            if allowed <= 0:
                self.evictions.calls.append((namespace, name, 429))
                return _status(
                    429,
                    "TooManyRequests",
                    f"Cannot evict pod as it would violate the pod's disruption budget {pname!r}.",
                )
        raw = pod.raw
        node = raw.get("spec", {}).get("nodeName", "")
        pod.delete()
        self._pods_by_node[node].discard((namespace, name))
        for key, value in labels.items():
            self._pods_by_label[namespace, key, value].discard(name)
        await self.emulator._buses[_PODS].put({"type": "DELETED", "object": raw})
        self.evictions.calls.append((namespace, name, 201))
        self.effects.append((time.time(), node, f"evict:{namespace}/{name}"))
        owners = raw.get("metadata", {}).get("ownerReferences") or []
        if self.reschedule and any(o.get("kind") == "ReplicaSet" for o in owners):
            target = self._schedulable_node(exclude=node)
            if target is not None:
                replacement = f"{name.rsplit('-r', 1)[0]}-r{next(self._counter)}"
                self.add_pod(replacement, node=target, namespace=namespace, labels=labels, owner_kind="ReplicaSet")
        self._refresh_pdbs(namespace=namespace, labels=labels)
        body = {"apiVersion": "policy/v1", "kind": "Eviction", "metadata": {"name": name, "namespace": namespace}}
        return aiohttp.web.Response(body=json.dumps(body), status=201, content_type="application/json")

    def _schedulable_node(self, *, exclude: str) -> str | None:
        best: tuple[int, str] | None = None
        for (resource, _ns, name), obj in self.emulator.objects.items():
            if resource != _NODES or obj.deleted or name == exclude:
                continue
            if obj.get("spec", {}).get("unschedulable"):
                continue
            conditions = obj.get("status", {}).get("conditions", [])
            if not any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions):
                continue
            load = len(self._pods_by_node.get(name, ()))
            if best is None or load < best[0]:
                best = (load, name)
        return best[1] if best else None
