"""One seed, one fault plan: where a fault strikes does not depend on how many probes the simulator
sent before it (probe noise has its own random generator), so a seeded chaos run can be repeated."""

from __future__ import annotations

from nodeheal.runtime.settings import NatsSettings
from nodeheal.sim.engine import FleetSimulator
from nodeheal.sim.faults import PlannedFault
from nodeheal.sim.fleet import FleetSpec


def _placements(probes_before_each: int) -> list[tuple[str, str | None]]:
    sim = FleetSimulator(spec=FleetSpec(nodes=120, seed=7), settings=NatsSettings())
    out: list[tuple[str, str | None]] = []
    for planned in (
        PlannedFault(at_s=1, fault_class="hang"),
        PlannedFault(at_s=2, fault_class="rack_partition"),
        PlannedFault(at_s=3, fault_class="kernel_fault", kernel_class="soft_lockup"),
    ):
        for _ in range(probes_before_each):
            sim.probe_noise()  # what each probe of a round draws
        out += [(f.node, f.rack) for f in sim.inject(planned)]
    return out


def test_fault_placement_does_not_depend_on_the_probes_sent_before() -> None:
    quiet = _placements(0)
    assert quiet and quiet == _placements(37) == _placements(300)
