"""What nodeheal knows about a node (kept in the `nodeheal-inventory` bucket)."""

from __future__ import annotations

from pydantic import Field

from nodeheal.schemas.base import Frozen, UtcDatetime


class NodeInventory(Frozen):
    cluster: str
    node: str
    instance_id: str | None = None
    provider_id: str | None = None
    cloud: str | None = None
    region: str | None = None
    zone: str | None = None
    rack: str | None = None
    node_pool: str | None = None
    machine_model: str | None = None
    cpu_model: str | None = None
    os_image: str | None = None
    kernel: str | None = None
    container_runtime: str | None = None
    """The runtime the kubelet reports (`status.nodeInfo.containerRuntimeVersion` before `://`:
    `containerd`, `cri-o`, `docker`); it names the unit a dead runtime's restart targets."""
    addresses: tuple[str, ...] = ()
    labels: dict[str, str] = Field(default_factory=dict)
    ready: bool | None = None
    unschedulable: bool = False
    created_at: UtcDatetime | None = None
    """The Node's `metadata.creationTimestamp`: when two Nodes claim one instance id, the index names the
    Ready one, else the one created last (docs/node-agent.md, "Inventory watcher")."""
    updated_at: UtcDatetime | None = None

    def to_json(self) -> bytes:
        return self.model_dump_json().encode()


def inventory_key(cluster: str, node: str) -> str:
    """Key of a node's record in `nodeheal-inventory`: `node.<cluster>.<node>` (tokens escaped)."""
    from nodeheal.schemas.subjects import escape_token

    return f"node.{escape_token(cluster)}.{escape_token(node)}"


def instance_key(instance_id: str) -> str:
    """Key of the instance id → node index in `nodeheal-inventory`: `instance.<instance_id>`. It holds the
    record of one Node claiming the instance, chosen across every cluster's claim (`claim_key`)."""
    from nodeheal.schemas.subjects import escape_token

    return f"instance.{escape_token(instance_id)}"


def claim_key(instance_id: str, cluster: str) -> str:
    """Key of one cluster's claim of an instance in `nodeheal-inventory`: `claim.<instance_id>.<cluster>`,
    the record of the Node of that cluster the index would name if only that cluster claimed the instance.
    Each cluster's inventory watcher writes only its own claims; the index `instance.<instance_id>` is
    computed from all of them (docs/node-agent.md, "Inventory watcher")."""
    from nodeheal.schemas.subjects import escape_token

    return f"claim.{escape_token(instance_id)}.{escape_token(cluster)}"
