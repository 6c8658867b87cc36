"""Fault classes the simulator injects, their ground truth, and the schedule of a run.

Each injected fault is recorded with the causes a correct diagnosis may name (from
`nodeheal.schemas.causes`), so the demo can measure accuracy. Kernel faults emit real log lines
from the labelled samples shipped with the package (`data/kernel-log-samples.jsonl`).

Rates: per-node-day rates derived from published fleet studies (machine failure
1.5e-3, kernel crash 1-5e-4 with a x10-100 bad-kernel multiplier, rack loss 3e-5, ...) are far too
low to see anything in a two-minute run, so the demo keeps their *proportions* and scales the total
so a run sees `faults_per_minute` faults. The scale factor is printed in the report.
"""

from __future__ import annotations

import json
import random
import re
from dataclasses import dataclass, field
from functools import cache
from importlib import resources

from nodeheal.schemas import DEFAULT_CATEGORY, KERNEL_LOG_CLASSES

FATAL_KERNEL_CLASSES = frozenset(
    {"kernel_panic", "mce_fatal_panic", "vmcore_crash_sys_summary", "kernel_bug", "hard_lockup"}
)
FS_CLASSES = frozenset({"ext4_error", "ext4_readonly_remount", "xfs_error"})

# per-node-day rates from published fleet studies (J. Dean 2008: 1,000 machine failures per 1,800-node
# cluster-year, ~20 rack losses; Schroeder et al. SIGMETRICS'09 for memory errors), used as relative weights
BASE_WEIGHTS: dict[str, float] = {
    "power_loss": 1.5e-3 * 0.4,
    "hang": 1.5e-3 * 0.15,
    "load_storm": 6e-4,
    "disk_fill": 4.3e-5 * 8 + 3e-4,
    "fd_leak": 3e-4,
    "kubelet_crash": 5e-4,
    "runtime_crash": 3e-4,
    "ops_agent_crash": 3e-4,
    "kernel_fault": 3e-4 + 9.1e-4 * 0.5,
    "disk_failure": 3e-4,
    "cloud_reboot": 1.1e-2 * 0.08,
    "cloud_redeploy": 1.1e-2 * 0.04,
    "bad_kernel_crash": 5e-4,
}

EXPECTED_CAUSES: dict[str, frozenset[str]] = {
    "power_loss": frozenset({"node_crash"}),
    "hang": frozenset({"node_hang"}),
    "load_storm": frozenset({"high_load"}),
    "disk_fill": frozenset({"disk_full"}),
    "fd_leak": frozenset({"fd_exhaustion", "too_many_open_files"}),
    "kubelet_crash": frozenset({"kubelet_down"}),
    "runtime_crash": frozenset({"container_runtime_down"}),
    "ops_agent_crash": frozenset({"ops_agent_down", "service_down"}),
    "disk_failure": frozenset({"disk_failure"}),
    "cloud_reboot": frozenset({"host_maintenance_reboot"}),
    "cloud_redeploy": frozenset({"host_maintenance_redeploy"}),
    "bad_kernel_crash": frozenset({"kernel_panic", "kernel_oops_null_deref", "kernel_bug"}),
    "rack_partition": frozenset({"rack_partition"}),
    "zone_crash": frozenset({"hard_lockup", "kernel_panic"}),
}
ZONE_SPIKE_CRASHES = 12
"""Crashes of the zone spike: enough for the diagnoser's cross-sectional test to single the zone out at its
false-alarm budget with margin (one zone of three holds a third of the nodes: (1/3)^12 = 1.9e-6, and still
(1/3)^10 = 1.7e-5 when two crashes end up in other episodes, below alpha 1e-3 over the ~20 groups that can be
flagged; with 10 a run that lost two came out at 1.5e-4, only a sudden rise), spread over the zone's racks
so no rack goes dark as a whole."""
ZONE_SPIKE_SPACING_S = 7.0
"""Seconds between two crashes of the spike: with three racks a zone, a rack's next crash comes 21 s after
its last, after the diagnoser's rack hold (20 s in the demo), so the spike is crashes, not a dark rack."""
HARDWARE_CRASH_CLASSES = frozenset({"mce_fatal_panic"})
"""Fatal kernel classes of failing hardware: the machine is rotated out (retire, replace behind approval)."""


def expected_causes(fault_class: str, kernel_class: str | None) -> frozenset[str]:
    if fault_class == "kernel_fault" and kernel_class:
        extra: set[str] = {kernel_class}
        if kernel_class in FS_CLASSES:
            extra |= {"filesystem_corruption", "readonly_filesystem"}
        if kernel_class == "planned_shutdown_reboot":
            extra |= {"planned_reboot"}
        if kernel_class in {"kubelet_down", "kubelet_unhealthy_pleg"}:
            extra |= {"kubelet_down"}
        if kernel_class == "container_runtime_down":
            extra |= {"container_runtime_down"}
        if kernel_class == "too_many_open_files":
            extra |= {"fd_exhaustion"}
        if kernel_class == "disk_full_eviction":
            extra |= {"disk_full"}
        if kernel_class == "nvme_disk_io_error":
            extra |= {"disk_failure"}
        return frozenset(extra)
    return EXPECTED_CAUSES[fault_class]


def expected_category(fault_class: str, kernel_class: str | None) -> str:
    from nodeheal.schemas.causes import category_of

    if fault_class == "kernel_fault" and kernel_class:
        return DEFAULT_CATEGORY[kernel_class]
    return category_of(next(iter(sorted(EXPECTED_CAUSES[fault_class]))))


