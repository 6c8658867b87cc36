"""Machine rotation in the demo's world: what the cloud and the cluster do around a replaced machine, and
the demo operator who approves replacements when asked to (`nodeheal demo --approve-replacements`).

When the remediator's `replace` releases an instance (DeleteInstance at the ECS emulator) and recreates one
from the node pool's launch template (RunInstances), a real fleet sees:

- the released machine stop: its agent and kubelet are gone; the cloud controller manager's node lifecycle
  controller deletes the Node whose instance the cloud no longer has (with its DaemonSet pods), and the
  inventory watcher drops its inventory record;
- the new machine boot: its kubelet registers a new Node (labels of its zone, rack and pool; Ready), the
  DaemonSet controller starts the node agent on it, the agent starts probing with its own NATS user, and
  the inventory watcher writes its record.

`FleetRotation.step()` does exactly that, driven only by what the ECS emulator recorded (`releases`,
`created`): nothing here knows which node nodeheal meant to replace. The new machine is probed by the real
agent code like every other simulated node (`FleetSimulator.add_node`).

`DemoOperator` plays the person of `nodeheal approve`: it follows AUDIT and, for every `replace` waiting in
`awaiting_approval`, writes the approval through the same call the CLI makes (`write_approval` on the
control bucket), as `demo-operator`. It is off unless the demo is asked for it; the remediator still waits
for a person's approval — the demo just says who that person is.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from nats.aio.client import Client
from nats.js.client import JetStreamContext
from nats.js.kv import KeyValue
from pydantic import ValidationError

from nodeheal.remediator.control import write_approval
from nodeheal.runtime.startup import UNAVAILABLE
from nodeheal.schemas import NodeInventory, RemediationRecord
from nodeheal.schemas.inventory import instance_key, inventory_key
from nodeheal.schemas.subjects import escape_token
from nodeheal.sim.ecs_world import EcsWorld
from nodeheal.sim.engine import FleetSimulator
from nodeheal.sim.fleet import CPU_MODELS, KERNELS, MACHINE_MODELS, OS_IMAGES, POOLS
from nodeheal.sim.kube import KubeWorld

log = logging.getLogger("nodeheal.sim.rotation")

DEMO_OPERATOR = "demo-operator"
APPROVAL_NOTE = "approved by the demo operator (nodeheal demo --approve-replacements)"
NEW_MACHINE_KERNEL = KERNELS[0]
"""The launch templates' image: a kernel without the raised crash rate (a replaced machine is a fresh one)."""


def add_launch_templates(ecs: EcsWorld, *, region: str, zone: str, pools: tuple[str, ...] = POOLS) -> dict[str, str]:
    """One launch template per node pool (in `zone`), as an ACK node pool has; returns node pool → template id,
    the remediator's `CLOUD__ALIBABA_LAUNCH_TEMPLATES`."""
    out: dict[str, str] = {}
    for pool in pools:
        template = ecs.add_launch_template(f"lt-{pool}", node_pool=pool, region_id=region, zone_id=zone)
        out[pool] = template.template_id
    return out


@dataclass
class Joined:
    node: str
    instance_id: str
    at: float
    zone: str | None
    rack: str | None
    node_pool: str | None


