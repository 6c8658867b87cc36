"""The inventory's groups: the grouping dimensions of fleet correlation (zone, rack, machine model,
CPU model, OS, kernel, node pool), a node's value for each, and `GroupIndex`, the members of every
group kept up to date per inventory change. Pure: no I/O."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from nodeheal.schemas.inventory import NodeInventory

__all__ = ["DIMENSIONS", "GroupIndex", "group_value"]

DIMENSIONS: tuple[str, ...] = ("zone", "rack", "machine_model", "cpu_model", "os", "kernel", "node_pool")


def group_value(inventory: NodeInventory, dimension: str) -> str | None:
    """The node's value for a grouping dimension (None when the inventory does not know it)."""
    if dimension == "os":
        return inventory.os_image
    if dimension == "node_pool":
        return inventory.node_pool or inventory.labels.get("node_pool") or inventory.labels.get("pool")
    value = getattr(inventory, dimension, None)
    return value if isinstance(value, str) and value else None


class GroupIndex:
    """The members of every group (dimension, value) of the inventory, kept up to date per inventory
    change: a put or a delete costs O(dimensions), so the fleet tests below cost O(groups + events)
    per run instead of re-grouping the whole inventory (50,000 nodes) every time."""

    def __init__(self, dimensions: Sequence[str] = DIMENSIONS) -> None:
        self.dimensions = tuple(dimensions)
        self.members: dict[tuple[str, str], dict[str, None]] = {}  # group -> its node keys (insertion order)
        self.groups_of: dict[str, tuple[tuple[str, str], ...]] = {}  # node key -> its groups

    @classmethod
    def of(cls, inventory: Mapping[str, NodeInventory], dimensions: Sequence[str] = DIMENSIONS) -> GroupIndex:
        index = cls(dimensions)
        for name, record in inventory.items():
            index.put(name, record)
        return index

    def __len__(self) -> int:
        return len(self.groups_of)

    def put(self, name: str, record: NodeInventory) -> bool:
        """Index (or re-index) a node; True when its groups changed."""
        groups = tuple((d, v) for d in self.dimensions if (v := group_value(record, d)) is not None)
        old = self.groups_of.get(name)
        if old == groups:
            return False
        if old is not None:
            self._drop(name, old)
        self.groups_of[name] = groups
        for group in groups:
            self.members.setdefault(group, {})[name] = None
        return True

    def remove(self, name: str) -> bool:
        old = self.groups_of.pop(name, None)
        if old is None:
            return False
        self._drop(name, old)
        return True

    def _drop(self, name: str, groups: tuple[tuple[str, str], ...]) -> None:
        for group in groups:
            members = self.members.get(group)
            if members is not None:
                members.pop(name, None)
                if not members:
                    del self.members[group]

    def size(self, dimension: str, value: str) -> int:
        return len(self.members.get((dimension, value), ()))
