"""Kubernetes actions through the official client (`kubernetes.aio`): cordon, taint, drain through the
Eviction API honouring PodDisruptionBudgets, uncordon, Node Ready, and an Event on the node for every
action.

Drain never deletes a pod: HTTP 429 (a PDB allows no disruption now) is retried with bounded
exponential backoff until `drain_timeout_s`; then the drain fails and the ladder moves on. DaemonSet
pods (their controller would recreate them on the cordoned node) and mirror pods (the kubelet owns
them) are skipped, as `kubectl drain --ignore-daemonsets` does.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from datetime import UTC, datetime
from typing import Any

from kubernetes.aio import client
from kubernetes.aio.client.exceptions import ApiException

from nodeheal.remediator.actions import ActionOutcome
from nodeheal.remediator.settings import KubeSettings
from nodeheal.schemas.ids import new_id

log = logging.getLogger("nodeheal.remediator.kube")
MIRROR_ANNOTATION = "kubernetes.io/config.mirror"


async def build_api_client(settings: KubeSettings) -> client.ApiClient:
    if settings.api_url:
        cfg = client.Configuration(host=settings.api_url)
        cfg.verify_ssl = settings.verify_tls
        if settings.token:
            cfg.api_key = {"BearerToken": settings.token}
            cfg.api_key_prefix = {"BearerToken": "Bearer"}
        return client.ApiClient(cfg)
    from kubernetes.aio import config

    cfg = client.Configuration()
    try:
        config.load_incluster_config(client_configuration=cfg)  # type: ignore[no-untyped-call]
    except Exception:
        await config.load_kube_config(config_file=settings.kubeconfig, client_configuration=cfg)  # type: ignore[no-untyped-call]
    return client.ApiClient(cfg)


def label_value(text: str) -> str:
    """`text` as a valid Kubernetes label value: [A-Za-z0-9._-], at most 63, alphanumeric at both ends."""
    value = re.sub(r"[^A-Za-z0-9._-]+", "-", text)[:63].strip("-._")
    return value or "retired"


def _is_daemonset_pod(pod: client.V1Pod) -> bool:
    owners = (pod.metadata.owner_references if pod.metadata else None) or []
    return any(o.kind == "DaemonSet" for o in owners)


def _is_mirror_pod(pod: client.V1Pod) -> bool:
    return MIRROR_ANNOTATION in ((pod.metadata.annotations if pod.metadata else None) or {})


class KubeActions:
    def __init__(
        self, api: client.ApiClient, *, settings: KubeSettings, component: str = "nodeheal-remediator"
    ) -> None:
        self.api = api
        self.core = client.CoreV1Api(api)
        self.settings = settings
        self.component = component

    async def close(self) -> None:
        await self.api.close()  # type: ignore[no-untyped-call]

    async def cordon(self, node: str, *, unschedulable: bool = True) -> ActionOutcome:
        await self.core.patch_node(
            node, {"spec": {"unschedulable": unschedulable}}, _request_timeout=self.settings.request_timeout_s
        )
        return ActionOutcome(ok=True, detail=f"node {node} {'cordoned' if unschedulable else 'uncordoned'}")

    async def taint(self, node: str, *, reason: str, remove: bool = False) -> ActionOutcome:
        current = await self.core.read_node(node, _request_timeout=self.settings.request_timeout_s)
        taints = [t.to_dict() for t in ((current.spec.taints if current.spec else None) or [])]
        taints = [t for t in taints if t.get("key") != self.settings.taint_key]
        if not remove:
            taints.append({"key": self.settings.taint_key, "value": reason[:63], "effect": "NoSchedule"})
        await self.core.patch_node(node, {"spec": {"taints": taints}}, _request_timeout=self.settings.request_timeout_s)
        return ActionOutcome(
            ok=True, detail=f"taint {self.settings.taint_key} {'removed from' if remove else 'set on'} {node}"
        )

    async def list_nodes(self, label_selector: str, *, page: int = 500) -> list[str]:
        """Names of the nodes a label selector matches (paged, `nodeheal batch`)."""
        names: list[str] = []
        token: str | None = None
        while True:
            kwargs: dict[str, Any] = {"label_selector": label_selector, "limit": page}
            if token:
                kwargs["_continue"] = token
            listing = await self.core.list_node(_request_timeout=self.settings.request_timeout_s, **kwargs)
            names += [n.metadata.name for n in listing.items if n.metadata is not None and n.metadata.name]
            token = listing.metadata._continue if listing.metadata is not None else None
            if not token:
                return sorted(set(names))

    async def retire(self, node: str, *, reason: str) -> ActionOutcome:
        """Mark a drained node for replacement: cordoned, label and NoSchedule taint `retired_key` = why.

        NoSchedule, not NoExecute: a NoExecute taint evicts pods without asking their PodDisruptionBudgets,
        which is exactly what the drain before it avoided. A node that still runs evictable pods is refused."""
        left = await self.pods_to_evict(node)
        if left:
            names = ", ".join(f"{p.metadata.namespace}/{p.metadata.name}" for p in left[:5] if p.metadata)
            return ActionOutcome(
                ok=False,
                detail=f"{node} still runs {len(left)} evictable pod(s) ({names}); retire needs a drained node",
            )
        key = self.settings.retired_key
        value = label_value(reason)
        current = await self.core.read_node(node, _request_timeout=self.settings.request_timeout_s)
        taints = [
            {k: v for k, v in t.to_dict().items() if k in ("key", "value", "effect") and v is not None}
            for t in ((current.spec.taints if current.spec else None) or [])
        ]
        taints = [t for t in taints if t.get("key") != key] + [{"key": key, "value": value, "effect": "NoSchedule"}]
        body = {"metadata": {"labels": {key: value}}, "spec": {"unschedulable": True, "taints": taints}}
        await self.core.patch_node(node, body, _request_timeout=self.settings.request_timeout_s)
        return ActionOutcome(ok=True, detail=f"{node} retired: cordoned, label and NoSchedule taint {key}={value}")

    async def restart_agent(self, node: str) -> ActionOutcome:
        """Delete the node agent's pod on `node` (its DaemonSet starts a new one). Only pods matching the
        agent selector in the agent's namespace: the RBAC allows nothing else."""
        pods = await self.core.list_namespaced_pod(
            self.settings.agent_namespace,
            label_selector=self.settings.agent_selector,
            field_selector=f"spec.nodeName={node}",
            _request_timeout=self.settings.request_timeout_s,
        )
        names = [p.metadata.name for p in pods.items if p.metadata is not None and p.metadata.name]
        if not names:
            return ActionOutcome(
                ok=False,
                detail=f"no agent pod ({self.settings.agent_selector}) on {node} in {self.settings.agent_namespace}",
            )
        for name in names:
            await self.core.delete_namespaced_pod(
                name, self.settings.agent_namespace, _request_timeout=self.settings.request_timeout_s
            )
        return ActionOutcome(
            ok=True, detail=f"agent pod {', '.join(names)} on {node} deleted; its DaemonSet recreates it"
        )

    async def pods_to_evict(self, node: str) -> list[client.V1Pod]:
        pods = await self.core.list_pod_for_all_namespaces(
            field_selector=f"spec.nodeName={node}", _request_timeout=self.settings.request_timeout_s
        )
        return [
            p
            for p in pods.items
            if not _is_daemonset_pod(p)
            and not _is_mirror_pod(p)
            and (p.status is None or p.status.phase not in ("Succeeded", "Failed"))
        ]

    async def drain(self, node: str, *, timeout_s: float | None = None) -> ActionOutcome:
        """Evict every evictable pod; 429 → retry with backoff until the timeout; never delete."""
        deadline = time.monotonic() + (timeout_s or self.settings.drain_timeout_s)
        pods = await self.pods_to_evict(node)
        pending = {(p.metadata.namespace or "default", p.metadata.name or "") for p in pods if p.metadata}
        backoff = self.settings.eviction_backoff_initial_s
        blocked: dict[tuple[str, str], str] = {}
        evicted = 0
        while pending:
            for ns, name in sorted(pending):
                body = client.V1Eviction(
                    metadata=client.V1ObjectMeta(name=name, namespace=ns),
                    delete_options=client.V1DeleteOptions(grace_period_seconds=self.settings.eviction_grace_period_s)
                    if self.settings.eviction_grace_period_s is not None
                    else None,
                )
                try:
                    await self.core.create_namespaced_pod_eviction(
                        name, ns, body, _request_timeout=self.settings.request_timeout_s
                    )
                    pending.discard((ns, name))
                    blocked.pop((ns, name), None)
                    evicted += 1
                except ApiException as exc:
                    if exc.status == 404:
                        pending.discard((ns, name))  # already gone
                    elif exc.status == 429:
                        blocked[(ns, name)] = "PodDisruptionBudget allows no disruption now"
                    else:
                        blocked[(ns, name)] = f"HTTP {exc.status}: {exc.reason}"
            if not pending:
                break
            if time.monotonic() + backoff > deadline:
                names = ", ".join(f"{ns}/{n} ({why})" for (ns, n), why in sorted(blocked.items()))
                return ActionOutcome(
                    ok=False,
                    detail=f"drain of {node} timed out with {len(pending)} pod(s) left: {names}; "
                    "no pod was force-deleted",
                )
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, self.settings.eviction_backoff_max_s)
        return ActionOutcome(ok=True, detail=f"drained {node}: {evicted} pod(s) evicted")

    async def node_ready(self, node: str) -> bool:
        current = await self.core.read_node(node, _request_timeout=self.settings.request_timeout_s)
        conditions = (current.status.conditions if current.status else None) or []
        return any(c.type == "Ready" and c.status == "True" for c in conditions)

    async def event(self, node: str, *, reason: str, message: str, warning: bool = False) -> None:
        """A Kubernetes Event on the node (`kubectl describe node` shows it); failures are logged, not fatal."""
        now = datetime.now(tz=UTC)
        body: Any = client.CoreV1Event(
            metadata=client.V1ObjectMeta(name=f"{node}.{new_id().lower()}", namespace=self.settings.event_namespace),
            involved_object=client.V1ObjectReference(kind="Node", name=node, uid=node, api_version="v1"),
            reason=reason,
            message=message[:1024],
            type="Warning" if warning else "Normal",
            source=client.V1EventSource(component=self.component),
            first_timestamp=now,
            last_timestamp=now,
            count=1,
        )
        try:
            await self.core.create_namespaced_event(
                self.settings.event_namespace, body, _request_timeout=self.settings.request_timeout_s
            )
        except Exception as exc:
            log.warning("could not create a Kubernetes event", extra={"node": node, "error": str(exc)})
