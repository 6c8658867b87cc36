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
    """Key of the instance id → node index in `nodeheal-inventory`: `instance.<instance_id>`."""
    from nodeheal.schemas.subjects import escape_token

    return f"instance.{escape_token(instance_id)}"