@dataclass
class FleetRotation:
    """Keeps the simulated fleet, the Kubernetes emulator and the inventory true to the ECS emulator's
    releases and creations (see the module text)."""

    sim: FleetSimulator
    ecs: EcsWorld
    kube: KubeWorld
    inventory: KeyValue | None
    connect_agent: Callable[[str], Awaitable[Client]]
    domains: dict[str, dict[str, list[str]]] | None = None  # the referee's failure domains (DemoWorld.domains)
    released: list[dict[str, Any]] = field(default_factory=list)
    joined: list[Joined] = field(default_factory=list)
    _seen_releases: int = 0
    _seen_created: int = 0

    async def step(self) -> None:
        now = self.ecs.now().timestamp()
        while self._seen_releases < len(self.ecs.releases):
            release = self.ecs.releases[self._seen_releases]
            self._seen_releases += 1
            await self._leave(release.instance_id, now)
        while self._seen_created < len(self.ecs.created):
            created = self.ecs.created[self._seen_created]
            self._seen_created += 1
            await self._join(created.instance_id, created.template_id, now)

    async def _leave(self, instance_id: str, now: float) -> None:
        instance = self.ecs.released.get(instance_id)  # type: ignore[call-overload]
        name = instance.instance_name if instance is not None else None
        node = self.sim.remove_node(name, now) if name else None
        if node is None or name is None:
            return
        deleted = self.kube.delete_node(name)
        if self.inventory is not None:
            for key in (inventory_key(node.inv.cluster, name), instance_key(instance_id)):
                with contextlib.suppress(Exception):
                    await self.inventory.delete(key)
        self._domains(node.inv, add=False)
        self.released.append(
            {"node": name, "instance_id": instance_id, "at": now, "node_deleted": deleted, "zone": node.inv.zone}
        )

    def _new_inventory(self, instance_id: str, template_id: str | None) -> NodeInventory:
        template = self.ecs.launch_templates.get(template_id or "")
        pool = (template.node_pool if template else None) or POOLS[0]
        zone = template.zone_id if template else None
        k = len(self.joined) + 1
        ip = f"10.200.{k >> 8}.{k & 255}"
        name = f"{self.sim.spec.region}.{ip}"
        racks = sorted(
            (len(members), rack) for rack, members in self.sim.racks.items() if zone and rack.startswith(f"{zone}-")
        )
        rack = racks[0][1] if racks else (f"{zone}-r900" if zone else None)
        return NodeInventory(
            cluster=self.sim.spec.cluster,
            node=name,
            instance_id=instance_id,
            provider_id=f"{self.sim.spec.region}.{instance_id}",
            cloud="alibaba",
            region=self.sim.spec.region,
            zone=zone,
            rack=rack,
            node_pool=pool,
            machine_model=MACHINE_MODELS[POOLS.index(pool) % len(MACHINE_MODELS)] if pool in POOLS else None,
            cpu_model=CPU_MODELS[0],
            os_image=OS_IMAGES[0],
            kernel=NEW_MACHINE_KERNEL,
            addresses=(ip,),
            labels={"nodeheal.io/pool": pool, **({"topology.kubernetes.io/zone": zone} if zone else {})},
            ready=True,
        )

    async def _join(self, instance_id: str, template_id: str | None, now: float) -> None:
        if instance_id not in self.ecs.instances:
            return
        inv = self._new_inventory(instance_id, template_id)
        # the instance is named after the node's host name, as ACK names its nodes
        self.ecs.instances[instance_id].instance_name = inv.node  # type: ignore[index]
        conn = await self.connect_agent(inv.node)
        if self.inventory is not None:
            body = inv.model_copy(update={"updated_at": datetime.now(tz=UTC)}).to_json()
            await self.inventory.put(inventory_key(inv.cluster, inv.node), body)
            await self.inventory.put(instance_key(instance_id), body)
        await self.sim.add_node(inv, now=now, conn=conn)
        # the kubelet registers its Node; the DaemonSet controller starts the node agent's pod on it
        self.kube.add_node(inv.node, zone=inv.zone, rack=inv.rack, node_pool=inv.node_pool, provider_id=inv.provider_id)
        self.kube.add_pod(
            f"ds-agent-{escape_token(inv.node)}", node=inv.node, owner_kind="DaemonSet", labels={"app": "agent"}
        )
        self._domains(inv, add=True)
        self.joined.append(
            Joined(
                node=inv.node, instance_id=instance_id, at=now, zone=inv.zone, rack=inv.rack, node_pool=inv.node_pool
            )
        )

    def _domains(self, inv: NodeInventory, *, add: bool) -> None:
        if self.domains is None:
            return
        for kind, value in (("cluster", "all"), ("zone", inv.zone), ("rack", inv.rack), ("pool", inv.node_pool)):
            members = self.domains.setdefault(kind, {}).setdefault(value or "-", [])
            if add and inv.node not in members:
                members.append(inv.node)
            elif not add and inv.node in members:
                members.remove(inv.node)

    def summary(self) -> dict[str, Any]:
        return {
            "released": self.released,
            "joined": [
                {
                    "node": j.node,
                    "instance_id": j.instance_id,
                    "at": j.at,
                    "zone": j.zone,
                    "rack": j.rack,
                    "node_pool": j.node_pool,
                    "node_registered": self.kube.has_node(j.node),
                    "probed_by_agent": j.node in self.sim.agents,
                }
                for j in self.joined
            ],
        }


@dataclass
class DemoOperator:
    """The person of `nodeheal approve`, played by the demo when asked (`--approve-replacements`): approves
    every `replace` that waits for approval, through the control bucket, as `demo-operator`."""

    js: JetStreamContext
    control: KeyValue
    stream: str
    subject: str
    since: datetime
    approvals: list[dict[str, Any]] = field(default_factory=list)
    waiting: dict[str, str] = field(default_factory=dict)  # action id → node, not yet approved
    replaced: set[str] = field(default_factory=set)  # action ids of replaces that succeeded
    interruptions: int = 0  # AUDIT reads that failed and were started again

    async def run(self) -> None:
        """Follow AUDIT for the whole run. A JetStream request that times out on a loaded server (a 50,000-node
        run on two cores) does not end it: it reads again from `since` (an approval already written is not
        written twice: `waiting` remembers its action)."""
        while True:
            try:
                await self._follow()
            except UNAVAILABLE as exc:
                self.interruptions += 1
                log.warning("the demo operator's AUDIT read failed (%s); reading again", type(exc).__name__)
                await asyncio.sleep(1.0)

    async def _follow(self) -> None:
        from nodeheal.cli.window import read_stream

        async for stored in read_stream(
            self.js, stream=self.stream, subjects=[self.subject], since=self.since, follow=True
        ):
            try:
                record = RemediationRecord.model_validate_json(stored.data)
            except ValidationError:
                continue
            if record.action != "replace":
                continue
            if record.phase == "succeeded":
                self.replaced.add(record.action_id)
            if record.phase != "awaiting_approval" or record.action_id in self.waiting:
                continue
            self.waiting[record.action_id] = record.node
            await write_approval(self.control, action_id=record.action_id, by=DEMO_OPERATOR, note=APPROVAL_NOTE)
            self.approvals.append(
                {
                    "action_id": record.action_id,
                    "node": record.node,
                    "by": DEMO_OPERATOR,
                    "note": APPROVAL_NOTE,
                    "at": datetime.now(tz=UTC).isoformat(),
                }
            )
            log.info("replace %s of %s %s", record.action_id, record.node, APPROVAL_NOTE)

    def busy(self) -> bool:
        """A replace approved and not yet done: the demo waits for it (within its settle time)."""
        return any(a not in self.replaced for a in self.waiting)

    def summary(self) -> dict[str, Any]:
        return {
            "approved_by": DEMO_OPERATOR,
            "approvals": self.approvals,
            "replaced": sorted(self.replaced),
            "interruptions": self.interruptions,
        }
