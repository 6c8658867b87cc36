"""The demo's printed `chaos:` line says why faults count as lost: a default run printed "lost faults 15", twelve
of them still held by the disruption rate limit at the end, which the number alone did not say."""

from __future__ import annotations

from nodeheal.sim.demo_report import _chaos_line


def test_the_lost_faults_are_broken_down_by_reason() -> None:
    report = {
        "chaos": {
            "enabled": False,
            "lost_faults": 15,
            "lost_by_reason": {"held_by_policy": 12, "not_detected": 1, "not_diagnosed": 1, "unresolved": 1},
            "repeated_side_effects": 0,
        }
    }
    assert _chaos_line(report) == (
        "lost faults 15 (held_by_policy 12, not_detected 1, not_diagnosed 1, unresolved 1), repeated side effects 0"
    )


def test_a_chaos_run_with_nothing_lost_says_so_plainly() -> None:
    report = {
        "chaos": {
            "enabled": True,
            "kills": 5,
            "restarted": 5,
            "lost_faults": 0,
            "lost_by_reason": {},
            "repeated_side_effects": 0,
        }
    }
    assert _chaos_line(report) == "5 kills, 5 restarted; lost faults 0, repeated side effects 0"
