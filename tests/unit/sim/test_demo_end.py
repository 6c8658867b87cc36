"""When `nodeheal demo` ends its settle: the simulator closes a fault when the rebooted machine is back,
but the ladder that rebooted it still verifies the new boot and gives the node back. A chaos run ended 12 s
after its last reboot and counted that repair as unresolved (a lost fault, exit 1)."""

from __future__ import annotations

from nodeheal.sim.demo import VERIFY_GRACE_S, verifying


def test_a_node_back_from_a_reboot_and_still_cordoned_keeps_the_run_going() -> None:
    now = 1_000.0
    assert verifying([(now - 12.0, "n1")], ["n1", "n9"], now)


def test_uncordoned_or_long_ago_or_never_rebooted_does_not() -> None:
    now = 1_000.0
    assert not verifying([(now - 12.0, "n1")], ["n9"], now)  # given back: verified
    assert not verifying([(now - VERIFY_GRACE_S - 1.0, "n1")], ["n1"], now)  # handed to a person, say
    assert not verifying([], ["n1"], now)  # cordoned, never rebooted: not a verification in flight
