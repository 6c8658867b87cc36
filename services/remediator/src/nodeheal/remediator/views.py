"""What each replica knows about the fleet, fed from NATS by the handlers (this module has no NATS):
the node placements (inventory), which nodes are unhealthy now (diagnoses seen by every replica, not
only the ones this replica handles), when a node recovered, and each node's cloud events."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from nodeheal.remediator.policy import DomainSizes, Placement
from nodeheal.schemas.causes import OPERATOR_REQUEST
from nodeheal.schemas.cloud import CloudSystemEvent
from nodeheal.schemas.diagnosis import Diagnosis
from nodeheal.schemas.inventory import NodeInventory


@dataclass(slots=True)
class FleetView:
    placements: dict[str, Placement] = field(default_factory=dict)
    instance: dict[str, tuple[str | None, str | None]] = field(default_factory=dict)
    sick_since: dict[str, datetime] = field(default_factory=dict)
    recovered_at: dict[str, datetime] = field(default_factory=dict)
    cloud: dict[str, dict[tuple[str, str], CloudSystemEvent]] = field(default_factory=dict)
    latest: dict[str, tuple[str, datetime, str]] = field(default_factory=dict)
    """node → (episode, identified_at, id) of the newest firing diagnosis seen"""
    left: dict[str, datetime] = field(default_factory=dict)
    """node → when its inventory record was deleted (the machine left the cluster: released, replaced)"""
    _sizes: DomainSizes | None = None

    def on_inventory(self, inv: NodeInventory) -> None:
        self.placements[inv.node] = Placement(node=inv.node, zone=inv.zone, rack=inv.rack, node_pool=inv.node_pool)
        self.instance[inv.node] = (inv.cloud, inv.instance_id)
        self.left.pop(inv.node, None)
        self._sizes = None

    def on_inventory_delete(self, cluster: str, node: str) -> None:
        """The node's inventory record was deleted: it is no longer part of the fleet (nor of its domains)."""
        del cluster
        self.placements.pop(node, None)
        self.instance.pop(node, None)
        self.left[node] = datetime.now(tz=UTC)
        self._sizes = None

    def placement(self, node: str) -> Placement:
        return self.placements.get(node, Placement(node=node))

    def sizes(self) -> DomainSizes:
        if self._sizes is None:
            self._sizes = DomainSizes.of(self.placements.values())
        return self._sizes

    def on_diagnosis(self, diagnosis: Diagnosis) -> None:
        if diagnosis.replay:
            return
        node = diagnosis.node
        if diagnosis.resolved:
            self.sick_since.pop(node, None)
            previous = self.recovered_at.get(node)
            if previous is None or diagnosis.identified_at > previous:
                self.recovered_at[node] = diagnosis.identified_at
        else:
            if diagnosis.cause != OPERATOR_REQUEST:  # a person's batch request is not a sick node (storm guard)
                self.sick_since[node] = diagnosis.identified_at
            current = self.latest.get(node)
            if current is None or diagnosis.identified_at > current[1]:
                self.latest[node] = (diagnosis.episode, diagnosis.identified_at, diagnosis.id)

    def newer_in_episode(self, diagnosis: Diagnosis) -> str | None:
        """The id of a later diagnosis of the same episode of this node, if one was seen."""
        current = self.latest.get(diagnosis.node)
        if current is None:
            return None
        episode, at, did = current
        if episode == diagnosis.episode and did != diagnosis.id and at > diagnosis.identified_at:
            return did
        return None

    def latest_episode(self, node: str) -> str | None:
        current = self.latest.get(node)
        return current[0] if current else None

    def unhealthy(self, *, now: datetime, window_s: float) -> dict[str, Placement]:
        horizon = now - timedelta(seconds=window_s)
        return {n: self.placement(n) for n, t in self.sick_since.items() if t >= horizon}

    def on_cloud(self, event: CloudSystemEvent) -> None:
        events = self.cloud.setdefault(event.node, {})
        key = (event.cloud, event.provider_event_id)
        current = events.get(key)
        if current is not None and current.is_terminal and not event.is_terminal:
            return
        events[key] = event

    def cloud_events(self, node: str) -> list[CloudSystemEvent]:
        return list(self.cloud.get(node, {}).values())
