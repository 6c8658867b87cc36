"""The demo's outside world: the Alibaba ECS region (EcsWorld behind the OpenAPI emulator, reached
by the official SDK) and the Kubernetes API (KubeWorld on kmock, reached by the official client),
wired to the fleet simulator so that what nodeheal does to them happens to the simulated machines:
a RebootInstance takes the node down for its reboot time, a drain evicts the runaway workload, a
scheduled maintenance event executes at NotBefore.

It also keeps the referee's books: when each node became disrupted at the emulators (cordoned at
the Kubernetes emulator, or in an API-initiated reboot / redeploy at the ECS emulator) and when it
stopped being so, sampled about twice a second — the referee (referee.py) counts these against the
remediator's budgets per failure domain, net of the nodes AUDIT shows handed to a person — and every
reboot or redeploy that reached the cloud while a rack was partitioned.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import Counter
from datetime import UTC, datetime, timedelta
from types import TracebackType
from typing import Any, Self

from nodeheal.sim.clock import SystemClock
from nodeheal.sim.ecs_world import EcsWorld, WorldChange
from nodeheal.sim.engine import FleetSimulator, SimTimings
from nodeheal.sim.kube import KubeWorld

# the remediator's default budgets (services/remediator settings.py PolicySettings): count, percent
DEFAULT_BUDGETS: dict[str, tuple[int | None, float | None]] = {
    "cluster": (20, 5.0),
    "zone": (10, 10.0),
    "rack": (2, 25.0),
    "pool": (5, 10.0),
}
APPS = 50


def _limit(count: int | None, pct: float | None, members: int) -> int:
    limits = []
    if count is not None:
        limits.append(count)
    if pct is not None:
        limits.append(max(1, int(members * pct / 100)))
    return min(limits) if limits else members


class DemoWorld:
    def __init__(
        self,
        *,
        sim: FleetSimulator,
        timings: SimTimings,
        region: str,
        budgets: dict[str, tuple[int | None, float | None]] | None = None,
    ) -> None:
        self.sim = sim
        self.timings = timings
        self.region = region
        self.budgets = budgets or DEFAULT_BUDGETS
        self.ecs = EcsWorld(
            clock=SystemClock(),
            reboot_duration=timedelta(seconds=timings.reboot_s),
            redeploy_duration=timedelta(seconds=timings.redeploy_s),
        )
        self.kube = KubeWorld()
        self._emulator: Any = None
        self._ticker: asyncio.Task[None] | None = None
        self.max_disrupted: dict[str, int] = {}
        # (unix time, node, disrupted?) each time a node starts or stops being disrupted at the emulators
        self.disruptions: list[tuple[float, str, bool]] = []
        self._disrupted: set[str] = set()
        self.partition_actions: list[dict[str, Any]] = []
        self.ecs_changes: list[WorldChange] = []
        self.api_reboots = 0
        self.api_redeploys = 0
        self.platform_reboots = 0
        self._ready_state: dict[str, bool] = {}
        self._drained: set[str] = set()
        self.schedulable_samples: list[float] = []
        self.domains: dict[str, dict[str, list[str]]] = {"cluster": {"all": list(sim.nodes)}}
        for kind, attr in (("zone", "zone"), ("rack", "rack"), ("pool", "node_pool")):
            groups: dict[str, list[str]] = {}
            for node in sim.nodes.values():
                groups.setdefault(getattr(node.inv, attr) or "-", []).append(node.name)
            self.domains[kind] = groups

    # ------------------------------------------------------------------ lifecycle

    async def __aenter__(self) -> Self:
        from nodeheal.sim.ecs_api import EcsEmulator

        for node in self.sim.nodes.values():
            inv = node.inv
            assert inv.instance_id is not None
            self.ecs.add_instance(inv.instance_id, region_id=self.region, zone_id=inv.zone, instance_name=inv.node)
        self.ecs.on_change(self._on_ecs_change)
        self.sim.cloud = self
        self._emulator = EcsEmulator(self.ecs)
        await self._emulator.__aenter__()
        await self.kube.__aenter__()
        with self.kube.bulk():
            for i, node in enumerate(self.sim.nodes.values()):
                inv = node.inv
                self.kube.add_node(
                    inv.node, zone=inv.zone, rack=inv.rack, node_pool=inv.node_pool, provider_id=inv.provider_id
                )
                self.kube.add_pod(f"ds-agent-{i}", node=inv.node, owner_kind="DaemonSet", labels={"app": "agent"})
                app = f"app-{i % APPS}"
                self.kube.add_pod(f"{app}-{i}", node=inv.node, labels={"app": app})
            for a in range(APPS):
                self.kube.add_pdb(f"app-{a}", selector={"app": f"app-{a}"}, max_unavailable="10%")
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._ticker is not None:
            self._ticker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._ticker
        with contextlib.suppress(Exception):
            await self.kube.__aexit__(exc_type, exc, tb)
        if self._emulator is not None:
            with contextlib.suppress(Exception):
                await self._emulator.__aexit__(exc_type, exc, tb)

    @property
    def ecs_endpoint(self) -> str:
        return str(self._emulator.endpoint)

    @property
    def kube_url(self) -> str:
        return self.kube.url

    @property
    def reboot_s(self) -> float:
        return self.timings.reboot_s

    @property
    def maintenance_notice_s(self) -> float:
        """The longest notice the simulator gives."""
        return max(self.timings.maintenance_notice_s)

    # ------------------------------------------------------------------ cloud side

    def schedule_maintenance(self, *, instance_id: str, event_type: str, not_before: datetime) -> str:
        event = self.ecs.publish_event(instance_id, event_type, not_before=not_before)
        return str(event.event_id)

    def _on_ecs_change(self, change: WorldChange) -> None:
        node = self.sim.by_instance.get(change.instance_id)
        if node is None:
            return
        self.sim.touched.add(node)
        self.ecs_changes.append(change)
        now = change.at.timestamp()
        if change.kind == "instance_down":
            node.power_off()
            node.back_at = None
            if change.reason == "release":
                return  # released for good (a replace): it leaves the fleet (sim/rotation.py), not a reboot
            if change.initiator == "platform":
                self.platform_reboots += 1
            elif "redeploy" in change.reason.lower():
                self.api_redeploys += 1
            else:
                self.api_reboots += 1
            if change.initiator != "platform":
                self._note_partition_action(node.name, change)
        elif change.kind == "instance_up":
            if change.local_disks_wiped:
                self.sim.wipe_local_disk(node)
            node.boot(now)
            self.sim.on_rebooted(node, now)

    def _note_partition_action(self, node_name: str, change: WorldChange) -> None:
        part = self.sim.partition
        if part is None:
            return
        rack, start, end = part
        node = self.sim.nodes[node_name]
        if node.inv.rack == rack and start <= change.at.timestamp() <= end:
            self.partition_actions.append({"node": node_name, "at": change.at.isoformat(), "reason": change.reason})

    # ------------------------------------------------------------------ ticking and refereeing

    def sample(self) -> None:
        """Called about twice a second by the demo: sync Kubernetes, log disruption changes, record health."""
        self.ecs.tick()
        for node in self.sim.touched:  # every other node is as it started: Ready
            ready = node.powered and not node.partitioned and not node.hung and node.services["kubelet"] == "active"
            if self._ready_state.get(node.name, True) != ready:
                self._ready_state[node.name] = ready
                self.kube.set_ready(node.name, ready)
        cordoned = set(self.kube.cordoned_nodes())
        for name in cordoned - self._drained:
            if not [p for p in self.kube.pods_on(name) if not p.startswith("ds-")]:
                self._drained.add(name)
                self.sim.on_node_drained(name)
        self._drained &= cordoned
        busy = {
            self.ecs.instances[op.instance_id].instance_name
            for op in self.ecs.operations.values()
            if op.initiator != "platform"
        }
        disrupted = cordoned | busy
        now = time.time()
        for name in disrupted - self._disrupted:
            self.disruptions.append((now, name, True))
        for name in self._disrupted - disrupted:
            self.disruptions.append((now, name, False))
        self._disrupted = disrupted
        # the most nodes disrupted at once per domain kind (raw: handed-over nodes included)
        counts: Counter[tuple[str, str]] = Counter()
        for name in disrupted:
            for key in self.domains_of(name):
                counts[key] += 1
        for (kind, _), n in counts.items():
            self.max_disrupted[kind] = max(self.max_disrupted.get(kind, 0), n)
        total = len(self.sim.nodes)
        not_ready = {name for name, ready in self._ready_state.items() if not ready}
        self.schedulable_samples.append((total - len(not_ready | cordoned)) / total)
        self.sim.sample_health()

    def domains_of(self, name: str) -> list[tuple[str, str]]:
        """The failure domains (kind, key) of a node, as the budgets count them."""
        member = self.sim.nodes.get(name)
        if member is None:
            return []
        inv = member.inv
        return [
            ("cluster", "all"),
            ("zone", inv.zone or "-"),
            ("rack", inv.rack or "-"),
            ("pool", inv.node_pool or "-"),
        ]

    def domain_limits(self, nodes: set[str]) -> tuple[dict[str, list[str]], dict[str, int]]:
        """For the referee: the domains ("kind:key") of `nodes` and each such domain's budget limit."""
        of: dict[str, list[str]] = {}
        limits: dict[str, int] = {}
        for name in nodes:
            keys = self.domains_of(name)
            of[name] = [f"{kind}:{key}" for kind, key in keys]
            for kind, key in keys:
                count, pct = self.budgets[kind]
                limits[f"{kind}:{key}"] = _limit(count, pct, len(self.domains[kind][key]))
        return of, limits

    def summary(self) -> dict[str, Any]:
        calls = Counter(call.action for call in self.ecs.calls)
        return {
            "max_disrupted_by_domain": dict(self.max_disrupted),
            "budgets": {k: {"max_count": c, "max_pct": p} for k, (c, p) in self.budgets.items()},
            "reboots_in_partition": len(self.partition_actions),
            "partition_actions": self.partition_actions,
            "cloud_api_calls": dict(sorted(calls.items())),
            "api_reboots": self.api_reboots,
            "api_redeploys": self.api_redeploys,
            "platform_reboots": self.platform_reboots,
            "evictions": {
                "ok": self.kube.evictions.count(201) + self.kube.evictions.count(200),
                "blocked_by_pdb": self.kube.evictions.count(429),
            },
            "kubernetes_requests": self.kube.requests,
            "schedulable_rate": sum(self.schedulable_samples) / max(1, len(self.schedulable_samples)),
            "partition": (
                {
                    "rack": self.sim.partition_log[0],
                    "start": self.sim.partition_log[1],
                    "end": self.sim.partition_log[2],
                }
                if self.sim.partition_log
                else None
            ),
            "sampled_at": datetime.now(tz=UTC).isoformat(),
        }