@cache
def kernel_samples() -> dict[str, list[list[str]]]:
    """Real log excerpts per class (the labelled samples of the knowledge-base reference)."""
    text = resources.files("nodeheal.sim").joinpath("data/kernel-log-samples.jsonl").read_text()
    out: dict[str, list[list[str]]] = {}
    for line in text.splitlines():
        if line.strip():
            row = json.loads(line)
            out.setdefault(row["class"], []).append(list(row["lines"]))
    missing = set(KERNEL_LOG_CLASSES) - set(out)
    if missing:
        msg = f"kernel samples missing for classes {sorted(missing)}"
        raise RuntimeError(msg)
    return out


_TAINT_RELEASE = re.compile(
    r"((?:CPU: \d+ PID: \d+ Comm: |Pid: \d+, comm: ).*?(?:Tainted: [A-Z][A-Z -]*?|Not tainted)\s+)(\d+\.\d+[\w.+~-]*)"
)
_SYS_RELEASE = re.compile(r"^(\s*RELEASE:\s+)(\S+)")
_VMLINUX = re.compile(r"(vmlinux-)(\d+\.\d+[\w.+~-]*)")


def with_kernel_release(lines: list[str], release: str) -> list[str]:
    """A real crash excerpt as the node's own kernel would print it: the release in the `CPU: … Tainted: …
    <release>` line and in a crash(8) summary's `RELEASE:` / `KERNEL: …vmlinux-<release>` is the node's
    inventory kernel, not the kernel of the machine the sample came from (the crash bucket and the kernel
    the diagnoser reads from the text then agree with the inventory). Nothing else in the text changes."""
    out = []
    for line in lines:
        line = _TAINT_RELEASE.sub(lambda m: m.group(1) + release, line)
        line = _SYS_RELEASE.sub(lambda m: m.group(1) + release, line)
        out.append(_VMLINUX.sub(lambda m: m.group(1) + release, line))
    return out


@dataclass
class InjectedFault:
    """Ground truth of one injected fault."""

    fault_id: str
    fault_class: str
    node: str
    injected_at: float
    kernel_class: str | None = None
    rack: str | None = None
    zone: str | None = None
    expected: frozenset[str] = field(default_factory=frozenset)
    category: str = "unknown"
    ended_at: float | None = None
    fixed_by: str | None = None

    def as_json(self) -> dict[str, object]:
        return {
            "fault_id": self.fault_id,
            "fault_class": self.fault_class,
            "kernel_class": self.kernel_class,
            "node": self.node,
            "rack": self.rack,
            "zone": self.zone,
            "injected_at": self.injected_at,
            "expected_causes": sorted(self.expected),
            "expected_category": self.category,
            "ended_at": self.ended_at,
            "fixed_by": self.fixed_by,
        }


@dataclass(frozen=True)
class PlannedFault:
    at_s: float  # seconds after the start of the fault phase
    fault_class: str
    kernel_class: str | None = None


def plan_faults(
    *,
    duration_s: float,
    faults_per_minute: float,
    seed: int,
    kernel_classes: tuple[str, ...] = KERNEL_LOG_CLASSES,
    partition_at_s: float | None = None,
    hardware_crash_at_s: float | None = None,
    zone_spike_at_s: float | None = None,
) -> list[PlannedFault]:
    """A schedule: every fault class at least once (each kernel class once, round robin), the rest
    drawn by the published relative rates; one rack partition when `partition_at_s` is set.

    `hardware_crash_at_s`: the fatal machine-check crash comes then (early in the run: its rotation needs
    budget slots and disruption rate the later faults take, and the demo shows it end to end) instead of
    where the shuffle put it. `zone_spike_at_s`: from then, `ZONE_SPIKE_CRASHES` crashes of one bucket in
    one zone, `ZONE_SPIKE_SPACING_S` apart (`zone_crash`; the simulator picks the zone and the nodes)."""
    rng = random.Random(seed)
    total = max(1, round(duration_s / 60 * faults_per_minute))
    classes = [c for c in BASE_WEIGHTS if c != "kernel_fault"]
    chosen: list[tuple[str, str | None]] = [(c, None) for c in classes]
    kernel_cycle = list(kernel_classes)
    rng.shuffle(kernel_cycle)
    n_kernel = max(len(kernel_cycle), round(total * BASE_WEIGHTS["kernel_fault"] / sum(BASE_WEIGHTS.values())))
    chosen += [("kernel_fault", kernel_cycle[i % len(kernel_cycle)]) for i in range(n_kernel)]
    # the kernel with a raised crash rate (x10-100, an assumed bad-release multiplier) crashes often enough in a
    # short run to pass the diagnoser's test (one-sided binomial, Bonferroni over every group)
    chosen += [("bad_kernel_crash", None)] * 9
    weights = [BASE_WEIGHTS[c] for c in classes]
    while len(chosen) < total:
        chosen.append((rng.choices(classes, weights)[0], None))
    rng.shuffle(chosen)
    step = duration_s / (len(chosen) + 1)
    planned = [
        PlannedFault(at_s=round(step * (i + 1) + rng.uniform(-step / 3, step / 3), 2), fault_class=c, kernel_class=k)
        for i, (c, k) in enumerate(chosen)
    ]
    if hardware_crash_at_s is not None:
        planned = [
            PlannedFault(at_s=hardware_crash_at_s, fault_class=p.fault_class, kernel_class=p.kernel_class)
            if p.kernel_class in HARDWARE_CRASH_CLASSES
            else p
            for p in planned
        ]
    if partition_at_s is not None:
        planned.append(PlannedFault(at_s=partition_at_s, fault_class="rack_partition"))
    if zone_spike_at_s is not None:
        planned += [
            PlannedFault(at_s=round(zone_spike_at_s + i * ZONE_SPIKE_SPACING_S, 2), fault_class="zone_crash")
            for i in range(ZONE_SPIKE_CRASHES)
        ]
    return sorted(planned, key=lambda p: p.at_s)
