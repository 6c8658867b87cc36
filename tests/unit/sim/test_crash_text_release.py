"""A simulated crash is the node's own: the kernel release in the crash text (the `CPU: … Tainted: …
<release>` line, a crash(8) summary's RELEASE / vmlinux path) is the node's inventory kernel, not the
kernel of the machine the public sample came from."""

from __future__ import annotations

from nodeheal.diagnoser.kb.signature import extract_reports
from nodeheal.sim.faults import FATAL_KERNEL_CLASSES, kernel_samples, with_kernel_release

RELEASE = "5.10.134-17.al8.x86_64"


def test_every_fatal_sample_that_names_a_release_names_the_nodes_kernel() -> None:
    named = 0
    for klass in sorted(FATAL_KERNEL_CLASSES):
        for lines in kernel_samples()[klass]:
            before = {r.kernel_release for r in extract_reports(lines)} - {None}
            after = {r.kernel_release for r in extract_reports(with_kernel_release(lines, RELEASE))} - {None}
            if before:
                named += 1
                assert after == {RELEASE}, (klass, before, after)
            else:
                assert after == set()
    assert named >= 3  # the MCE panic, a hard lockup, the crash(8) summary


def test_only_the_release_changes() -> None:
    lines = ["[ 1.0] CPU: 3 PID: 7 Comm: kworker/3:1 Not tainted 4.15.0-112-generic #113-Ubuntu", "[ 1.1] RIP: x"]
    out = with_kernel_release(lines, RELEASE)
    assert out == [f"[ 1.0] CPU: 3 PID: 7 Comm: kworker/3:1 Not tainted {RELEASE} #113-Ubuntu", "[ 1.1] RIP: x"]
