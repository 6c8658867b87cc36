"""Kubernetes Node (as the API's JSON) → `NodeInventory`. Pure: no Kubernetes client, no NATS.

Instance ids are parsed from `spec.providerID` in the form each cloud's cloud-controller-manager
writes it, and in the form that cloud's *event* channel names the machine, so a cloud event can be
joined to its node by `instance_key(instance_id)`:

| providerID | cloud | instance id |
|---|---|---|
| `cn-hangzhou.i-bp1abc` (ACK), `alicloud://cn-hangzhou.i-bp1abc` | alibaba | `i-bp1abc` |
| `aws:///us-east-1a/i-0abc` | aws | `i-0abc` |
| `azure:///subscriptions/S/resourceGroups/G/providers/Microsoft.Compute/virtualMachines/vm1` | azure | `vm1` |
| `azure:///.../virtualMachineScaleSets/pool/virtualMachines/3` | azure | `pool_3` (the name Scheduled Events use) |
| `gce://project/us-central1-a/node-1` | gce | `node-1` |
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from nodeheal.schemas.inventory import NodeInventory

_ALIBABA = re.compile(r"^(?:alicloud://)?(?P<region>[a-z]{2}(?:-[a-z0-9]+)+)\.(?P<id>i-[A-Za-z0-9]+)$")
_AWS = re.compile(r"^aws://(?:/(?P<zone>[^/]*))?/(?P<id>i-[0-9a-f]+)$")
_AZURE_VMSS = re.compile(r"/virtualMachineScaleSets/(?P<vmss>[^/]+)/virtualMachines/(?P<n>[^/]+)$", re.IGNORECASE)
_AZURE_VM = re.compile(r"/virtualMachines/(?P<name>[^/]+)$", re.IGNORECASE)
_GCE = re.compile(r"^gce://(?P<project>[^/]+)/(?P<zone>[^/]+)/(?P<name>[^/]+)$")

_ADDRESS_ORDER = {"InternalIP": 0, "ExternalIP": 1, "InternalDNS": 2, "ExternalDNS": 3, "Hostname": 4}


def parse_provider_id(provider_id: str | None) -> tuple[str | None, str | None]:
    """(cloud, instance id) from `spec.providerID`; (None, None) when it is absent or unknown."""
    if not provider_id:
        return None, None
    value = provider_id.strip()
    if match := _ALIBABA.match(value):
        return "alibaba", match.group("id")
    if match := _AWS.match(value):
        return "aws", match.group("id")
    if value.lower().startswith("azure://"):
        if match := _AZURE_VMSS.search(value):
            return "azure", f"{match.group('vmss')}_{match.group('n')}"
        if match := _AZURE_VM.search(value):
            return "azure", match.group("name")
        return "azure", None
    if match := _GCE.match(value):
        return "gce", match.group("name")
    scheme = value.split("://", 1)[0] if "://" in value else None
    return scheme, None


@dataclass(frozen=True)
class LabelConfig:
    """Which labels carry what. Lists are tried in order; the first label present wins."""

    rack: Sequence[str] = ("topology.kubernetes.io/rack", "nodeheal.io/rack")
    node_pool: Sequence[str] = (
        "alibabacloud.com/nodepool-id",
        "eks.amazonaws.com/nodegroup",
        "cloud.google.com/gke-nodepool",
        "kubernetes.azure.com/agentpool",
        "karpenter.sh/nodepool",
        "nodeheal.io/node-pool",
    )
    cpu_model: Sequence[str] = ("nodeheal.io/cpu-model", "feature.node.kubernetes.io/cpu-model.id")
    machine_model: Sequence[str] = ("node.kubernetes.io/instance-type", "beta.kubernetes.io/instance-type")
    zone: Sequence[str] = ("topology.kubernetes.io/zone", "failure-domain.beta.kubernetes.io/zone")
    region: Sequence[str] = ("topology.kubernetes.io/region", "failure-domain.beta.kubernetes.io/region")
    keep: Sequence[str] = field(
        default_factory=lambda: (
            "topology.kubernetes.io/",
            "node.kubernetes.io/",
            "kubernetes.io/arch",
            "kubernetes.io/os",
            "node-role.kubernetes.io/",
            "nodeheal.io/",
        )
    )
    """Labels copied into the record: exact keys, or prefixes ending in '/'."""


def _first(labels: Mapping[str, str], keys: Sequence[str]) -> str | None:
    for key in keys:
        value = labels.get(key)
        if value:
            return value
    return None


def _kept(labels: Mapping[str, str], keep: Sequence[str], extra: Sequence[str]) -> dict[str, str]:
    prefixes = tuple(k for k in keep if k.endswith("/"))
    exact = {k for k in keep if not k.endswith("/")} | set(extra)
    return {k: v for k, v in sorted(labels.items()) if k in exact or k.startswith(prefixes)}


def _timestamp(value: object) -> datetime | None:
    """An RFC 3339 timestamp as the API server writes it (`2024-03-01T08:00:00Z`); None if absent or not one."""
    if not isinstance(value, str) or not value:
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        return None
    return parsed if parsed.tzinfo is not None else None


def node_to_inventory(
    node: Mapping[str, Any], *, cluster: str, labels_config: LabelConfig, now: datetime
) -> NodeInventory:
    metadata = node.get("metadata") or {}
    spec = node.get("spec") or {}
    status = node.get("status") or {}
    labels: dict[str, str] = {str(k): str(v) for k, v in (metadata.get("labels") or {}).items()}
    node_info = status.get("nodeInfo") or {}
    provider_id = spec.get("providerID") or None
    cloud, instance_id = parse_provider_id(provider_id)
    addresses = sorted(
        (a for a in status.get("addresses") or [] if a.get("address")),
        key=lambda a: _ADDRESS_ORDER.get(a.get("type", ""), 9),
    )
    seen: list[str] = []
    for address in addresses:
        if address["address"] not in seen:
            seen.append(address["address"])
    ready: bool | None = None
    for condition in status.get("conditions") or []:
        if condition.get("type") == "Ready":
            ready = {"True": True, "False": False}.get(condition.get("status", ""))
    c = labels_config
    used = [*c.rack, *c.node_pool, *c.cpu_model, *c.machine_model, *c.zone, *c.region]
    return NodeInventory(
        cluster=cluster,
        node=str(metadata.get("name") or ""),
        instance_id=instance_id,
        provider_id=provider_id,
        cloud=cloud,
        region=_first(labels, c.region),
        zone=_first(labels, c.zone),
        rack=_first(labels, c.rack),
        node_pool=_first(labels, c.node_pool),
        machine_model=_first(labels, c.machine_model),
        cpu_model=_first(labels, c.cpu_model),
        os_image=node_info.get("osImage") or None,
        kernel=node_info.get("kernelVersion") or None,
        container_runtime=str(node_info.get("containerRuntimeVersion") or "").partition("://")[0] or None,
        addresses=tuple(seen),
        labels=_kept(labels, c.keep, [k for k in used if k in labels]),
        ready=ready,
        unschedulable=bool(spec.get("unschedulable", False)),
        created_at=_timestamp(metadata.get("creationTimestamp")),
        updated_at=now,
    )
