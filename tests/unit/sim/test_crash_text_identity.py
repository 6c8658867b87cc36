"""The simulator's bugs that strike many hosts leave crash evidence that identifies the bug, as a real fleet's do.

The zone spike (`zone_crash`) and the bad kernel (`bad_kernel_crash`) stand for one bug on many hosts. Their crash
text used to be a public hard-lockup panic with only the NMI watchdog's frames and a bare `Oops: Fatal exception`
panic: reports that identify no bug, which the diagnoser does not count as one bug across hosts
(`signature_identified`; docs/diagnoser.md, "A bucket without identity is no group of hosts"). Now each crash names
the function and carries the trace of its bug: what the pstore record a node leaves behind holds is classified as
the fault's class, identifies its bug, and is one crash bucket on every host of the fault, while each host's numbers
(CPU, PID, task, stamps) are its own."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

from nodeheal.diagnoser.crash import CrashVerdict, classify
from nodeheal.diagnoser.kb import Matcher, load_knowledge_base
from nodeheal.diagnoser.kb.signature import signature_identified
from nodeheal.runtime.settings import NatsSettings
from nodeheal.schemas.crash import CrashEvidence, CrashReport
from nodeheal.schemas.subjects import escape_token
from nodeheal.sim.engine import FleetSimulator
from nodeheal.sim.faults import ZONE_SPIKE_CRASHES, InjectedFault, PlannedFault
from nodeheal.sim.fleet import FleetSpec

CLUSTER = "c1"


def crash_evidence(root: Path, fault: InjectedFault) -> list[str]:
    """The ramoops record the crashed node left (its `Panic#1 Part1` header aside)."""
    [record] = (root / escape_token(fault.node) / "sys/fs/pstore").glob("dmesg-ramoops-*")
    return record.read_text().splitlines()[1:]


def verdict_of(lines: Sequence[str], node: str, matcher: Matcher) -> CrashVerdict:
    now = datetime.now(tz=UTC)
    report = CrashReport(
        cluster=CLUSTER,
        node=node,
        time=now,
        boot_id=f"{node}-boot-2",
        previous_boot_id=f"{node}-boot-1",
        unexpected=True,
        evidence=(
            CrashEvidence(source="pstore", path="/sys/fs/pstore/dmesg-ramoops-0", written_at=now, lines=tuple(lines)),
        ),
    )
    return classify(report, matcher)


def injected(tmp_path: Path, fault_class: str, n: int) -> tuple[FleetSimulator, list[InjectedFault]]:
    # the zone spike strikes nodes off the bad kernel only: none of them here for it; half of them for the bad kernel
    share = 0.0 if fault_class == "zone_crash" else 0.5
    spec = FleetSpec(nodes=36, cluster=CLUSTER, seed=5, bad_kernel_share=share, rack_size=4)
    sim = FleetSimulator(spec=spec, settings=NatsSettings(), work_dir=tmp_path)
    faults = [f for _ in range(n) for f in sim.inject(PlannedFault(0.0, fault_class))]
    assert len(faults) == n
    return sim, faults


def test_the_zone_spike_is_one_identified_hard_lockup_bucket_on_every_host(tmp_path: Path) -> None:
    matcher = Matcher(load_knowledge_base())
    sim, faults = injected(tmp_path, "zone_crash", ZONE_SPIKE_CRASHES)
    texts = [crash_evidence(tmp_path, f) for f in faults]
    verdicts = [verdict_of(lines, f.node, matcher) for lines, f in zip(texts, faults, strict=True)]
    assert {v.cls for v in verdicts} == {"hard_lockup"}
    signatures = [v.signature for v in verdicts]
    assert all(s is not None for s in signatures)
    assert len({s.bucket for s in signatures if s is not None}) == 1  # one bug: one bucket across the zone
    assert all(s is not None and signature_identified(s) for s in signatures)  # the stuck function and its trace
    assert {s.rip_func for s in signatures if s is not None} == {"native_queued_spin_lock_slowpath"}
    assert all(s is not None and "virtio_queue_rq" in s.top_frames for s in signatures)
    # each host's own kernel and numbers
    for fault, s in zip(faults, signatures, strict=True):
        assert s is not None and s.kernel_release == sim.nodes[fault.node].inv.kernel
    cpu_lines = {next(line for line in lines if "Comm:" in line).split("] ", 1)[1] for lines in texts}
    assert len(cpu_lines) > ZONE_SPIKE_CRASHES // 2


def test_the_bad_kernels_crash_is_one_identified_panic_bucket_on_every_host(tmp_path: Path) -> None:
    matcher = Matcher(load_knowledge_base())
    sim, faults = injected(tmp_path, "bad_kernel_crash", 4)
    texts = [crash_evidence(tmp_path, f) for f in faults]
    verdicts = [verdict_of(lines, f.node, matcher) for lines, f in zip(texts, faults, strict=True)]
    assert {v.cls for v in verdicts} == {"kernel_panic"}
    signatures = [v.signature for v in verdicts]
    assert len({s.bucket for s in signatures if s is not None}) == 1 and None not in signatures
    assert all(s is not None and signature_identified(s) for s in signatures)  # a specific panic string, a trace
    assert all(s is not None and "ovl_copy_up_flags" in s.top_frames for s in signatures)
    assert {s.kernel_release for s in signatures if s is not None} == {sim.spec.bad_kernel}
    assert len({tuple(lines) for lines in texts}) == len(texts)
