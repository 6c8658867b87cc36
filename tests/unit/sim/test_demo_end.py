"""When `nodeheal demo` ends its settle: the simulator closes a fault when the rebooted machine is back,
but the ladder that rebooted it still verifies the new boot and gives the node back. A chaos run ended 12 s
after its last reboot and counted that repair as unresolved (a lost fault, exit 1)."""

from __future__ import annotations

from nodeheal.sim.demo import VERIFY_GRACE_S, injection_window_s, verifying
from nodeheal.sim.faults import plan_faults


def test_a_node_back_from_a_reboot_and_still_cordoned_keeps_the_run_going() -> None:
    now = 1_000.0
    assert verifying([(now - 12.0, "n1")], ["n1", "n9"], now)


def test_uncordoned_or_long_ago_or_never_rebooted_does_not() -> None:
    now = 1_000.0
    assert not verifying([(now - 12.0, "n1")], ["n9"], now)  # given back: verified
    assert not verifying([(now - VERIFY_GRACE_S - 1.0, "n1")], ["n1"], now)  # handed to a person, say
    assert not verifying([], ["n1"], now)  # cordoned, never rebooted: not a verification in flight


def test_the_settle_starts_after_the_last_planned_injection() -> None:
    """The default demo (60 s, zone spike from 27 s, 12 crashes 7 s apart) planned its last crash at 104 s; the
    settle, counted from 60 s, ended a second after that crash and reported it as not detected."""
    spike = plan_faults(duration_s=60.0, faults_per_minute=24.0, seed=7, zone_spike_at_s=27.0)
    last = max(p.at_s for p in spike)
    assert last == 27.0 + 11 * 7.0
    assert injection_window_s(spike, 60.0) == last
    plain = plan_faults(duration_s=60.0, faults_per_minute=24.0, seed=7)
    assert injection_window_s(plain, 60.0) == 60.0  # the shuffled faults all fall inside --duration
    assert injection_window_s([], 60.0) == 60.0
