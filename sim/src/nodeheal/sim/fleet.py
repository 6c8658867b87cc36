"""The simulated fleet: inventory across failure domains, per-node state, and the probes a node's
agent and the active prober would send. Pure: no NATS, no clock of its own (callers pass `now`).

Node names follow Alibaba ACK's style (`<region>.<ip>`) so the subject escaping is exercised.
"""

from __future__ import annotations

import random
import uuid
from dataclasses import dataclass, field
from typing import Any

from nodeheal.schemas import NodeInventory

SERVICES = ("kubelet", "containerd", "ops-agent")
DISK_BYTES = 200 * 1024**3
"""Size of every simulated root file system."""
MACHINE_MODELS = ("ecs.ebmg7.32xlarge", "ecs.ebmc7.32xlarge", "ecs.ebmr7.32xlarge", "ecs.ebmgn7e.32xlarge")
CPU_MODELS = ("Intel Xeon Platinum 8369B", "Intel Xeon Platinum 8269CY", "AMD EPYC 7T83")
KERNELS = ("5.10.134-16.al8.x86_64", "5.10.134-17.al8.x86_64", "5.10.134-18.al8.x86_64", "4.19.91-27.al7.x86_64")
OS_IMAGES = ("Alibaba Cloud Linux 3.2104 LTS", "Alibaba Cloud Linux 2.1903 LTS")
POOLS = ("general", "memory", "gpu")


@dataclass(frozen=True)
class FleetSpec:
    nodes: int = 2000
    cluster: str = "demo"
    region: str = "cn-hangzhou"
    zones: int = 3
    rack_size: int = 40
    bad_kernel: str = "5.10.134-18.al8.x86_64"
    bad_kernel_share: float = 0.2
    seed: int = 7


def _ip(i: int) -> str:
    return f"10.{(i >> 16) & 255}.{(i >> 8) & 255}.{i & 255}"


def build_inventory(spec: FleetSpec) -> list[NodeInventory]:
    rng = random.Random(spec.seed)
    zones = [f"{spec.region}-{chr(ord('h') + z)}" for z in range(spec.zones)]
    out: list[NodeInventory] = []
    for i in range(spec.nodes):
        zone = zones[i % spec.zones]
        rack = f"{zone}-r{(i // spec.zones) // spec.rack_size:03d}"
        ip = _ip(i + 256)
        name = f"{spec.region}.{ip}"
        kernel = spec.bad_kernel if rng.random() < spec.bad_kernel_share else rng.choice(KERNELS[:2] + KERNELS[3:])
        # pools and CPU models cut across zones (in a zone every pool and CPU model occurs): were they aligned
        # with the zones, a zone's crash spike would be the pool's and the CPU model's too, and no test of
        # the correlator could tell which one it is
        pool = POOLS[(i // spec.zones) % len(POOLS)]
        model = MACHINE_MODELS[(i // 7) % len(MACHINE_MODELS)]
        out.append(
            NodeInventory(
                cluster=spec.cluster,
                node=name,
                instance_id=f"i-sim{i:07d}",
                provider_id=f"{spec.region}.i-sim{i:07d}",
                cloud="alibaba",
                region=spec.region,
                zone=zone,
                rack=rack,
                node_pool=pool,
                machine_model=model,
                cpu_model=CPU_MODELS[(i // (spec.zones * len(POOLS))) % len(CPU_MODELS)],
                os_image=OS_IMAGES[0] if kernel.startswith("5.") else OS_IMAGES[1],
                kernel=kernel,
                addresses=(ip,),
                labels={"nodeheal.io/pool": pool, "topology.kubernetes.io/zone": zone},
                ready=True,
            )
        )
    return out


@dataclass(slots=True, eq=False)
class SimNode:
    """One machine of the simulated fleet: what is true about it right now."""

    inv: NodeInventory
    index: int
    cpu_count: int = 64
    boot_id: str = field(default_factory=lambda: str(uuid.uuid4()))
    booted_at: float = 0.0
    seq: int = 0
    prober_seq: int = 0
    prober_next: float = 0.0  # when the active prober's next round reaches this node
    powered: bool = True  # off: crash / power loss / rebooting
    hung: bool = False
    partitioned: bool = False
    back_at: float | None = None  # when a reboot / redeploy in progress completes
    auto_reboot_at: float | None = None  # kernel.panic=N: the node reboots by itself
    load_factor: float = 0.2
    storm: bool = False
    base_used_pct: float = 55.0  # what no cleaning frees
    old_logs_bytes: int = 0  # rotated pod logs older than the agent's age limit (not yet written as files)
    unused_image_bytes: int = 0  # container images no pod uses (not yet written as files)
    garbage_on_disk: int = 0  # reclaimable bytes written as files for the real clean_disk (nodehost)
    disk_fill_per_s: float = 0.0  # percent per probe while a disk fill runs
    disk_fill_left: float = 0.0  # percent the running fill still writes (a fill is one burst: a clean ends it)
    fd_allocated: int = 6000
    fd_max: int = 1_048_576
    services: dict[str, str] = field(default_factory=lambda: dict.fromkeys(SERVICES, "active"))
    restarts: dict[str, int] = field(default_factory=dict)
    pending_kernel: list[str] = field(default_factory=list)
    readonly: bool = False
    drained: bool = False
    commands_done: int = 0  # node commands its agent answered: the agent's next probe is a full one

    @property
    def name(self) -> str:
        return self.inv.node

    def disk_used_with(self, garbage_on_disk: int) -> float:
        garbage = self.old_logs_bytes + self.unused_image_bytes + garbage_on_disk
        return min(100.0, self.base_used_pct + 100.0 * garbage / DISK_BYTES)

    @property
    def disk_used(self) -> float:
        """Root file system used %: the fixed part plus every reclaimable byte."""
        return self.disk_used_with(self.garbage_on_disk)

    def fill_disk(self, pct: float) -> None:
        """Add reclaimable garbage worth `pct` percent: 60 % unused images, 40 % old rotated pod logs."""
        added = int(DISK_BYTES * max(0.0, pct) / 100)
        images = int(added * 0.6)
        self.unused_image_bytes += images
        self.old_logs_bytes += added - images

    def load1(self, noise: float) -> float:
        return self.cpu_count * (3.5 if self.storm else self.load_factor) * (1 + noise)

    @property
    def agent_alive(self) -> bool:
        return self.powered and not self.hung

    def healthy(self) -> bool:
        return (
            self.powered
            and not self.hung
            and not self.partitioned
            and not self.storm
            and self.disk_used < 85
            and self.fd_allocated < 0.8 * self.fd_max
            and all(s == "active" for s in self.services.values())
            and not self.readonly
        )

    def clear_faults(self) -> None:
        """What a reboot fixes: everything that lives in the running system."""
        self.hung = False
        self.storm = False
        self.disk_fill_per_s = 0.0
        self.disk_fill_left = 0.0
        self.fd_allocated = 6000
        self.services = dict.fromkeys(SERVICES, "active")
        self.pending_kernel.clear()
        self.readonly = False
        self.auto_reboot_at = None
        # a full disk stays full across a reboot unless it is cleaned (files are on disk); what the
        # boot clears (tmp files, the journal's runtime part) brings it just under the alarm
        if self.disk_used >= 85:
            excess = int((self.disk_used - 84.0) / 100 * DISK_BYTES)
            take = min(excess, self.unused_image_bytes)
            self.unused_image_bytes -= take
            self.old_logs_bytes = max(0, self.old_logs_bytes - (excess - take))

    def power_off(self) -> None:
        self.powered = False

    def boot(self, now: float) -> None:
        self.powered = True
        self.boot_id = str(uuid.uuid4())
        self.booted_at = now
        self.back_at = None
        self.clear_faults()

    def before_probe(self) -> None:
        """What happens on the node between two probes of its agent: a running disk fill grows."""
        if self.disk_fill_per_s and self.disk_used < 99.5:
            step = min(self.disk_fill_per_s, 99.5 - self.disk_used, self.disk_fill_left)
            self.fill_disk(step)
            self.disk_fill_left -= step
            if self.disk_fill_left <= 1e-9:  # the burst is written: a clean now frees the disk for good
                self.disk_fill_per_s = self.disk_fill_left = 0.0

    def prober_checks(self, plan: ProberPlan | None = None) -> list[dict[str, Any]]:
        """What the active prober (its configured checks, `ProberPlan`) sees of this node from outside,
        as a stock node answers: the kernel completes TCP handshakes even on a hung node, sshd's banner
        needs a live userland, the kubelet listens on 10250 on every address and answers /healthz there
        (401 without credentials, which the prober counts as answering) while its userland runs, but its
        plain healthz port 10248 is bound to 127.0.0.1, so a check of that port on the node's address is
        refused. `Reachability`s as dicts (what `ProberResults` carries per node)."""
        plan = plan or DEFAULT_PROBER_PLAN
        self.prober_seq += 1
        reachable = self.powered and not self.partitioned
        ip = self.inv.addresses[0]
        dark = f"timeout after {plan.timeout_s:g}s"
        checks: list[dict[str, Any]] = []
        for port in plan.tcp_ports:
            target = f"{ip}:{port}"
            listening = port != 10250 or self.services["kubelet"] == "active"
            ok = reachable and listening
            checks.append(
                {
                    "check": "tcp",
                    "target": target,
                    "ok": ok,
                    "error": None if ok else (dark if not reachable else "connection refused"),
                }
            )
            if port == plan.ssh_port:
                banner = reachable and not self.hung
                error = None if banner else ("no connection" if not reachable else dark)
                checks.append({"check": "ssh_banner", "target": target, "ok": banner, "error": error})
        if plan.healthz_url:
            url = plan.healthz_url.format(address=ip)
            # the kubelet's plain healthz port is bound to loopback: on the node's address it is refused
            local_only = "{address}" in plan.healthz_url and ":10248" in plan.healthz_url
            ok = reachable and not local_only and not self.hung and self.services["kubelet"] == "active"
            error = None if ok else (dark if not reachable else ("connection refused" if local_only else "HTTP 500"))
            checks.append({"check": "kubelet_healthz", "target": url, "ok": ok, "error": error})
        return checks

    def prober_probe(self, *, time_iso: str, plan: ProberPlan | None = None) -> dict[str, Any]:
        """`prober_checks` as one prober `NodeProbe` (the form before `ProberResults` batches; `nodeheal bench
        wire` measures both)."""
        checks = self.prober_checks(plan)
        return {
            "schema": "nodeheal.probe/v1",
            "id": f"{self.inv.node}:prober:{self.prober_seq}",
            "time": time_iso,
            "cluster": self.inv.cluster,
            "node": self.inv.node,
            "source": "prober",
            "seq": self.prober_seq,
            "reachability": checks,
        }


@dataclass(frozen=True)
class ProberPlan:
    """The active prober's checks (its settings' defaults: `nodeheal.cloud_events.prober.settings`)."""

    tcp_ports: tuple[int, ...]
    ssh_port: int | None
    healthz_url: str | None
    timeout_s: float
    interval_s: float  # seconds between two of its rounds over the fleet


def _prober_plan() -> ProberPlan:
    from nodeheal.cloud_events.prober.settings import ProberSettings

    fields = ProberSettings.model_fields
    return ProberPlan(
        tcp_ports=tuple(fields["tcp_ports"].get_default(call_default_factory=True)),
        ssh_port=fields["ssh_port"].get_default(),
        healthz_url=fields["healthz_url"].get_default(),
        timeout_s=fields["timeout_s"].get_default(),
        interval_s=fields["interval_s"].get_default(),
    )


DEFAULT_PROBER_PLAN = _prober_plan()
